"""Upstream credentials at rest: scrypt for passphrases, a random key used directly, and the
migration of values written before the KDF."""

from __future__ import annotations

import base64
import hashlib
import secrets
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken
from ethereal.secretbox import SecretBox, SecretKeyError, direct_key
from ethereal.settings import Settings
from ethereal.storage.records import StoredCredential
from ethereal.storage.sqlite import SQLiteStore
from ethereal.upstream.service import stored_credential_count


def legacy_token(secret: str, plaintext: str) -> str:
    """What the gateway stored before the KDF: Fernet keyed by sha256 of the secret."""
    return (
        Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))
        .encrypt(plaintext.encode())
        .decode()
    )


def test_passphrase_goes_through_scrypt_with_a_stored_salt() -> None:
    box = SecretBox("correct horse battery staple")
    token = box.encrypt("sk-ant-upstream")
    prefix, salt, body = token.split(":", 2)
    assert prefix == "v2" and len(base64.urlsafe_b64decode(salt)) == 16
    # not the old sha256 stretching: that key cannot open it
    with pytest.raises(InvalidToken):
        Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"correct horse battery staple").digest())).decrypt(
            body
        )
    # another process (another salt for its own writes) reads it through the stored salt
    other = SecretBox("correct horse battery staple")
    assert other.decrypt(token) == "sk-ant-upstream"
    assert other.encrypt("x").split(":")[1] != salt
    with pytest.raises(SecretKeyError):
        SecretBox("wrong passphrase").decrypt(token)


def test_random_32_byte_key_is_used_directly() -> None:
    raw = secrets.token_bytes(32)
    for written in (base64.urlsafe_b64encode(raw).decode().rstrip("="), raw.hex()):
        assert direct_key(written) == raw
        token = SecretBox(written).encrypt("sk-ant-upstream")
        assert token.startswith("v2:-:")
        assert Fernet(base64.urlsafe_b64encode(raw)).decrypt(token[5:].encode()) == b"sk-ant-upstream"
    assert direct_key("a passphrase, not a key") is None


def test_legacy_values_still_decrypt_and_are_flagged() -> None:
    token = legacy_token("old secret", "sk-ant-legacy")
    box = SecretBox("old secret")
    assert SecretBox.needs_rewrap(token) and not SecretBox.needs_rewrap(box.encrypt("x"))
    assert box.decrypt(token) == "sk-ant-legacy"


async def test_startup_migration_rewraps_stored_credentials(tmp_path: Path) -> None:
    store = await SQLiteStore.open(str(tmp_path / "c.sqlite3"))
    await store.migrate()
    await store.upsert_credential(
        StoredCredential(
            name="a", base_url="http://127.0.0.1:1", api_key_enc=legacy_token("pass phrase", "sk-ant-a")
        )
    )
    settings = Settings(secret_key="pass phrase", data_dir=tmp_path)
    assert await stored_credential_count(store, settings) == 1
    row = await store.get_credential("a")
    assert row is not None and not SecretBox.needs_rewrap(row.api_key_enc)
    assert SecretBox("pass phrase").decrypt(row.api_key_enc) == "sk-ant-a"
    # a second start finds nothing left to migrate
    assert await stored_credential_count(store, settings) == 1
    again = await store.get_credential("a")
    assert again is not None and again.api_key_enc == row.api_key_enc
    await store.close()
