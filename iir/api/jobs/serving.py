"""What running a job means: the stored (already scrubbed) request goes through the request
pipeline like any other, and the answer is shaped as the route it was submitted to answers.

The per-key token reservation made when the job was submitted is held until the job ends, and
settled then with what the job really used (nothing when it failed or was cancelled before it
produced anything). With a job store shared by a fleet, another box may run the job: the
reservation is then charged in full when the job is accepted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from iir.api.chat.serving import completion_body
from iir.api.http import Request, Response, json_response
from iir.api.infer.api_router import infer_body
from iir.api.responses import serving as responses
from iir.core.errors import ApiError, bad_request
from iir.core.ids import now
from iir.policy.limits import Reservation
from iir.service.jobs import JobPool
from iir.service.pipeline import Answer, Caller, Pipeline, Prepared


async def _prepare_chat(pipeline: Pipeline, stored: dict[str, Any]) -> Prepared:
    return await pipeline.prepare(stored, Caller(), admit=False)


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of job: how its stored request goes through the pipeline again, and how its
    answer is shaped (as the route it was submitted to would answer)."""

    shape: Callable[[Answer, dict[str, Any]], dict[str, Any]]
    prepare: Callable[[Pipeline, dict[str, Any]], Awaitable[Prepared]] = _prepare_chat


def _response(answer: Answer, stored: dict[str, Any]) -> dict[str, Any]:
    turn = responses.Turn(
        stored["response_id"],
        stored["created_at"],
        answer.model,
        stored["body"],
        stored.get("previous_response_id"),
        background=True,
    )
    return responses.answer_object(turn, answer)


SHAPES: dict[str, Kind] = {
    "chat": Kind(lambda answer, _: completion_body(answer, now())),
    "infer": Kind(lambda answer, _: infer_body(answer)),
    # A background response (POST /v1/responses with "background": true).
    "responses": Kind(
        _response,
        lambda pipeline, stored: responses.prepare(pipeline, stored["body"], Caller(), admit=False),
    ),
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
        return accepted(await self.enqueue(req, kind, prepared))

    async def enqueue(
        self,
        req: Request,
        kind: str,
        prepared: Prepared,
        stored: dict[str, Any] | None = None,
    ) -> str:
        """Stores ``stored`` (by default the prepared request) as a job; returns its id once it
        is on disk. The job holds the prepared request's token reservation until it ends."""
        assert self.pool is not None
        try:
            if prepared.request.stream:
                raise bad_request(
                    "Async jobs cannot stream; drop 'stream' or use POST /v1/chat/completions",
                    param="stream",
                )
            if stored is None:
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
        return job_id

    async def run(self, job_id: str, kind: str, request: dict[str, Any]) -> dict[str, Any]:
        spec = SHAPES.get(kind)
        if spec is None:
            raise ApiError(500, f"Unknown job kind {kind!r}")
        prepared = await spec.prepare(self.pipeline, request)
        prepared.reservation = self._reservations.pop(job_id, None)
        return spec.shape(await self.pipeline.run(prepared), request)

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
