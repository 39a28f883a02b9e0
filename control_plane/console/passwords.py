"""Password hashing for console users: argon2id (argon2-cffi), never stored in clear."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from byoc_agent.protocol.errors import InvalidArgumentError

PASSWORD_MIN = 12
PASSWORD_MAX = 1024

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile (64 MiB, t=3, p=4)
# Verified against when the username is unknown, so that case takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash("corral-console-no-such-user")


def check_strength(password: str) -> None:
    if len(password) < PASSWORD_MIN:
        raise InvalidArgumentError(
            f"password must be at least {PASSWORD_MIN} characters", field="password"
        )
    if len(password) > PASSWORD_MAX:
        raise InvalidArgumentError(
            f"password must be at most {PASSWORD_MAX} characters", field="password"
        )


def hash_password(password: str) -> str:
    check_strength(password)
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; ``None`` (no such user) costs the same and is False."""
    if len(password) > PASSWORD_MAX:
        return False
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)
