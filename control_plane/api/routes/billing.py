"""Billing: stored usage, monthly invoices and the period's finance export.

The reads (usage, invoices, export) take the operator token, a billing key (the platform's
``billing`` role, for finance, across tenants) or a tenant API key with the ``billing``
role, which sees its own tenant only: naming another tenant is a 404. Finalizing and
minting billing keys take the operator.
The export is rated and encoded batch by batch while it is sent (bounded memory,
see :mod:`control_plane.usage_export`); it has no Content-Length.
Invoices are drafted live and finalized by :mod:`control_plane.invoicing`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse

from billing import Invoice
from byoc_agent.protocol.errors import InvalidArgumentError
from control_plane.api.auth import BillingReader, Operator, Svc
from control_plane.api.pagination import decode_cursor, encode_cursor
from control_plane.api.schemas import (
    BillingKeyList,
    BillingKeyOut,
    CreateBillingKeyRequest,
    InvoiceLineOut,
    InvoiceList,
    InvoiceOut,
    NewApiKeyOut,
    UsagePage,
    UsageRecordOut,
)
from control_plane.invoicing import InvoiceService
from control_plane.store import MAX_PAGE, billing_keys, tenants, usage
from control_plane.store.billing_keys import BillingKeyRecord
from control_plane.store.usage import StoredUsage
from control_plane.usage_export import UsageExporter, parse_format, parse_period, stream_export

router = APIRouter(prefix="/v1/billing", tags=["billing"])

_CURSOR_PREFIX = "seq-"


def _usage_out(stored: StoredUsage) -> UsageRecordOut:
    u = stored.usage
    return UsageRecordOut(
        tenant_id=u.tenant_id,
        agent_id=u.agent_id,
        record_id=u.record_id,
        sandbox_id=u.sandbox_id,
        start=u.start,
        end=u.end,
        vcpu=u.vcpu,
        memory_mb=u.memory_mb,
        gpu_count=u.gpu_count,
        gpu_model=u.gpu_model,
        isolation=u.isolation,
        template=u.template,
        host=u.host,
        received_at=stored.received_at,
    )


def _invoice_out(invoice: Invoice) -> InvoiceOut:
    return InvoiceOut(
        tenant_id=invoice.tenant_id,
        period=invoice.period,
        status=invoice.status.value,
        currency=invoice.currency,
        total=str(invoice.total),
        watermark=invoice.watermark,
        lines=[
            InvoiceLineOut(
                line_id=line.line_id,
                kind=line.kind.value,
                usage_period=line.usage_period,
                resource=line.resource.value,
                gpu_model=line.gpu_model,
                description=line.description,
                unit_price=str(line.unit_price),
                price_id=line.price_id,
                quantity_hours=str(line.quantity_hours),
                amount=str(line.amount),
            )
            for line in invoice.lines
        ],
        content_hash=invoice.content_hash,
        finalized_at=invoice.finalized_at,
    )


def _after_seq(cursor: str | None) -> int | None:
    position = decode_cursor(cursor)
    if position is None:
        return None
    digits = position.removeprefix(_CURSOR_PREFIX)
    if not position.startswith(_CURSOR_PREFIX) or not digits.isdigit():
        raise InvalidArgumentError("cursor is not valid", field="cursor")
    return int(digits)


@router.get("/usage", response_model=UsagePage)
async def list_usage(
    who: BillingReader,
    svc: Svc,
    period: Annotated[str, Query(max_length=16)],
    tenant_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> UsagePage:
    """Usage records overlapping the month, in arrival order, optionally for one tenant."""
    month = parse_period(period)
    after = _after_seq(cursor)
    who.check_tenant(tenant_id or None)
    scope = who.scope() or tenant_id or None
    page = await svc.db.run(
        lambda s: usage.list_usage(
            s,
            start=month.start,
            end=month.end,
            tenant_id=scope,
            after_seq=after,
            limit=limit,
        )
    )
    last = None if page.last_id is None else _CURSOR_PREFIX + page.last_id
    return UsagePage(items=[_usage_out(u) for u in page.items], next_cursor=encode_cursor(last))


@router.get("/export", response_class=StreamingResponse)
async def export(
    who: BillingReader,
    svc: Svc,
    period: Annotated[str, Query(max_length=16)],
    format_name: Annotated[str, Query(alias="format", max_length=16)] = "csv",
    tenant_id: Annotated[str | None, Query(max_length=64)] = None,
) -> StreamingResponse:
    """The period's invoices as rows (CSV, Parquet or FOCUS 1.2), streamed as they are rated.

    Errors found before the first chunk (bad input, a finalized invoice that fails its
    hash) are ordinary HTTP errors; a failure later cuts the response short, which the
    client sees as an incomplete body.
    """
    month = parse_period(period)
    fmt = parse_format(format_name)
    who.check_tenant(tenant_id or None)
    scope = who.scope() or tenant_id or None
    if scope is not None:
        await svc.db.run(lambda s: tenants.get_tenant(s, scope))
    exporter = UsageExporter(svc.db)
    billed = await asyncio.to_thread(exporter.check, month)
    chosen = billed if scope is None else [t for t in billed if t == scope]
    body = stream_export(exporter, month, fmt, chosen)
    try:
        first = await anext(body)
    except BaseException:
        await body.aclose()
        raise

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield first
            async for chunk in body:
                yield chunk
        finally:
            await body.aclose()

    filename = f"corral-usage-{month}-{fmt.value}.{fmt.suffix}"
    return StreamingResponse(
        chunks(),
        media_type=fmt.media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


TenantPath = Annotated[str, Path(max_length=64)]
PeriodPath = Annotated[str, Path(max_length=16)]


@router.get("/invoices", response_model=InvoiceList)
async def list_invoices(
    who: BillingReader,
    svc: Svc,
    period: Annotated[str, Query(max_length=16)],
    tenant_id: Annotated[str | None, Query(max_length=64)] = None,
) -> InvoiceList:
    """The month's invoices, finalized or drafted live, for one tenant or every billed one."""
    month = parse_period(period)
    who.check_tenant(tenant_id or None)
    scope = who.scope() or tenant_id or None
    found = await asyncio.to_thread(InvoiceService(svc.db).invoices, month, scope)
    return InvoiceList(items=[_invoice_out(invoice) for invoice in found])


@router.get("/invoices/{tenant_id}/{period}", response_model=InvoiceOut)
async def get_invoice(
    who: BillingReader, svc: Svc, tenant_id: TenantPath, period: PeriodPath
) -> InvoiceOut:
    """The finalized invoice (hash verified), or the draft as the usage stands now."""
    who.check_tenant(tenant_id)
    month = parse_period(period)
    invoice = await asyncio.to_thread(InvoiceService(svc.db).invoice, tenant_id, month)
    return _invoice_out(invoice)


@router.post("/invoices/{tenant_id}/{period}/finalize", response_model=InvoiceOut)
async def finalize_invoice(
    _: Operator, svc: Svc, tenant_id: TenantPath, period: PeriodPath
) -> InvoiceOut:
    """Freeze the month's invoice with its content hash; 409 if finalized or not yet over."""
    month = parse_period(period)
    invoice = await asyncio.to_thread(InvoiceService(svc.db).finalize, tenant_id, month)
    return _invoice_out(invoice)


# ---- billing keys (operator only) ----


def _billing_key_out(r: BillingKeyRecord) -> BillingKeyOut:
    return BillingKeyOut(id=r.id, name=r.name, created_at=r.created_at, revoked_at=r.revoked_at)


@router.post("/keys", status_code=201, response_model=NewApiKeyOut)
async def create_billing_key(body: CreateBillingKeyRequest, _: Operator, svc: Svc) -> NewApiKeyOut:
    """Mint a key for the billing role; its secret is in this response only."""
    issued = await svc.db.run(lambda s: billing_keys.create_billing_key(s, body.name))
    r = issued.record
    return NewApiKeyOut(id=r.id, name=r.name, key=issued.key, created_at=r.created_at)


@router.get("/keys", response_model=BillingKeyList)
async def list_billing_keys(_: Operator, svc: Svc) -> BillingKeyList:
    keys = await svc.db.run(billing_keys.list_billing_keys)
    return BillingKeyList(items=[_billing_key_out(k) for k in keys])


@router.delete("/keys/{key_id}", status_code=204)
async def revoke_billing_key(
    key_id: Annotated[str, Path(max_length=32)], _: Operator, svc: Svc
) -> Response:
    """Revoke a billing key; requests with it fail with 401 from now on."""
    await svc.db.run(lambda s: billing_keys.revoke_billing_key(s, key_id))
    return Response(status_code=204)
