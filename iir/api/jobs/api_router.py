"""Async chat jobs: ``POST /v1/async/chat/completions`` stores a job (202 once it is on disk),
``GET .../{job_id}`` polls it (optionally long-polling with ``?wait=``), ``DELETE`` cancels it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from iir.api.http import Request, Response, json_response
from iir.api.jobs.protocol import AsyncChatRequest, JobResult, JobStatus
from iir.api.router import Route
from iir.core.errors import ApiError, bad_request
from iir.store.jobs import valid_job_id

if TYPE_CHECKING:
    from iir.api.services import Services

MAX_WAIT = 60.0
JOB = "/v1/async/chat/completions/{job_id}"


async def submit(svc: Services, req: Request) -> Response:
    prepared = await svc.pipeline.prepare(await req.json(), req.caller())
    req.state["model"] = prepared.request.model
    req.reply_headers += prepared.headers
    return await svc.jobs.submit(req, "chat", prepared)


async def get(svc: Services, req: Request, job_id: str) -> Response:
    pool = svc.job_pool
    wait = _wait_param(req.query)
    if wait and valid_job_id(job_id):
        job = await pool.wait(req.key_id or "", job_id, wait)
    else:
        job = await pool.get(req.key_id or "", job_id)
    req.state["model"] = job.model
    headers = [("x-iir-job-status", job.status)]
    if job.status == "succeeded" and job.result is not None:
        return json_response(job.result, headers=headers)
    body: dict[str, Any] = {"job_id": job.id, "status": job.status}
    if job.status == "failed":
        body["error"] = job.error or ApiError(500, "The job failed").error_object()
    return json_response(body, headers=headers)


async def cancel(svc: Services, req: Request, job_id: str) -> Response:
    before = await svc.job_pool.cancel(req.key_id or "", job_id)
    if before in ("succeeded", "failed"):
        raise ApiError(
            409,
            f"Job {job_id} has already {before}; there is nothing to cancel",
            code="job_finished",
        )
    return json_response(
        {"job_id": job_id, "status": "cancelled"},
        headers=[("x-iir-job-status", "cancelled")],
    )


def _wait_param(query: str) -> float:
    """``?wait=<seconds>``: how long GET may hold the answer for a job that has not ended."""
    values = parse_qs(query or "", keep_blank_values=True).get("wait")
    if not values:
        return 0.0
    try:
        wait = float(values[-1])
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= MAX_WAIT:
        raise bad_request(
            f"'wait' must be a number of seconds between 0 and {MAX_WAIT:g}", param="wait"
        )
    return wait


ROUTES = [
    Route(
        "POST",
        "/v1/async/chat/completions",
        submit,
        "Submit a chat completion job (202 once it is stored)",
        request=AsyncChatRequest,
        response=JobStatus,
        status=202,
        tags=("jobs",),
    ),
    Route("GET", JOB, get, "Status or result of a job", response=JobResult, tags=("jobs",)),
    Route(
        "DELETE",
        JOB,
        cancel,
        "Cancel a pending or running job",
        response=JobStatus,
        tags=("jobs",),
    ),
]
