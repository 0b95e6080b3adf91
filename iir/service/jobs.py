"""The job pool: runs queued jobs, ``concurrency`` at a time, and keeps their state in the store.

Jobs are at-least-once: a job found ``running`` at start-up was interrupted and runs again, up to
``max_attempts`` interruptions (then it fails with ``job_crashed``: a job that brings the process
down must not do so after every restart). What a job does is the ``run`` callable the pool is
given (the api layer runs it through the request pipeline), so the pool knows nothing of chat,
routing or wire formats.

Nothing a key submits can fill the box: per key, at most ``max_pending_per_key`` jobs not yet
ended and ``max_bytes_per_key`` bytes stored (429 past either), and a result over
``max_result_bytes`` fails its job. A write the store refuses is retried ``write_retries`` times,
then the job fails with the store's error (or, if even that cannot be written, is left for the
next start), so a full disk never holds a worker for ever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, TypeVar

import orjson

from iir.core.errors import ApiError
from iir.ops import metrics
from iir.store.jobs import (
    ACTIVE,
    STATUSES,
    Job,
    JobStore,
    cancel_job,
    claim_job,
    compact,
    count_jobs,
    fail_job,
    finish_job,
    get_job,
    insert_job,
    new_job_id,
    purge_jobs,
    recover_jobs,
    release_jobs,
    usage_by_owner,
    valid_job_id,
)
from iir.store.sqlite import StoreError, StoreUnavailable

log = logging.getLogger("iir.service.jobs")

T = TypeVar("T")
#: ``run(job_id, kind, request) -> result``: what running a job means.
Run = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
#: The secret scrubber's signature (``iir.policy.scrub.Scrubber.scrub``): (scrubbed object, counts).
Scrub = Callable[[Any], tuple[Any, Any]]


def unavailable(exc: StoreUnavailable) -> ApiError:
    return ApiError(
        503,
        f"The job store is unavailable right now ({exc}); nothing was accepted, retry shortly",
        code="job_store_unavailable",
        headers=[("retry-after", "1")],
    )


# --- the worker pool ---------------------------------------------------------------------------


def _error_body(err: ApiError) -> dict[str, Any]:
    return err.error_object()


def crashed_error(attempts: int) -> ApiError:
    return ApiError(
        500,
        f"The job was interrupted {attempts} times by the server stopping while it ran "
        "(IIR_JOB_MAX_ATTEMPTS); it is not run again",
        code="job_crashed",
    )


def result_too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        400,
        f"The job's result holds {size} bytes, more than the {limit} bytes a stored result may "
        "hold (IIR_JOB_MAX_RESULT_BYTES); ask for a shorter answer, or use the synchronous API",
        code="job_result_too_large",
    )


def store_failed(exc: StoreUnavailable) -> ApiError:
    return ApiError(
        503,
        f"The job store could not record the job's outcome ({exc})",
        code="job_store_unavailable",
    )


def _no_job(job_id: str) -> ApiError:
    shown = job_id if valid_job_id(job_id) else "(malformed id)"
    return ApiError(404, f"No job {shown} for this API key", code="job_not_found")


class JobPool:
    """Runs queued jobs with ``run``, ``concurrency`` at a time.

    ``on_end(job_id)`` is called once a job has ended, however it ended (succeeded, failed,
    cancelled while pending or running), so that what was held for it can be released.
    """

    def __init__(
        self,
        store: JobStore,
        run: Run,
        concurrency: int = 4,
        queue_max: int = 10000,
        scrub: Scrub | None = None,
        on_end: Callable[[str], None] | None = None,
        *,
        max_attempts: int = 3,
        max_pending_per_key: int = 0,
        max_bytes_per_key: int = 0,
        max_result_bytes: int = 0,
        write_retries: int = 10,
    ) -> None:
        self.store = store
        self.scrub = scrub
        self.run = run
        self.on_end = on_end
        self.concurrency = concurrency
        self.queue_max = queue_max
        self.max_attempts = max_attempts
        self.max_pending_per_key = max_pending_per_key
        self.max_bytes_per_key = max_bytes_per_key
        self.max_result_bytes = max_result_bytes
        self.write_retries = write_retries
        # Per key: jobs not ended, and bytes stored. Kept here (a query per submission would
        # cost more the more a key stores), counted from the file at start-up and after each
        # purge, so drift (offline cancels, a write lost to a crash) is corrected soon.
        self._active: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._reserved = 0
        self._running: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._cancel_requested: set[str] = set()
        # Long-poll support: GET ?wait= sleeps on the job's event until the job ends.
        self._events: dict[str, asyncio.Event] = {}
        self._waiting: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []
        self._counts: Counter[str] = Counter()
        self._started = False

    # lifecycle

    async def start(self) -> None:
        await self.store.open()
        # IIR's own words, no client text: nothing for the scrubber
        crashed = orjson.dumps(_error_body(crashed_error(self.max_attempts)))
        try:
            pending, failed = await self.store.call(
                recover_jobs, self.max_attempts, crashed, self.store.clock(), self.store.ttl
            )
        except StoreUnavailable as exc:
            raise StoreError(f"job database {str(self.store.path)!r}: {exc}") from None
        for job_id in pending:
            self._queue.put_nowait(job_id)
        if pending:
            log.info("jobs recovered", extra={"event": "jobs_recovered", "count": len(pending)})
        for job_id in failed:
            log.error(
                "job failed: the server stopped while it ran, too many times",
                extra={"event": "job_crashed", "job_id": job_id},
            )
        await self._refresh_counts()
        await self._refresh_usage()
        self._tasks = [asyncio.ensure_future(self._worker()) for _ in range(self.concurrency)]
        self._tasks.append(asyncio.ensure_future(self._purger()))
        self._started = True

    async def stop(self) -> None:
        """Stops the workers; a job they were running goes back to ``pending`` and runs at the
        next start, without counting as an attempt (if the store cannot be written, it stays
        ``running``: run at the next start all the same, counted as a crash)."""
        interrupted = list(self._running)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("job worker failed while stopping")
        self._tasks = []
        if self._started:
            if interrupted:
                try:
                    await self.store.write(release_jobs, interrupted)
                except StoreUnavailable:
                    log.warning("interrupted jobs left running", extra={"event": "job_release"})
            await self.store.close()
            self._started = False

    def _for_storage(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The one place a payload passes before it is written: no secret reaches the disk.

        Requests, results and errors all come through here, scrubbed by ``scrub`` (the secret
        scrubber) when the pool was given one.
        """
        if self.scrub is not None:
            obj = self.scrub(obj)[0]
        return obj

    # accounting

    def _move(self, old: str | None, new: str | None) -> None:
        if old:
            self._counts[old] -= 1
        if new:
            self._counts[new] += 1
        self._publish()

    def _publish(self) -> None:
        for status in STATUSES:
            metrics.JOBS.labels(status).set(max(0, self._counts[status]))
        metrics.JOB_QUEUE_DEPTH.set(self._queue.qsize())

    async def _refresh_counts(self) -> None:
        self._counts = Counter(await self.store.read(count_jobs, self.store.clock()))
        self._publish()

    async def _refresh_usage(self) -> None:
        usage = await self.store.read(usage_by_owner)
        self._active = Counter({owner: u[0] for owner, u in usage.items() if u[0]})
        self._bytes = Counter({owner: u[1] for owner, u in usage.items() if u[1]})

    def _check_quota(self, owner: str, size: int) -> None:
        """429 when the key has too many jobs not yet ended, or too many bytes stored."""
        if self.max_pending_per_key and self._active[owner] >= self.max_pending_per_key:
            raise ApiError(
                429,
                f"This API key has {self._active[owner]} jobs that have not ended, the most "
                f"it may have (IIR_JOB_MAX_PENDING_PER_KEY); retry when some have ended",
                code="too_many_pending_jobs",
                headers=[("retry-after", "5")],
            )
        if self.max_bytes_per_key and self._bytes[owner] + size > self.max_bytes_per_key:
            raise ApiError(
                429,
                f"This API key's stored jobs hold {self._bytes[owner]} bytes; this one "
                f"({size} bytes) would pass the {self.max_bytes_per_key} bytes a key may store "
                "(IIR_JOB_MAX_BYTES_PER_KEY); finished jobs are deleted IIR_JOB_TTL_SECONDS "
                "after they end",
                code="job_storage_full",
                headers=[("retry-after", "60")],
            )

    # the API

    async def submit(self, owner: str, kind: str, request: dict[str, Any]) -> str:
        """Commits a new job and queues it; returns only once it is on disk."""
        if self._queue.qsize() + self._reserved >= self.queue_max:
            raise ApiError(
                429,
                f"The job queue is full ({self.queue_max} jobs waiting); retry later",
                code="job_queue_full",
                headers=[("retry-after", "5")],
            )
        stored = self._for_storage(request)
        raw = orjson.dumps(stored)
        self._check_quota(owner, len(raw))
        job_id = new_job_id()
        self._reserved += 1
        self._active[owner] += 1
        self._bytes[owner] += len(raw)
        try:
            await self.store.write(
                insert_job,
                job_id,
                owner,
                kind,
                str(stored.get("model", "")),
                raw,
                self.store.clock(),
            )
        except StoreUnavailable as exc:
            self._active[owner] -= 1
            self._bytes[owner] -= len(raw)
            raise unavailable(exc) from None
        finally:
            self._reserved -= 1
        self._queue.put_nowait(job_id)
        self._move(None, "pending")
        return job_id

    async def get(self, owner: str, job_id: str) -> Job:
        if not valid_job_id(job_id):
            raise _no_job(job_id)
        try:
            job = await self.store.read(get_job, job_id, owner, self.store.clock())
        except StoreUnavailable as exc:
            raise unavailable(exc) from None
        if job is None:
            raise _no_job(job_id)
        return job

    async def cancel(self, owner: str, job_id: str) -> str:
        """Cancels a pending or running job (aborting its generation); returns its old status."""
        if not valid_job_id(job_id):
            raise _no_job(job_id)
        now = self.store.clock()
        try:
            before = await self.store.write(cancel_job, job_id, owner, now, self.store.ttl)
        except StoreUnavailable as exc:
            raise unavailable(exc) from None
        if before is None:
            raise _no_job(job_id)
        if before in ACTIVE:
            self._move(before, "cancelled")
            self._active[owner] -= 1
            task = self._running.get(job_id)
            if task is not None:
                task.cancel()
            elif before == "running":
                self._cancel_requested.add(job_id)
            self._ended(job_id)
            log.info("job cancelled", extra={"event": "job_cancelled", "job_id": job_id})
        return before

    # the workers

    async def _worker(self) -> None:
        while True:
            job_id = await self._queue.get()
            self._publish()
            try:
                await self._run(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job worker error", extra={"job_id": job_id})

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """A state transition the worker must not lose: retried ``write_retries`` times (backing
        off up to 2 s), then :class:`StoreUnavailable` is raised."""
        delay = 0.05
        for attempt in range(self.write_retries + 1):
            try:
                return await self.store.write(fn, *args)
            except StoreUnavailable as exc:
                if attempt == self.write_retries:
                    log.error(
                        "job store unavailable; giving up", extra={"event": "job_store_gave_up"}
                    )
                    raise
                log.warning("job store unavailable; retrying", extra={"event": "job_store_retry"})
                log.debug("job store error: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _give_up(self, job_id: str, exc: StoreUnavailable) -> bool:
        """Records that the job failed because the store refused its writes (the failure record
        is small and may fit where the result did not); False if even that cannot be written,
        and the job is left as the file has it, for the next start."""
        error = orjson.dumps(self._for_storage(_error_body(store_failed(exc))))
        try:
            return await self._write(fail_job, job_id, error, self.store.clock(), self.store.ttl)
        except StoreUnavailable:
            log.error(
                "job left for the next start: the store refuses every write",
                extra={"event": "job_store_gave_up", "job_id": job_id},
            )
            return False

    async def _run(self, job_id: str) -> None:
        try:
            claimed = await self._write(claim_job, job_id, self.store.clock())
        except StoreUnavailable as exc:
            if await self._give_up(job_id, exc):
                self._move("pending", "failed")
            self._ended(job_id)
            return
        if claimed is None:
            return  # cancelled (or purged) while waiting
        self._move("pending", "running")
        kind, request, owner = claimed
        started = time.perf_counter()
        task = asyncio.ensure_future(self.run(job_id, kind, orjson.loads(request)))
        self._running[job_id] = task
        if job_id in self._cancel_requested:
            self._cancel_requested.discard(job_id)
            task.cancel()
        result: bytes | None = None
        error: bytes | None = None
        try:
            body = await task
            status = "succeeded"
            result = orjson.dumps(self._for_storage(body))
            if self.max_result_bytes and len(result) > self.max_result_bytes:
                status = "failed"
                error = orjson.dumps(
                    self._for_storage(
                        _error_body(result_too_large(len(result), self.max_result_bytes))
                    )
                )
                result = None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # shutting down: stop() puts the job back, to run at the next start
            metrics.JOB_DURATION.labels("cancelled").observe(time.perf_counter() - started)
            return
        except ApiError as err:
            status = "failed"
            error = orjson.dumps(self._for_storage(_error_body(err)))
        except Exception:
            log.exception("job failed", extra={"job_id": job_id})
            status = "failed"
            error = orjson.dumps(
                self._for_storage(_error_body(ApiError(502, "Backend error while running the job")))
            )
        finally:
            self._running.pop(job_id, None)
        try:
            stored = await self._write(
                finish_job, job_id, status, result, error, self.store.clock(), self.store.ttl
            )
        except StoreUnavailable as exc:
            status, result, error = "failed", None, None
            stored = await self._give_up(job_id, exc)
        self._cancel_requested.discard(job_id)
        self._ended(job_id)
        if stored:
            self._active[owner] -= 1
            self._bytes[owner] += len(result or error or b"")
            self._move("running", status)
            metrics.JOB_DURATION.labels(status).observe(time.perf_counter() - started)

    def _ended(self, job_id: str) -> None:
        event = self._events.get(job_id)
        if event is not None:
            event.set()
        if self.on_end is not None:
            self.on_end(job_id)

    async def wait(self, owner: str, job_id: str, timeout: float) -> Job:
        """The job once it has ended, or as it is after ``timeout`` seconds."""
        event = self._events.setdefault(job_id, asyncio.Event())
        self._waiting[job_id] += 1
        try:
            job = await self.get(owner, job_id)
            if job.status in ACTIVE:
                with suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout)
                job = await self.get(owner, job_id)
            return job
        finally:
            self._waiting[job_id] -= 1
            if self._waiting[job_id] <= 0:
                del self._waiting[job_id]
                self._events.pop(job_id, None)

    async def _purger(self) -> None:
        interval = max(0.2, min(60.0, self.store.ttl / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                gone = await self.store.call(purge_jobs, self.store.clock())
                if gone:
                    await self.store.call(compact)
                    log.info("jobs purged", extra={"event": "jobs_purged", "count": gone})
                await self._refresh_counts()
                await self._refresh_usage()
            except StoreUnavailable:
                log.warning("job purge skipped: store unavailable", extra={"event": "purge_skip"})
