"""Console users (operator only): create the people who sign in to ``/console``.

The password travels once, in the request body, and is stored only as an argon2id hash.
``corral admin console-user create`` and ``make up`` use this to make the first user.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from control_plane.api.auth import Operator, Svc
from control_plane.console.passwords import PASSWORD_MAX, hash_password
from control_plane.console.roles import ConsoleRole, parse_role
from control_plane.store import console_users
from control_plane.store.console_users import USERNAME_MAX, ConsoleUserRecord

router = APIRouter(prefix="/v1/console/users", tags=["console"])


class CreateConsoleUserRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Annotated[StrictStr, Field(min_length=1, max_length=USERNAME_MAX)]
    password: Annotated[StrictStr, Field(max_length=PASSWORD_MAX, repr=False)]
    role: StrictStr = ConsoleRole.ADMIN.value


class ConsoleUserOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    username: str
    role: str
    created_at: datetime
    disabled_at: datetime | None


class ConsoleUserList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ConsoleUserOut]


def _out(r: ConsoleUserRecord) -> ConsoleUserOut:
    return ConsoleUserOut(
        id=r.id, username=r.username, role=r.role, created_at=r.created_at,
        disabled_at=r.disabled_at,
    )  # fmt: skip


@router.post("", status_code=201, response_model=ConsoleUserOut)
async def create_console_user(
    body: CreateConsoleUserRequest, _: Operator, svc: Svc
) -> ConsoleUserOut:
    """Create a console user with ``admin``, ``viewer`` or ``billing`` role; 409 if taken."""
    role = parse_role(body.role)
    console_users.normalize_username(body.username)
    password_hash = await asyncio.to_thread(hash_password, body.password)
    user = await svc.db.run(
        lambda s: console_users.create_user(s, body.username, password_hash, role.value)
    )
    return _out(user)


@router.get("", response_model=ConsoleUserList)
async def list_console_users(_: Operator, svc: Svc) -> ConsoleUserList:
    users = await svc.db.run(console_users.list_users)
    return ConsoleUserList(items=[_out(u) for u in users])
