"""Console roles and the one function that decides what a role may do.

The console has its own users, but its roles mirror the API's: ``admin`` is the operator
(everything), ``viewer`` reads every page and changes nothing, ``billing`` is finance (the
usage, invoice and export pages only, like a billing key). Every check goes through
:func:`allowed`, so unifying with the API's role model later changes this file only.
"""

from __future__ import annotations

from enum import StrEnum

from byoc_agent.protocol.errors import InvalidArgumentError


class ConsoleRole(StrEnum):
    ADMIN = "admin"
    VIEWER = "viewer"
    BILLING = "billing"


class Permission(StrEnum):
    VIEW_OPERATIONS = "view_operations"  # tenants, agents, hosts, sandboxes, jobs, keys
    VIEW_BILLING = "view_billing"  # usage chart, invoices, exports
    OPERATE = "operate"  # create tenants and keys, revoke, kill, rotate


_GRANTS: dict[ConsoleRole, frozenset[Permission]] = {
    ConsoleRole.ADMIN: frozenset(Permission),
    ConsoleRole.VIEWER: frozenset({Permission.VIEW_OPERATIONS, Permission.VIEW_BILLING}),
    ConsoleRole.BILLING: frozenset({Permission.VIEW_BILLING}),
}


def allowed(role: str, permission: Permission) -> bool:
    """Whether a console user with ``role`` may do ``permission``; unknown roles may nothing."""
    try:
        return permission in _GRANTS[ConsoleRole(role)]
    except ValueError:
        return False


def parse_role(text: str) -> ConsoleRole:
    try:
        return ConsoleRole(text)
    except ValueError:
        choices = ", ".join(r.value for r in ConsoleRole)
        raise InvalidArgumentError(f"role must be one of {choices}", field="role") from None
