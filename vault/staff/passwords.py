"""Password policy and hashing: argon2id (argon2-cffi's defaults, RFC 9106's second
recommended profile), a minimum length and a shipped list of 20,000 common passwords."""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from vault.errors import ValidationFailed

MIN_LENGTH = 12
MAX_LENGTH = 256
_HASHER = PasswordHasher()  # argon2id
#: verified against when the login name is unknown, so both answers take as long
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    data = resources.files("vault.staff").joinpath("common-passwords.txt.gz").read_bytes()
    return frozenset(line.strip() for line in gzip.decompress(data).decode().splitlines() if line.strip())


def check_policy(password: str, *, email: str = "") -> None:
    if len(password) < MIN_LENGTH:
        raise ValidationFailed(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise ValidationFailed(f"a password has at most {MAX_LENGTH} characters")
    lowered = password.lower()
    if lowered in common_passwords() or lowered.strip() in common_passwords():
        raise ValidationFailed("that password is on a list of common passwords; choose another")
    local = email.split("@", 1)[0].lower()
    if local and len(local) >= 4 and local in lowered:
        raise ValidationFailed("a password must not contain the login name")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False
