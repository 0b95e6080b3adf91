"""The durable job table: its SQL, the operator's offline functions, and the group-committing
:class:`JobStore` the server uses.

Durability rules (see the jobs documentation):

* a job is answered 202 only once its row is committed (WAL, ``synchronous=FULL``), so after a
  crash at any moment every accepted job is still on disk;
* jobs found ``running`` at start-up were interrupted and run again (at-least-once), unless they
  were interrupted ``max_attempts`` times already: such a job is the likely cause (a generation
  that brings the process down) and fails with ``job_crashed`` instead of crashing it again;
* the database file is never recreated behind the operator's back (:mod:`iir.store.sqlite`).

Blocking SQLite calls never run on the event loop: writes go to one writer thread and connection
(group-committed, so concurrent jobs share an fsync), reads to one reader thread and connection
(in WAL mode they never wait for a commit).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from iir.store.base import Claimed
from iir.store.sqlite import (
    SCHEMA_VERSION,
    StoreError,
    StoreUnavailable,
    check_database,
    connect,
    db_path,
    explain,
)

log = logging.getLogger("iir.store.jobs")

STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("pending", "running")
_JOB_ID = re.compile(r"job_[0-9a-f]{32}")

T = TypeVar("T")
Clock = Callable[[], float]


def new_job_id() -> str:
    """128 bits from the OS CSPRNG: ids cannot be guessed or enumerated."""
    return "job_" + secrets.token_hex(16)


def valid_job_id(job_id: str) -> bool:
    return _JOB_ID.fullmatch(job_id) is not None


# --- the database ------------------------------------------------------------------------------


@dataclass(slots=True)
class Job:
    id: str
    owner: str
    kind: str
    status: str
    model: str
    request: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None

    def summary(self) -> dict[str, Any]:
        """What the operator CLI prints: never the payloads."""
        return {
            "job_id": self.id,
            "owner": self.owner,
            "kind": self.kind,
            "status": self.status,
            "model": self.model,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "expires_at": self.expires_at,
        }


_COLUMNS = (
    "id, owner, kind, status, model, request, result, error, attempts, "
    "created_at, started_at, finished_at, expires_at"
)


def _job(row: tuple[Any, ...]) -> Job:
    return Job(
        id=row[0],
        owner=row[1],
        kind=row[2],
        status=row[3],
        model=row[4],
        request=orjson.loads(row[5]),
        result=orjson.loads(row[6]) if row[6] is not None else None,
        error=orjson.loads(row[7]) if row[7] is not None else None,
        attempts=row[8],
        created_at=row[9],
        started_at=row[10],
        finished_at=row[11],
        expires_at=row[12],
    )


# Plain functions over a connection: the server runs them on its database thread, the operator
# CLI runs them directly.


def insert_job(
    conn: sqlite3.Connection,
    job_id: str,
    owner: str,
    kind: str,
    model: str,
    request: bytes,
    now: float,
) -> None:
    conn.execute(
        "INSERT INTO jobs (id, owner, kind, status, model, request, created_at) "
        "VALUES (?, ?, ?, 'pending', ?, ?, ?)",
        (job_id, owner, kind, model, request, now),
    )


def get_job(conn: sqlite3.Connection, job_id: str, owner: str | None, now: float) -> Job | None:
    """The job, or None when absent, expired, or owned by another key (``owner`` None: any)."""
    sql = f"SELECT {_COLUMNS} FROM jobs WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)"
    args: tuple[Any, ...] = (job_id, now)
    if owner is not None:
        sql += " AND owner = ?"
        args += (owner,)
    row = conn.execute(sql, args).fetchone()
    return _job(row) if row else None


def claim_job(conn: sqlite3.Connection, job_id: str, now: float) -> tuple[str, bytes, str] | None:
    """pending → running, counting the attempt; (kind, request, owner), or None if the job was
    cancelled or purged meanwhile."""
    row = conn.execute(
        "UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1 "
        "WHERE id = ? AND status = 'pending' RETURNING kind, request, owner",
        (now, job_id),
    ).fetchone()
    return (row[0], row[1], row[2]) if row else None


def release_jobs(conn: sqlite3.Connection, job_ids: list[str]) -> int:
    """running → pending for jobs a clean shutdown interrupted: run again at the next start,
    and the interruption does not count as an attempt (only crashes do)."""
    n = 0
    for job_id in job_ids:
        n += conn.execute(
            "UPDATE jobs SET status = 'pending', attempts = max(0, attempts - 1) "
            "WHERE id = ? AND status = 'running'",
            (job_id,),
        ).rowcount
    return n


def fail_job(conn: sqlite3.Connection, job_id: str, error: bytes, now: float, ttl: float) -> bool:
    """pending or running → failed with ``error`` (what a worker records when it cannot record
    the outcome itself); False when the job had ended already."""
    cur = conn.execute(
        "UPDATE jobs SET status = 'failed', result = NULL, error = ?, finished_at = ?, "
        "expires_at = ? WHERE id = ? AND status IN ('pending', 'running')",
        (error, now, now + ttl, job_id),
    )
    return cur.rowcount == 1


def finish_job(
    conn: sqlite3.Connection,
    job_id: str,
    status: str,
    result: bytes | None,
    error: bytes | None,
    now: float,
    ttl: float,
) -> bool:
    """running → succeeded/failed; False when a cancel got there first."""
    cur = conn.execute(
        "UPDATE jobs SET status = ?, result = ?, error = ?, finished_at = ?, expires_at = ? "
        "WHERE id = ? AND status = 'running'",
        (status, result, error, now, now + ttl, job_id),
    )
    return cur.rowcount == 1


def cancel_job(
    conn: sqlite3.Connection, job_id: str, owner: str | None, now: float, ttl: float
) -> str | None:
    """Cancels a pending or running job; returns the status it had (None: no such job).

    Call it inside a transaction (the server's write batches are one)."""
    job = get_job(conn, job_id, owner, now)
    if job is not None and job.status in ACTIVE:
        conn.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?, expires_at = ? WHERE id = ?",
            (now, now + ttl, job_id),
        )
    return job.status if job else None


def recover_jobs(
    conn: sqlite3.Connection,
    max_attempts: int = 0,
    crashed: bytes = b"{}",
    now: float = 0.0,
    ttl: float = 0.0,
) -> tuple[list[str], list[str]]:
    """Puts interrupted jobs back in the queue, except those interrupted ``max_attempts`` times
    (0: no limit), which fail with the error ``crashed``. Returns (every pending id, oldest
    first; the ids of the jobs failed)."""
    failed: list[str] = []
    if max_attempts:
        failed = [
            r[0]
            for r in conn.execute(
                "UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, expires_at = ? "
                "WHERE status = 'running' AND attempts >= ? RETURNING id",
                (crashed, now, now + ttl, max_attempts),
            ).fetchall()
        ]
    conn.execute("UPDATE jobs SET status = 'pending' WHERE status = 'running'")
    rows = conn.execute(
        "SELECT id FROM jobs WHERE status = 'pending' ORDER BY created_at, rowid"
    ).fetchall()
    return [r[0] for r in rows], failed


def purge_jobs(conn: sqlite3.Connection, now: float) -> int:
    return conn.execute(
        "DELETE FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
    ).rowcount


def compact(conn: sqlite3.Connection) -> None:
    """Gives the pages purged jobs freed back to the filesystem (the file is in
    ``auto_vacuum=INCREMENTAL`` mode), then checkpoints so the database file shrinks now. Run
    outside a transaction. Through ``execute`` the vacuum frees one page per call: only a script
    steps it to the end."""
    conn.executescript("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(PASSIVE);")


def usage_by_owner(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    """owner -> (jobs not ended, bytes stored in requests, results and errors)."""
    rows = conn.execute(
        "SELECT owner, sum(status IN ('pending', 'running')), "
        "sum(length(request) + coalesce(length(result), 0) + coalesce(length(error), 0)) "
        "FROM jobs GROUP BY owner"
    ).fetchall()
    return {r[0]: (int(r[1] or 0), int(r[2] or 0)) for r in rows}


def count_jobs(conn: sqlite3.Connection, now: float) -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, count(*) FROM jobs WHERE expires_at IS NULL OR expires_at > ? "
        "GROUP BY status",
        (now,),
    ).fetchall()
    return {s: 0 for s in STATUSES} | {r[0]: r[1] for r in rows}


def list_job_rows(
    conn: sqlite3.Connection, status: str | None, limit: int, now: float
) -> list[Job]:
    sql = f"SELECT {_COLUMNS} FROM jobs WHERE (expires_at IS NULL OR expires_at > ?)"
    args: tuple[Any, ...] = (now,)
    if status:
        sql += " AND status = ?"
        args += (status,)
    sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
    return [_job(r) for r in conn.execute(sql, (*args, limit)).fetchall()]


# --- the operator's view (``iir jobs list|show|cancel``) -------------------------------------------


def _operator_conn(data_dir: Path) -> sqlite3.Connection:
    path = db_path(data_dir)
    if not path.is_file():
        raise StoreError(f"no job database at {str(path)!r} (is IIR_DATA_DIR right?)")
    try:
        conn = connect(path)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StoreError(explain(f"job database {str(path)!r}", exc)) from None
    if version != SCHEMA_VERSION:
        conn.close()
        raise StoreError(
            f"job database {str(path)!r} has schema version {version}, expected "
            f"{SCHEMA_VERSION}; start the server once to migrate it"
        )
    return conn


def list_jobs(data_dir: Path, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Newest first, summaries only (no payloads)."""
    if status is not None and status not in STATUSES:
        raise StoreError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
    conn = _operator_conn(data_dir)
    try:
        return [j.summary() for j in list_job_rows(conn, status, limit, time.time())]
    finally:
        conn.close()


def show_job(data_dir: Path, job_id: str) -> dict[str, Any] | None:
    """One job with its (scrubbed) request, result and error; None when absent."""
    conn = _operator_conn(data_dir)
    try:
        job = get_job(conn, job_id, None, time.time())
    finally:
        conn.close()
    if job is None:
        return None
    return job.summary() | {"request": job.request, "result": job.result, "error": job.error}


def cancel_job_offline(data_dir: Path, job_id: str, ttl: float = 86400.0) -> str | None:
    """Marks a job cancelled in the file. A running server drops the result of a generation it
    is running for that job, but the generation itself runs to its end."""
    conn = _operator_conn(data_dir)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = cancel_job(conn, job_id, None, time.time(), ttl)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return before
    except sqlite3.DatabaseError as exc:
        raise StoreError(explain(f"job database {str(db_path(data_dir))!r}", exc)) from None
    finally:
        conn.close()


def _claim(conn: sqlite3.Connection, job_id: str, now: float) -> Claimed | None:
    claimed = claim_job(conn, job_id, now)
    if claimed is None:
        return None
    attempts = conn.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    return Claimed(job_id, claimed[0], claimed[1], claimed[2], attempts)


class JobStore:
    """The server's handle on the database: async calls onto a writer and a reader thread.

    Writes are group-committed: those that arrive while the thread is busy go into the next
    transaction together, so concurrent jobs share one fsync. Each write still has its own
    savepoint, and no caller hears "done" before the transaction holding its write is durable.

    The job pool speaks to it through :class:`iir.store.base.JobTable` (the methods after
    :meth:`write`), as to the fleet's shared store.
    """

    #: This box's own file: nobody else claims, cancels or finishes its jobs.
    shared = False

    def __init__(
        self, path: Path, ttl: float, clock: Clock = time.time, timeout: float = 5.0
    ) -> None:
        self.path = path
        self.ttl = ttl
        self.clock = clock
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="iir-jobs-db")
        # Reads get their own connection and thread: in WAL mode they never wait for a commit's
        # fsync, so polling does not queue behind writes.
        self._reader: sqlite3.Connection | None = None
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="iir-jobs-db-read")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._batch: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flush_queued = False

    @property
    def where(self) -> str:
        return f"job database {str(self.path)!r}"

    def _open(self) -> None:
        check_database(self.path, self.timeout)
        self._conn = connect(self.path, self.timeout)

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(self._thread, self._open)

        def open_reader() -> None:
            self._reader = connect(self.path, self.timeout)

        try:
            await self._loop.run_in_executor(self._read_thread, open_reader)
        except sqlite3.DatabaseError as exc:
            raise StoreError(explain(f"job database {str(self.path)!r}", exc)) from None

    async def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        def _close_reader() -> None:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, _close)
        await loop.run_in_executor(self._read_thread, _close_reader)
        self._thread.shutdown(wait=False)
        self._read_thread.shutdown(wait=False)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs ``fn(conn, *args)`` on the writing connection, outside any batch (autocommit)."""

        def run() -> T:
            if self._conn is None:
                raise StoreUnavailable("the job database is not open")
            try:
                return fn(self._conn, *args)
            except sqlite3.Error as exc:
                raise StoreUnavailable(str(exc)) from None

        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs the read-only ``fn(conn, *args)`` on the reading connection."""

        def run() -> T:
            if self._reader is None:
                raise StoreUnavailable("the job database is not open")
            try:
                return fn(self._reader, *args)
            except sqlite3.Error as exc:
                raise StoreUnavailable(str(exc)) from None

        return await asyncio.get_running_loop().run_in_executor(self._read_thread, run)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs ``fn(conn, *args)`` in the next group commit; returns once that is committed
        (``synchronous=FULL``: on disk, not just in the operating system's cache)."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._batch.append((fn, args, fut))
            queue = not self._flush_queued
            self._flush_queued = True
        if queue:
            self._thread.submit(self._flush)
        return await fut

    def _flush(self) -> None:
        with self._lock:
            batch, self._batch = self._batch, []
            self._flush_queued = False
        if not batch:
            return
        outcomes: list[tuple[Any, BaseException | None]] = []
        conn = self._conn
        try:
            if conn is None:
                raise StoreUnavailable("the job database is not open")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreUnavailable(str(exc)) from None
            for fn, args, _ in batch:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((fn(conn, *args), None))
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    failed: Exception = (
                        StoreUnavailable(str(exc)) if isinstance(exc, sqlite3.Error) else exc
                    )
                    outcomes.append((None, failed))
                conn.execute("RELEASE op")
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise StoreUnavailable(str(exc)) from None
        except Exception as exc:
            failure = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(str(exc))
            if conn is not None and conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            outcomes = [(None, failure)] * len(batch)
        assert self._loop is not None
        for (_, _, fut), (value, err) in zip(batch, outcomes, strict=True):
            self._loop.call_soon_threadsafe(_settle, fut, value, err)

    # --- the job table (iir.store.base.JobTable) ------------------------------------------------

    async def insert(self, job_id: str, owner: str, kind: str, model: str, request: bytes) -> None:
        await self.write(insert_job, job_id, owner, kind, model, request, self.clock())

    async def get(self, job_id: str, owner: str | None) -> Job | None:
        return await self.read(get_job, job_id, owner, self.clock())

    async def cancel(self, job_id: str, owner: str | None) -> str | None:
        return await self.write(cancel_job, job_id, owner, self.clock(), self.ttl)

    async def claim(self, job_id: str | None = None) -> Claimed | None:
        if job_id is None:
            raise ValueError("this box's store claims the jobs its own queue names")
        return await self.write(_claim, job_id, self.clock())

    async def renew(self, job_ids: list[str]) -> set[str]:
        return set(job_ids)  # one box: no lease, nobody else to take a job over

    async def finish(
        self, job_id: str, status: str, result: bytes | None, error: bytes | None
    ) -> bool:
        return await self.write(finish_job, job_id, status, result, error, self.clock(), self.ttl)

    async def fail(self, job_id: str, error: bytes) -> bool:
        return await self.write(fail_job, job_id, error, self.clock(), self.ttl)

    async def release(self, job_ids: list[str]) -> int:
        return await self.write(release_jobs, job_ids)

    async def recover(self, max_attempts: int, crashed: bytes) -> tuple[list[str], list[str]]:
        return await self.call(recover_jobs, max_attempts, crashed, self.clock(), self.ttl)

    async def purge(self) -> int:
        return await self.call(purge_jobs, self.clock())

    async def compact(self) -> None:
        await self.call(compact)

    async def counts(self) -> dict[str, int]:
        return await self.read(count_jobs, self.clock())

    async def usage(self) -> dict[str, tuple[int, int]]:
        return await self.read(usage_by_owner)

    async def list(self, status: str | None, limit: int) -> list[Job]:
        return await self.read(list_job_rows, status, limit, self.clock())


def _settle(fut: asyncio.Future[Any], value: Any, err: BaseException | None) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(value)
