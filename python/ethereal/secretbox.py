"""Encryption at rest for upstream credentials (Fernet: AES-128-CBC + HMAC-SHA256).

The key comes from ``ETHEREAL_SECRET_KEY``; any string is stretched to a Fernet
key with sha256, so operators can use a long random passphrase.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken


class SecretKeyError(RuntimeError):
    """The secret key is missing, or cannot decrypt what was stored."""


class SecretBox:
    def __init__(self, secret: str | None) -> None:
        if not secret:
            raise SecretKeyError(
                "ETHEREAL_SECRET_KEY is not set: it is needed to encrypt upstream credentials at rest"
            )
        self._fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyError("cannot decrypt a stored credential: ETHEREAL_SECRET_KEY changed?") from None
