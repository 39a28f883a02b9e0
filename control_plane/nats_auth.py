"""NATS decentralized auth: the control plane is the NATS operator and mints user JWTs.

nats-server runs in operator mode with a memory resolver preloaded with two accounts:
``CORRAL`` (JetStream on; the control plane and every agent connect to it) and ``SYS``
(the system account). Users are not configured in the server at all: a client presents
a user JWT signed by the ``CORRAL`` account key and proves it holds the user's nkey by
signing the server's nonce. So the control plane can give a new agent its own NATS user
at enrollment without touching or restarting nats-server.

- The agent makes its own user nkey (the seed never leaves its machine) and sends the
  public key when it enrolls; it gets back a user JWT whose permissions allow only its
  own subjects (:func:`byoc_agent.protocol.subjects.agent_permissions`).
- The control plane mints its own user (no permission limits) for itself at startup.
- Operator, account and system keys are nkey seeds sealed with the master key in the
  ``nats_keys`` table, made once. ``python -m control_plane.nats_auth server-config``
  writes the nats-server configuration that trusts them (see ADR 0018).

JWTs follow the NATS JWT v2 layout: ``base64url(header).base64url(claims).base64url(sig)``
with header ``{"typ":"JWT","alg":"ed25519-nkey"}``, the signature by the issuer's nkey.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nkeys

from byoc_agent.protocol.subjects import Permissions
from control_plane.jobs.keys import seal, unseal
from control_plane.store import Database, nats_keys

JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
ACCOUNT_NAME = "CORRAL"
SYSTEM_ACCOUNT_NAME = "SYS"
_KINDS = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "system": nkeys.PREFIX_BYTE_ACCOUNT,
}
_UNLIMITED = {
    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
    "wildcards": True, "conn": -1, "leaf": -1,
}


class NatsAuthError(ValueError):
    """A public nkey or seed is not valid for its role."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_seed(prefix: int) -> bytes:
    """A fresh nkey seed (``S…``) for an operator, account or user."""
    seed: bytes = nkeys.encode_seed(secrets.token_bytes(32), prefix)
    return seed


def public_of(seed: bytes) -> str:
    kp = nkeys.from_seed(bytearray(seed))
    public: bytes = kp.public_key
    return public.decode("ascii")


def sign_nonce(seed: bytes, nonce: str) -> bytes:
    """What a NATS client sends as ``sig``: the nonce signed with the user's nkey."""
    kp = nkeys.from_seed(bytearray(seed))
    signed: bytes = kp.sign(nonce.encode())
    return base64.b64encode(signed)


def is_user_public_key(text: str) -> bool:
    """A well-formed user public nkey (``U…``, 56 characters, valid checksum)."""
    if len(text) != 56 or not text.startswith("U"):
        return False
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except ValueError:
        return False
    if len(raw) != 35 or raw[0] != nkeys.PREFIX_BYTE_USER:
        return False
    crc = int.from_bytes(raw[-2:], "little")
    return bool(nkeys.crc16(bytearray(raw[:-2])) == crc)


def encode_jwt(claims: dict[str, object], issuer_seed: bytes) -> str:
    """Sign NATS JWT claims with the issuer's nkey (``iss`` is set from it)."""
    body = dict(claims)
    body["iss"] = public_of(issuer_seed)
    body.setdefault("iat", int(time.time()))
    body["jti"] = ""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    signing_input = f"{_b64(json.dumps(JWT_HEADER).encode())}.{_b64(json.dumps(body).encode())}"
    kp = nkeys.from_seed(bytearray(issuer_seed))
    return f"{signing_input}.{_b64(kp.sign(signing_input.encode()))}"


def decode_jwt_claims(token: str) -> dict[str, object]:
    """The claims of a JWT, unverified (for display and tests)."""
    part = token.split(".")[1]
    data = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    if not isinstance(data, dict):
        raise NatsAuthError("JWT claims are not an object")
    return data


@dataclass(frozen=True, slots=True)
class UserCredentials:
    """A NATS user: its JWT and its nkey seed (the seed is the secret)."""

    jwt: str
    seed: bytes

    def __repr__(self) -> str:
        return "UserCredentials(<secret>)"


@dataclass(frozen=True, slots=True)
class NatsAuthority:
    """The operator, the ``CORRAL`` account and the system account, as nkey seeds."""

    operator_seed: bytes
    account_seed: bytes
    system_seed: bytes

    def __repr__(self) -> str:
        return f"NatsAuthority(account={self.account_public!r})"

    @classmethod
    def generate(cls) -> NatsAuthority:
        return cls(
            operator_seed=new_seed(nkeys.PREFIX_BYTE_OPERATOR),
            account_seed=new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
            system_seed=new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
        )

    @property
    def account_public(self) -> str:
        return public_of(self.account_seed)

    @property
    def system_public(self) -> str:
        return public_of(self.system_seed)

    def operator_jwt(self) -> str:
        op = public_of(self.operator_seed)
        claims: dict[str, object] = {
            "name": "corral", "sub": op,
            "nats": {"type": "operator", "version": 2, "system_account": self.system_public},
        }
        return encode_jwt(claims, self.operator_seed)

    def account_jwt(self) -> str:
        limits = {**_UNLIMITED, "mem_storage": -1, "disk_storage": -1, "streams": -1,
                  "consumer": -1}
        claims: dict[str, object] = {
            "name": ACCOUNT_NAME, "sub": self.account_public,
            "nats": {"type": "account", "version": 2, "limits": limits,
                     "default_permissions": {"pub": {}, "sub": {}}},
        }
        return encode_jwt(claims, self.operator_seed)

    def system_account_jwt(self) -> str:
        claims: dict[str, object] = {
            "name": SYSTEM_ACCOUNT_NAME, "sub": self.system_public,
            "nats": {"type": "account", "version": 2, "limits": dict(_UNLIMITED),
                     "default_permissions": {"pub": {}, "sub": {}}},
        }
        return encode_jwt(claims, self.operator_seed)

    def server_config(self) -> str:
        """nats-server configuration text that trusts this operator (memory resolver)."""
        return (
            f"operator: {self.operator_jwt()}\n"
            f"system_account: {self.system_public}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f"  {self.account_public}: {self.account_jwt()}\n"
            f"  {self.system_public}: {self.system_account_jwt()}\n"
            "}\n"
        )

    def user_jwt(
        self, user_public: str, name: str, permissions: Permissions | None
    ) -> str:
        """A user of the ``CORRAL`` account; ``permissions=None`` means no limits."""
        if not is_user_public_key(user_public):
            raise NatsAuthError("not a NATS user public key (U…, 56 characters)")
        nats_claims: dict[str, object] = {
            "type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1,
        }
        if permissions is not None:
            nats_claims["pub"] = {"allow": list(permissions.publish)}
            nats_claims["sub"] = {"allow": list(permissions.subscribe)}
        return encode_jwt(
            {"name": name, "sub": user_public, "nats": nats_claims}, self.account_seed
        )

    def new_user(self, name: str, permissions: Permissions | None) -> UserCredentials:
        """A user made here (the control plane's own, and tests'): seed and JWT together."""
        seed = new_seed(nkeys.PREFIX_BYTE_USER)
        return UserCredentials(jwt=self.user_jwt(public_of(seed), name, permissions), seed=seed)


def format_creds(creds: UserCredentials) -> str:
    """The standard NATS ``.creds`` file text (JWT and seed), as nats-py and the ``nats``
    CLI read it."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{creds.jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{creds.seed.decode('ascii')}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def load_or_create(db: Database, master_key: bytes) -> NatsAuthority:
    """The authority stored in the database, created (and sealed) on first use."""

    def run(s: nats_keys.Session) -> NatsAuthority:
        stored = nats_keys.get_all(s)
        if not stored:
            fresh = NatsAuthority.generate()
            seeds = {"operator": fresh.operator_seed, "account": fresh.account_seed,
                     "system": fresh.system_seed}
            for kind, seed in seeds.items():
                nats_keys.add(s, kind, public_of(seed), seal(master_key, _aad(kind), seed))
            stored = nats_keys.get_all(s)
        opened = {k: unseal(master_key, _aad(k), v) for k, v in stored.items()}
        return NatsAuthority(
            operator_seed=opened["operator"], account_seed=opened["account"],
            system_seed=opened["system"],
        )

    return db.run_sync(run)


def _aad(kind: str) -> str:
    return f"nats:{kind}"


def main(argv: list[str] | None = None) -> None:
    """``python -m control_plane.nats_auth server-config --out FILE``."""
    from control_plane.settings import SettingsError, load_settings
    from control_plane.store import upgrade_to_head

    parser = argparse.ArgumentParser(prog="python -m control_plane.nats_auth")
    sub = parser.add_subparsers(dest="command", required=True)
    cfg = sub.add_parser("server-config", help="write the nats-server auth configuration")
    cfg.add_argument("--out", required=True, type=Path, help="file to write (mode 0600)")
    user = sub.add_parser(
        "user-creds",
        help="write a .creds file for an unrestricted NATS user (operator debugging; "
        "it can read every tenant's traffic, so keep it short-lived)",
    )
    user.add_argument("--name", required=True)
    user.add_argument("--out", required=True, type=Path, help="file to write (mode 0600)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(os.environ)
    except SettingsError as e:
        print(f"nats_auth: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    upgrade_to_head(settings.database_url)
    db = Database(settings.database_url)
    try:
        authority = load_or_create(db, settings.master_key)
    finally:
        db.dispose()
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.command == "server-config":
        text = authority.server_config()
    else:
        text = format_creds(authority.new_user(args.name, permissions=None))
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
