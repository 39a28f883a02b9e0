"""Operator endpoints for the control plane's signing keys (see control_plane/keyring.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from control_plane import keyring
from control_plane.api.auth import Operator, Svc
from control_plane.api.schemas import (
    RevokedKeyOut,
    SigningKeyAdminList,
    SigningKeyAdminOut,
)
from control_plane.store.signing_keys import SigningKeyRecord

router = APIRouter(tags=["signing keys"])

Kid = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def key_out(r: SigningKeyRecord) -> SigningKeyAdminOut:
    return SigningKeyAdminOut(
        kid=r.kid, public_key=r.public_key, status=r.status.value, created_at=r.created_at,
        retired_at=r.retired_at, revoked_at=r.revoked_at,
    )


@router.get("/v1/admin/signing-keys", response_model=SigningKeyAdminList)
async def list_signing_keys(_: Operator, svc: Svc) -> SigningKeyAdminList:
    return SigningKeyAdminList(keys=[key_out(k) for k in await keyring.list_keys(svc.db)])


@router.post("/v1/admin/signing-keys/rotate", status_code=201, response_model=SigningKeyAdminOut)
async def rotate_signing_key(_: Operator, svc: Svc) -> SigningKeyAdminOut:
    """A new active key; the previous one stays trusted as ``retired``."""
    return key_out(await keyring.rotate_key(svc.db, svc.keys, actor="operator"))


@router.post("/v1/admin/signing-keys/{kid}/revoke", response_model=RevokedKeyOut)
async def revoke_signing_key(kid: Kid, _: Operator, svc: Svc) -> RevokedKeyOut:
    """Agents refuse ``kid`` from their next key refresh on; the active key is replaced."""
    done = await keyring.revoke_key(svc.db, svc.keys, kid, actor="operator")
    return RevokedKeyOut(
        revoked=key_out(done.revoked),
        replaced_by=key_out(done.replaced_by) if done.replaced_by else None,
    )
