"""Sandboxes: create (placed and started by an agent, or restored from a snapshot), read,
list, extend, pause, resume, snapshot, fork, kill, token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.protocol.messages import SandboxState
from control_plane import sandbox_service
from control_plane.api import limits
from control_plane.api.auth import SandboxAccess, SandboxReader, SandboxWriter, Svc
from control_plane.api.errors import AGENT_ERRORS, RATE_LIMITED, documented
from control_plane.api.pagination import decode_cursor, encode_cursor
from control_plane.api.schemas import (
    CreateSandboxRequest,
    ForkOut,
    ForkRequest,
    SandboxCreatedOut,
    SandboxOut,
    SandboxPage,
    SandboxTokenOut,
    SetTimeoutRequest,
    SnapshotOut,
)
from control_plane.api.views import sandbox_fields, sandbox_out, snapshot_out
from control_plane.sandbox_service import MAX_FORKS, CreateSandbox, RestoreSandbox
from control_plane.store import MAX_PAGE, sandboxes

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])


@router.post(
    "",
    status_code=201,
    response_model=SandboxCreatedOut,
    responses={
        202: {"model": SandboxCreatedOut, "description": "Accepted: the sandbox is still "
              "pending (its agent has not answered yet); poll it until it runs"},
        **AGENT_ERRORS,
        **RATE_LIMITED,
    },
)
async def create_sandbox(
    body: CreateSandboxRequest, who: SandboxWriter, svc: Svc, response: Response
) -> SandboxCreatedOut:
    """201 with the running sandbox; 202 with it still ``pending`` when its agent has not
    answered within the job timeout (it may be adding a host): poll
    ``GET /v1/sandboxes/{id}`` until it runs."""
    lim = svc.settings.limits
    limits.check_timeout(lim, body.timeout_s)
    limits.check_metadata(lim, body.metadata)
    egress = limits.check_egress(body.egress)
    if body.snapshot_id is not None:
        taken = {"template", "isolation", "cpu", "memory_mb", "egress"}
        given = sorted(taken & body.model_fields_set)
        if given:
            raise InvalidArgumentError(
                f"{given[0]}: a sandbox restored from a snapshot takes the snapshot's "
                "template, isolation, cpu, memory_mb and egress; leave them out",
                field=given[0],
            )
        svc.create_limiter.take(who.tenant_id)  # only well-formed requests spend a token
        access = await svc.sandboxes.restore(
            RestoreSandbox(
                tenant_id=who.tenant_id,
                snapshot_id=body.snapshot_id,
                timeout_s=body.timeout_s,
                env=body.env,
                metadata=body.metadata,
            ),
            pending_ok=True,
        )
        return created_out(access, response)
    if body.template is None:
        raise InvalidArgumentError(
            "template: required (or give snapshot_id to start from a snapshot)",
            field="template",
        )
    limits.check_cpu(lim, body.cpu)
    limits.check_memory(lim, body.memory_mb)
    svc.create_limiter.take(who.tenant_id)  # only well-formed requests spend a token
    access = await svc.sandboxes.create(
        CreateSandbox(
            tenant_id=who.tenant_id,
            template=body.template,
            isolation=body.isolation,
            cpu=body.cpu,
            memory_mb=body.memory_mb,
            timeout_s=body.timeout_s,
            env=body.env,
            metadata=body.metadata,
            egress=egress,
        ),
        pending_ok=True,
    )
    return created_out(access, response)


def created_out(
    access: sandbox_service.SandboxAccess, response: Response | None = None
) -> SandboxCreatedOut:
    """The created sandbox; with ``response``, 202 when its agent has not started it yet
    (not for one held for a cosignature: that one waits on the customer, not the agent)."""
    if (
        response is not None
        and access.sandbox.state == SandboxState.PENDING
        and access.cosign_request_id is None
    ):
        response.status_code = 202
    return SandboxCreatedOut.model_validate(
        {
            **sandbox_fields(access.sandbox),
            "data_plane_url": access.data_plane_url,
            "access_token": access.token.token,
            "access_token_expires_at": access.token.expires_at,
            "cosign_request_id": access.cosign_request_id,
        }
    )


@router.get("", response_model=SandboxPage)
async def list_sandboxes(
    request: Request,
    who: SandboxReader,
    svc: Svc,
    state: SandboxState | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> SandboxPage:
    after = decode_cursor(cursor)
    labels = limits.metadata_filters(request.query_params)
    page = await svc.db.run(
        lambda s: sandboxes.list_sandboxes(
            s, tenant_id=who.tenant_id, state=state, metadata=labels, after=after, limit=limit
        )
    )
    return SandboxPage(
        items=[sandbox_out(r) for r in page.items], next_cursor=encode_cursor(page.last_id)
    )


@router.get("/{sandbox_id}", response_model=SandboxOut)
async def get_sandbox(sandbox_id: str, who: SandboxReader, svc: Svc) -> SandboxOut:
    return sandbox_out(await svc.sandboxes.get(who.tenant_id, sandbox_id))


@router.post("/{sandbox_id}/timeout", response_model=SandboxOut, responses=AGENT_ERRORS)
async def set_timeout(
    sandbox_id: str, body: SetTimeoutRequest, who: SandboxWriter, svc: Svc
) -> SandboxOut:
    limits.check_timeout(svc.settings.limits, body.timeout_s)
    return sandbox_out(
        await svc.sandboxes.set_timeout(who.tenant_id, sandbox_id, body.timeout_s)
    )


@router.post("/{sandbox_id}/pause", response_model=SandboxOut, responses=AGENT_ERRORS)
async def pause_sandbox(sandbox_id: str, who: SandboxWriter, svc: Svc) -> SandboxOut:
    """Save the sandbox's memory and files on its agent and stop it (not billed while paused)."""
    return sandbox_out(await svc.sandboxes.pause(who.tenant_id, sandbox_id))


@router.post("/{sandbox_id}/resume", response_model=SandboxOut, responses=AGENT_ERRORS)
async def resume_sandbox(sandbox_id: str, who: SandboxWriter, svc: Svc) -> SandboxOut:
    """Continue a paused sandbox where it stopped."""
    return sandbox_out(await svc.sandboxes.resume(who.tenant_id, sandbox_id))


@router.post(
    "/{sandbox_id}/snapshots", status_code=201, response_model=SnapshotOut, responses=AGENT_ERRORS
)
async def snapshot_sandbox(sandbox_id: str, who: SandboxWriter, svc: Svc) -> SnapshotOut:
    """Save a running sandbox's memory and files on its agent; the sandbox runs on."""
    return snapshot_out(await svc.sandboxes.snapshot(who.tenant_id, sandbox_id))


@router.post(
    "/{sandbox_id}/fork", status_code=201, response_model=ForkOut, responses=AGENT_ERRORS
)
async def fork_sandbox(
    sandbox_id: str, body: ForkRequest, who: SandboxWriter, svc: Svc
) -> ForkOut:
    """``count`` (1..MAX_FORKS) new sandboxes from one snapshot of a running sandbox."""
    if not 1 <= body.count <= MAX_FORKS:
        raise InvalidArgumentError(
            f"count: must be between 1 and {MAX_FORKS}, got {body.count}", field="count"
        )
    forks = await svc.sandboxes.fork(who.tenant_id, sandbox_id, body.count)
    return ForkOut(items=[created_out(a) for a in forks])


@router.delete("/{sandbox_id}", status_code=204, responses=AGENT_ERRORS)
async def kill_sandbox(sandbox_id: str, who: SandboxWriter, svc: Svc) -> Response:
    await svc.sandboxes.kill(who.tenant_id, sandbox_id)
    return Response(status_code=204)


@router.post("/{sandbox_id}/token", response_model=SandboxTokenOut, responses=documented(409))
async def sandbox_token(sandbox_id: str, who: SandboxAccess, svc: Svc) -> SandboxTokenOut:
    access = await svc.sandboxes.access(who.tenant_id, sandbox_id)
    return SandboxTokenOut(
        access_token=access.token.token,
        expires_at=access.token.expires_at,
        data_plane_url=access.data_plane_url,
    )
