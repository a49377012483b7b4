"""Encryption of user secrets at rest (IRC passwords, provider credentials)."""

from __future__ import annotations

import base64
import hashlib
import json

from cryptography.fernet import Fernet, InvalidToken


class KeyError_(ValueError):
    pass


class SecretBox:
    """
    Fernet (AES-128-CBC + HMAC-SHA256) with the operator's key. A passphrase that
    is not a Fernet key is hashed into one, so operators may use either.
    """

    def __init__(self, key: str):
        if not key:
            raise KeyError_("must not be empty")
        try:
            self._fernet = Fernet(key.encode())
        except (ValueError, TypeError):
            if len(key) < 16:
                raise KeyError_("a passphrase must be at least 16 characters (or use `xmpp-gateway genkey`)")
            derived = base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest())
            self._fernet = Fernet(derived)

    @staticmethod
    def generate() -> str:
        return Fernet.generate_key().decode()

    def seal(self, secrets: dict[str, str]) -> str | None:
        if not secrets:
            return None
        return self._fernet.encrypt(json.dumps(secrets).encode()).decode()

    def open(self, token: str | None) -> dict[str, str]:
        if not token:
            return {}
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise KeyError_("stored secrets cannot be decrypted with registry.secret_key (wrong key?)")
