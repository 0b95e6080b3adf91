"""What running a job means: the stored (already scrubbed) request goes through the request
pipeline like any other, and the answer is shaped as the route it was submitted to answers.

The per-key token reservation made when the job was submitted is held until the job ends, and
settled then with what the job really used (nothing when it failed or was cancelled before it
produced anything). With a job store shared by a fleet, another box may run the job: the
reservation is then charged in full when the job is accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iir.api.chat.serving import completion_body
from iir.api.http import Request, Response, json_response
from iir.api.infer.api_router import infer_body
from iir.core.errors import ApiError, bad_request
from iir.core.ids import now
from iir.policy.limits import Reservation
from iir.service.jobs import JobPool
from iir.service.pipeline import Answer, Caller, Pipeline, Prepared

#: How each kind of job shapes its answer: as the route it was submitted to would.
SHAPES: dict[str, Callable[[Answer], dict[str, Any]]] = {
    "chat": lambda answer: completion_body(answer, now()),
    "infer": infer_body,
}


class Jobs:
    """Submits jobs to the pool and runs them through the pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.pool: JobPool | None = None
        self._reservations: dict[str, Reservation] = {}

    def bind(self, pool: JobPool) -> None:
        self.pool = pool

    async def submit(self, req: Request, kind: str, prepared: Prepared) -> Response:
        """Stores the prepared request as a job; 202 once it is on disk."""
        assert self.pool is not None
        try:
            if prepared.request.stream:
                raise bad_request(
                    "Async jobs cannot stream; drop 'stream' or use POST /v1/chat/completions",
                    param="stream",
                )
            stored = prepared.request.model_dump(mode="json", exclude_unset=True)
            job_id = await self.pool.submit(req.key_id or "", kind, stored)
        except BaseException:
            if prepared.reservation is not None:
                prepared.reservation.settle(0)
            raise
        if prepared.reservation is not None:
            if self.pool.store.shared:
                # Any box may run it, and only this one holds the reservation: the job is
                # charged what was reserved (prompt + max output), here and now.
                prepared.reservation.settle(prepared.reservation.reserved)
            else:
                # No await since the job was queued: no worker can have started it yet.
                self._reservations[job_id] = prepared.reservation
        return accepted(job_id)

    async def run(self, job_id: str, kind: str, request: dict[str, Any]) -> dict[str, Any]:
        shape = SHAPES.get(kind)
        if shape is None:
            raise ApiError(500, f"Unknown job kind {kind!r}")
        prepared = await self.pipeline.prepare(request, Caller(), admit=False)
        prepared.reservation = self._reservations.pop(job_id, None)
        return shape(await self.pipeline.run(prepared))

    def ended(self, job_id: str) -> None:
        """The job ended without running to its end (cancelled, failed before it ran)."""
        reservation = self._reservations.pop(job_id, None)
        if reservation is not None:
            reservation.settle(0)


def accepted(job_id: str) -> Response:
    return json_response(
        {"job_id": job_id, "status": "pending"},
        status=202,
        headers=[
            ("location", f"/v1/async/chat/completions/{job_id}"),
            ("x-iir-job-status", "pending"),
        ],
    )
