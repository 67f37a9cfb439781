"""Encryption at rest for upstream credentials (Fernet: AES-128-CBC + HMAC-SHA256).

The key comes from ``ETHEREAL_SECRET_KEY``:

- a 32-byte random key, written as 64 hex digits or URL-safe base64 (what
  ``python -c 'import secrets; print(secrets.token_urlsafe(32))'`` prints), is used directly;
- anything else is a passphrase, stretched with scrypt (N=2**15, r=8, p=1: ~32 MiB and
  tens of milliseconds per guess) over a random 16-byte salt stored with each value.

Stored form: ``v2:<salt, base64>:<Fernet token>`` (``v2:-:<token>`` for a direct key).
Values written before the KDF (a bare Fernet token whose key was sha256 of the secret)
still decrypt; ``needs_rewrap`` finds them and the start-up migration
(``upstream.service.rewrap_credentials``) re-encrypts them in the new form.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

_PREFIX = "v2:"
_DIRECT = "-"
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
_MAX_SALTS = 64  # derived keys kept per process; salts come from the database, not clients


class SecretKeyError(RuntimeError):
    """The secret key is missing, or cannot decrypt what was stored."""


def direct_key(secret: str) -> bytes | None:
    """The 32 raw bytes when ``secret`` is a random key rather than a passphrase."""
    text = secret.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    if 43 <= len(text) <= 44:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) == 32:
            return raw
    return None


def _fernet(raw32: bytes) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(raw32))


class SecretBox:
    def __init__(self, secret: str | None) -> None:
        if not secret:
            raise SecretKeyError(
                "ETHEREAL_SECRET_KEY is not set: it is needed to encrypt upstream credentials at rest"
            )
        self._secret = secret.encode()
        raw = direct_key(secret)
        self._direct = _fernet(raw) if raw is not None else None
        self._salt = os.urandom(16)  # one salt per process for what it writes: one scrypt, not one per value
        self._derived: dict[bytes, Fernet] = {}
        self._legacy = _fernet(hashlib.sha256(self._secret).digest())

    def _for_salt(self, salt: bytes) -> Fernet:
        found = self._derived.get(salt)
        if found is None:
            key = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(self._secret)
            found = _fernet(key)
            if len(self._derived) >= _MAX_SALTS:
                self._derived.clear()
            self._derived[salt] = found
        return found

    def encrypt(self, plaintext: str) -> str:
        if self._direct is not None:
            return f"{_PREFIX}{_DIRECT}:{self._direct.encrypt(plaintext.encode()).decode()}"
        salt = base64.urlsafe_b64encode(self._salt).decode()
        return f"{_PREFIX}{salt}:{self._for_salt(self._salt).encrypt(plaintext.encode()).decode()}"

    def decrypt(self, token: str) -> str:
        try:
            if not token.startswith(_PREFIX):
                return self._legacy.decrypt(token.encode()).decode()
            salt_text, _, body = token[len(_PREFIX) :].partition(":")
            if salt_text == _DIRECT:
                if self._direct is None:
                    raise InvalidToken
                return self._direct.decrypt(body.encode()).decode()
            try:
                salt = base64.urlsafe_b64decode(salt_text)
            except (binascii.Error, ValueError):
                raise InvalidToken from None
            return self._for_salt(salt).decrypt(body.encode()).decode()
        except InvalidToken:
            raise SecretKeyError("cannot decrypt a stored credential: ETHEREAL_SECRET_KEY changed?") from None

    @staticmethod
    def needs_rewrap(token: str) -> bool:
        """A value written before the KDF (sha256 of the secret as the key)."""
        return not token.startswith(_PREFIX)
