"""The agent's NATS user: an nkey made here (seed file mode 0600, never sent anywhere)
and the user JWT the control plane signed for it at enrollment.

The seed signs the server's nonce when the agent connects; it is a separate key from the
agent's Ed25519 message-signing key, so a hostile NATS server that chooses the nonce can
never obtain a signature that verifies as a result, event or usage report.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import nkeys


@dataclass(frozen=True, slots=True)
class NatsUserFiles:
    """Where the agent keeps its NATS user: ``nats-user.nk`` (seed) and ``nats-user.jwt``."""

    seed_file: Path
    jwt_file: Path

    @classmethod
    def under(cls, home: Path) -> NatsUserFiles:
        return cls(seed_file=home / "nats-user.nk", jwt_file=home / "nats-user.jwt")

    def public_key(self) -> str:
        """The user's public nkey (``U…``), making the seed on first use (mode 0600)."""
        if not self.seed_file.exists():
            seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
            _write_private(self.seed_file, seed)
        kp = nkeys.from_seed(bytearray(self.seed_file.read_bytes().strip()))
        public: bytes = kp.public_key
        return public.decode("ascii")

    def save_jwt(self, jwt: str) -> None:
        _write_private(self.jwt_file, jwt.encode("ascii"))

    def credentials(self) -> tuple[str, str] | None:
        """``(jwt file, seed file)`` for ``nats.connect(user_credentials=...)``, or None
        when this agent enrolled with a control plane that runs NATS without auth."""
        if self.jwt_file.exists() and self.seed_file.exists():
            return str(self.jwt_file), str(self.seed_file)
        return None


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
