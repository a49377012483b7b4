"""
Encryption of user secrets at rest (IRC passwords, provider credentials).

Tokens are Fernet (AES-128-CBC + HMAC-SHA256). The operator's key is either a
Fernet key (``xmpp-gateway genkey``) or a passphrase; a passphrase is
stretched with scrypt and the registry's own random salt, so a stolen
registry cannot be attacked with tables precomputed for other deployments and
each guess costs ~32 MiB and tens of milliseconds. Releases before this one
hashed a passphrase with one unsalted SHA-256: tokens of that *legacy*
derivation are still opened, never written, and ``xmpp-gateway rotate-key``
moves them to the salted one.

Several keys may be configured (the current one plus old ones): any of them
opens a token, only the current one seals (``MultiFernet``), which is how a
key is rotated without a flag day.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

#: scrypt cost: 2**15 × 8 × 128 B = 32 MiB per derivation (slow on purpose), done
#: once per key when the registry opens (in a thread, never on the reactor).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 15, 8, 1
SALT_BYTES = 16
MIN_PASSPHRASE = 16


class KeyError_(ValueError):
    """A key the operator configured cannot be used."""


class SecretsUnreadable(KeyError_):
    """A stored token that none of the configured keys opens."""


def is_fernet_key(key: str) -> bool:
    try:
        Fernet(key.encode())
        return True
    except (ValueError, TypeError):
        return False


def check_key(key: str) -> None:
    """Raise KeyError_ with a readable reason if ``key`` cannot be a secret key (cheap: no derivation)."""
    if not key:
        raise KeyError_("must not be empty")
    if not is_fernet_key(key) and len(key) < MIN_PASSPHRASE:
        raise KeyError_(f"a passphrase must be at least {MIN_PASSPHRASE} characters (or use `xmpp-gateway genkey`)")


def new_salt() -> bytes:
    return os.urandom(SALT_BYTES)


def derive(passphrase: str, salt: bytes) -> bytes:
    """The Fernet key for a passphrase: scrypt with the registry's salt. Slow on purpose."""
    kdf = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return base64.urlsafe_b64encode(kdf.derive(passphrase.encode()))


def legacy_derive(passphrase: str) -> bytes:
    """The unsalted SHA-256 of earlier releases: accepted for reading only."""
    return base64.urlsafe_b64encode(hashlib.sha256(passphrase.encode()).digest())


class SecretBox:
    """
    Seals with the current key, opens with the current or any old one.

    Building one derives every passphrase key (slow): do it once, off the
    reactor. A passphrase needs the registry's salt; without one only Fernet
    keys can be used (a passphrase's salted key would differ per registry).
    """

    def __init__(self, key: str, old_keys: Sequence[str] = (), salt: bytes | None = None):
        fernets: list[Fernet] = []
        for k in [key, *old_keys]:
            check_key(k)
            if is_fernet_key(k):
                fernets.append(Fernet(k.encode()))
                continue
            if salt is None:
                raise KeyError_("a passphrase key needs the registry's salt (open the registry first)")
            fernets.append(Fernet(derive(k, salt)))
            fernets.append(Fernet(legacy_derive(k)))
        self._current = fernets[0]
        self._any = MultiFernet(fernets)

    @staticmethod
    def generate() -> str:
        return Fernet.generate_key().decode()

    def seal(self, secrets: dict[str, str]) -> str | None:
        if not secrets:
            return None
        return self._current.encrypt(json.dumps(secrets).encode()).decode()

    def open(self, token: str | None) -> dict[str, str]:
        if not token:
            return {}
        try:
            return json.loads(self._any.decrypt(token.encode()))
        except InvalidToken:
            raise SecretsUnreadable("stored secrets cannot be decrypted with registry.secret_key or any of "
                                    "registry.old_secret_keys (wrong key?)") from None

    def is_current(self, token: str) -> bool:
        """Whether the current key (and derivation) already seals ``token``: rotation leaves it alone."""
        try:
            self._current.decrypt(token.encode())
            return True
        except InvalidToken:
            return False

    def rotate(self, token: str) -> str:
        """``token`` re-sealed with the current key; SecretsUnreadable if no key opens it."""
        try:
            return self._any.rotate(token.encode()).decode()
        except InvalidToken:
            raise SecretsUnreadable("no configured key opens this token") from None
