"""Roles of tenant API keys and what each may do: the one permission table.

Who can call the control plane::

    operator token       the platform team: tenants, keys of any tenant, enrollment, billing
    billing key (cbk_)   platform finance: billing reads across every tenant, nothing else
    API key (ck_)        acts for one tenant, with one KeyRole:

    permission          owner admin member viewer billing
    sandboxes:read        x     x     x      x
    sandboxes:write       x     x     x                  create, extend, kill
    sandboxes:access      x     x     x                  data-plane tokens (exec, files)
    jobs:read             x     x     x      x
    agents:read           x     x     x      x
    billing:read                                    x    the tenant's own usage and invoices
    keys:manage           x     x                        the tenant's own API keys

An admin manages keys but cannot mint or revoke an ``owner`` key, so an admin cannot
make itself an owner. Billing is separate duty: not even an owner key reads it; an owner
mints a ``billing`` key for whoever does. Keys that existed before roles (migration 0005)
became ``member``: exactly what they could do before.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class KeyRole(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"
    BILLING = "billing"


class Permission(StrEnum):
    SANDBOXES_READ = "sandboxes:read"
    SANDBOXES_WRITE = "sandboxes:write"
    SANDBOXES_ACCESS = "sandboxes:access"
    JOBS_READ = "jobs:read"
    AGENTS_READ = "agents:read"
    BILLING_READ = "billing:read"
    KEYS_MANAGE = "keys:manage"


DEFAULT_KEY_ROLE = KeyRole.MEMBER

_OPERATE = frozenset(
    {
        Permission.SANDBOXES_READ,
        Permission.SANDBOXES_WRITE,
        Permission.SANDBOXES_ACCESS,
        Permission.JOBS_READ,
        Permission.AGENTS_READ,
    }
)

ROLE_PERMISSIONS: Mapping[KeyRole, frozenset[Permission]] = {
    KeyRole.OWNER: _OPERATE | {Permission.KEYS_MANAGE},
    KeyRole.ADMIN: _OPERATE | {Permission.KEYS_MANAGE},
    KeyRole.MEMBER: _OPERATE,
    KeyRole.VIEWER: frozenset(
        {Permission.SANDBOXES_READ, Permission.JOBS_READ, Permission.AGENTS_READ}
    ),
    KeyRole.BILLING: frozenset({Permission.BILLING_READ}),
}


def allows(role: KeyRole, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]


def may_manage(actor: KeyRole, target: KeyRole) -> bool:
    """Whether a key with role ``actor`` may mint or revoke a key with role ``target``."""
    if not allows(actor, Permission.KEYS_MANAGE):
        return False
    return actor is KeyRole.OWNER or target is not KeyRole.OWNER
