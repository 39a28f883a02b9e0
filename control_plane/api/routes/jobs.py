"""Job status."""

from __future__ import annotations

from fastapi import APIRouter

from control_plane.api.auth import JobReader, Svc
from control_plane.api.schemas import JobOut
from control_plane.api.views import job_out
from control_plane.store import jobs

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, who: JobReader, svc: Svc) -> JobOut:
    tenant_id = who.scope()
    return job_out(await svc.db.run(lambda s: jobs.get_job(s, job_id, tenant_id=tenant_id)))
