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

The store is either this box's SQLite file or a PostgreSQL database shared by a fleet
(:mod:`iir.store.base` is the interface). With a shared store, every box's workers take the
oldest pending job whoever accepted it; the jobs this box runs keep their leases renewed (every
third of the lease), which is also how a cancel made on another box reaches a run here; jobs
whose box died are put back in the queue by whichever box notices first; and a long poll reads
the store a few times a second, since the job may end on another box.
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
from iir.store.base import Claimed, JobTable
from iir.store.jobs import ACTIVE, STATUSES, Job, new_job_id, valid_job_id
from iir.store.sqlite import StoreError, StoreUnavailable

log = logging.getLogger("iir.service.jobs")

T = TypeVar("T")
#: ``run(job_id, kind, request) -> result``: what running a job means.
Run = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
#: The secret scrubber's signature (``iir.policy.scrub.Scrubber.scrub``): (scrubbed object, counts).
Scrub = Callable[[Any], tuple[Any, Any]]

#: A shared store: an idle worker looks for work elsewhere's at most this many seconds apart (a job
#: submitted here wakes this box's workers at once).
IDLE_POLL_MAX = 1.0
#: A shared store: how often a long poll reads the job, which may end on another box.
WAIT_POLL = 0.25


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
        store: JobTable,
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
        lease: float = 30.0,
    ) -> None:
        self.store = store
        #: A shared store's lease on a running job: renewed every third of it.
        self.lease = lease
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
        # A shared store: set when there may be work to take (a submission here, jobs put back).
        self._wake = asyncio.Event()
        # IIR's own words, no client text: nothing for the scrubber
        self._crashed = orjson.dumps(_error_body(crashed_error(max_attempts)))

    # lifecycle

    async def start(self) -> None:
        await self.store.open()
        try:
            pending = await self._recover()
            await self._refresh_counts()
            await self._refresh_usage()
        except StoreUnavailable as exc:
            with suppress(Exception):
                await self.store.close()
            raise StoreError(f"{self.store.where}: {exc}") from None
        if not self.store.shared:  # a shared store's workers take what is pending themselves
            for job_id in pending:
                self._queue.put_nowait(job_id)
        self._tasks = [asyncio.ensure_future(self._worker()) for _ in range(self.concurrency)]
        self._tasks.append(asyncio.ensure_future(self._purger()))
        if self.store.shared:
            self._tasks.append(asyncio.ensure_future(self._keep_leases()))
        self._started = True

    async def _recover(self) -> list[str]:
        """Interrupted jobs back in the queue (this box's file: those it was running when it
        stopped; a shared store: those whose box stopped renewing their lease)."""
        pending, failed = await self.store.recover(self.max_attempts, self._crashed)
        if pending:
            log.info("jobs recovered", extra={"event": "jobs_recovered", "count": len(pending)})
        for job_id in failed:
            log.error(
                "job failed: the server stopped while it ran, too many times",
                extra={"event": "job_crashed", "job_id": job_id},
            )
        return pending

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
                    await self.store.release(interrupted)
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
        metrics.JOB_QUEUE_DEPTH.set(self._waiting_jobs())

    def _waiting_jobs(self) -> int:
        """Jobs waiting for a worker: this box's queue, or the shared store's pending jobs (as
        of the last count)."""
        return max(0, self._counts["pending"]) if self.store.shared else self._queue.qsize()

    async def _refresh_counts(self) -> None:
        self._counts = Counter(await self.store.counts())
        self._publish()

    async def _refresh_usage(self) -> None:
        usage = await self.store.usage()
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
        if self._waiting_jobs() + self._reserved >= self.queue_max:
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
            await self.store.insert(job_id, owner, kind, str(stored.get("model", "")), raw)
        except StoreUnavailable as exc:
            self._active[owner] -= 1
            self._bytes[owner] -= len(raw)
            raise unavailable(exc) from None
        finally:
            self._reserved -= 1
        if self.store.shared:
            self._wake.set()
        else:
            self._queue.put_nowait(job_id)
        self._move(None, "pending")
        return job_id

    async def get(self, owner: str, job_id: str) -> Job:
        if not valid_job_id(job_id):
            raise _no_job(job_id)
        try:
            job = await self.store.get(job_id, owner)
        except StoreUnavailable as exc:
            raise unavailable(exc) from None
        if job is None:
            raise _no_job(job_id)
        return job

    async def cancel(self, owner: str, job_id: str) -> str:
        """Cancels a pending or running job (aborting its generation); returns its old status."""
        if not valid_job_id(job_id):
            raise _no_job(job_id)
        try:
            before = await self.store.cancel(job_id, owner)
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
            elif before == "running" and not self.store.shared:
                # Claimed here a moment ago, its run not started yet. (A shared store's job
                # running on any box, this one included, stops at its next lease renewal.)
                self._cancel_requested.add(job_id)
            self._ended(job_id)
            log.info("job cancelled", extra={"event": "job_cancelled", "job_id": job_id})
        return before

    # the workers

    async def _worker(self) -> None:
        while True:
            if self.store.shared:
                claimed = await self._next_shared()
                job_id = claimed.id
            else:
                job_id = await self._queue.get()
            self._publish()
            try:
                if self.store.shared:
                    await self._execute(claimed)
                else:
                    await self._run(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job worker error", extra={"job_id": job_id})

    async def _next_shared(self) -> Claimed:
        """The oldest pending job of the shared store, whichever box accepted it; waits (woken
        by a submission here, or looking again at most :data:`IDLE_POLL_MAX` apart) when there
        is none."""
        delay = 0.05
        while True:
            self._wake.clear()
            try:
                claimed = await self.store.claim()
            except StoreUnavailable as exc:
                log.debug("job store unavailable while looking for work: %s", exc)
                claimed = None
            if claimed is not None:
                return claimed
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
                delay = 0.05
                continue
            delay = min(delay * 2, IDLE_POLL_MAX)

    async def _write(self, op: Callable[[], Awaitable[T]]) -> T:
        """A state transition the worker must not lose: retried ``write_retries`` times (backing
        off up to 2 s), then :class:`StoreUnavailable` is raised."""
        delay = 0.05
        for attempt in range(self.write_retries + 1):
            try:
                return await op()
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
        and the job is left as the store has it, for the next start (or, on a shared store,
        for whichever box finds its lease lapsed)."""
        error = orjson.dumps(self._for_storage(_error_body(store_failed(exc))))
        try:
            return await self._write(lambda: self.store.fail(job_id, error))
        except StoreUnavailable:
            log.error(
                "job left for the next start: the store refuses every write",
                extra={"event": "job_store_gave_up", "job_id": job_id},
            )
            return False

    async def _run(self, job_id: str) -> None:
        try:
            claimed = await self._write(lambda: self.store.claim(job_id))
        except StoreUnavailable as exc:
            if await self._give_up(job_id, exc):
                self._move("pending", "failed")
            self._ended(job_id)
            return
        if claimed is None:
            return  # cancelled (or purged) while waiting
        await self._execute(claimed)

    async def _execute(self, claimed: Claimed) -> None:
        job_id, owner = claimed.id, claimed.owner
        self._move("pending", "running")
        started = time.perf_counter()
        task = asyncio.ensure_future(self.run(job_id, claimed.kind, orjson.loads(claimed.request)))
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
            stored = await self._write(lambda: self.store.finish(job_id, status, result, error))
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

    async def _keep_leases(self) -> None:
        """A shared store: renews the leases of the jobs running here, stops those this box no
        longer holds (cancelled on any box, or lapsed while the store was unreachable and taken
        by another box), and puts back in the queue the jobs of boxes that died."""
        while True:
            await asyncio.sleep(self.lease / 3)
            running = list(self._running)
            try:
                held = await self.store.renew(running)
                if await self._recover():
                    self._wake.set()
            except StoreUnavailable as exc:
                log.warning("job leases not renewed: store unavailable", extra={"reason": str(exc)})
                continue
            for job_id in running:
                task = self._running.get(job_id)
                if job_id not in held and task is not None:
                    log.info(
                        "job no longer held here (cancelled, or taken over); its run stops",
                        extra={"event": "job_lost", "job_id": job_id},
                    )
                    task.cancel()
                    self._ended(job_id)

    def _ended(self, job_id: str) -> None:
        event = self._events.get(job_id)
        if event is not None:
            event.set()
        if self.on_end is not None:
            self.on_end(job_id)

    async def wait(self, owner: str, job_id: str, timeout: float) -> Job:
        """The job once it has ended, or as it is after ``timeout`` seconds. This box's runs
        wake the wait at once; a shared store's job may end on another box, so it is also read
        every :data:`WAIT_POLL` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = self._events.setdefault(job_id, asyncio.Event())
        self._waiting[job_id] += 1
        try:
            job = await self.get(owner, job_id)
            while job.status in ACTIVE:
                left = deadline - loop.time()
                if left <= 0:
                    break
                step = min(left, WAIT_POLL) if self.store.shared else left
                if event.is_set() and self.store.shared:  # woke, but the job went on elsewhere
                    await asyncio.sleep(step)
                else:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(event.wait(), step)
                job = await self.get(owner, job_id)
                if not self.store.shared:
                    break
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
                gone = await self.store.purge()
                if gone:
                    await self.store.compact()
                    log.info("jobs purged", extra={"event": "jobs_purged", "count": gone})
                await self._refresh_counts()
                await self._refresh_usage()
            except StoreUnavailable:
                log.warning("job purge skipped: store unavailable", extra={"event": "purge_skip"})
