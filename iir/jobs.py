"""Async jobs: a durable SQLite job store, the worker pool that runs jobs, and their HTTP routes.

Durability rules (see README "Async jobs and /infer"):

* a job is answered 202 only once its row is committed (WAL, ``synchronous=FULL``), so after a
  crash at any moment every accepted job is still on disk;
* jobs found ``running`` at start-up were interrupted and run again (at-least-once);
* the database file is never recreated behind the operator's back: a corrupt or unwritable file
  stops start-up (:func:`check_database`), a locked or full one makes requests fail with 503.

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
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs

import orjson

from . import metrics
from .errors import ApiError, bad_request, not_found
from .http import Request, Response, json_response
from .protocol import ChatRequest, parse_chat_request

if TYPE_CHECKING:
    from .chat import ChatService

log = logging.getLogger("iir.jobs")

DB_NAME = "iir.db"
SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("pending", "running")
_JOB_ID = re.compile(r"job_[0-9a-f]{32}")

# Migration i takes the schema from version i to i + 1; each runs in one transaction.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE jobs (
        id          TEXT PRIMARY KEY,
        owner       TEXT NOT NULL,
        kind        TEXT NOT NULL,
        status      TEXT NOT NULL,
        model       TEXT NOT NULL,
        request     BLOB NOT NULL,
        result      BLOB,
        error       BLOB,
        attempts    INTEGER NOT NULL DEFAULT 0,
        created_at  REAL NOT NULL,
        started_at  REAL,
        finished_at REAL,
        expires_at  REAL
    );
    CREATE INDEX jobs_status ON jobs (status, created_at);
    CREATE INDEX jobs_expires ON jobs (expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX jobs_owner ON jobs (owner, created_at);
    """,
]

T = TypeVar("T")
Clock = Callable[[], float]
Shaper = Callable[[dict[str, Any]], dict[str, Any]]
# The secret scrubber's signature (``iir.scrub.Scrubber.scrub``): (scrubbed object, counts).
Scrub = Callable[[Any], tuple[Any, Any]]


class StoreError(Exception):
    """The database file cannot be used; start-up must stop (exit code 2)."""


class StoreUnavailable(Exception):
    """The database is locked, full or failing right now; the request gets a 503."""


def db_path(data_dir: Path) -> Path:
    return Path(data_dir) / DB_NAME


def new_job_id() -> str:
    """128 bits from the OS CSPRNG: ids cannot be guessed or enumerated."""
    return "job_" + secrets.token_hex(16)


def valid_job_id(job_id: str) -> bool:
    return _JOB_ID.fullmatch(job_id) is not None


# --- the database ------------------------------------------------------------------------------


def connect(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """Opens an existing or new database in WAL mode with fully synced commits."""
    conn = sqlite3.connect(
        str(path), timeout=timeout, isolation_level=None, check_same_thread=False
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL mode (journal mode is {mode})")
        conn.execute("PRAGMA synchronous=FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Brings the schema to :data:`SCHEMA_VERSION`; refuses a file from a newer IIR."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"schema version {version} is newer than this IIR understands ({SCHEMA_VERSION}); "
            "run the IIR release that wrote it"
        )
    while version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in MIGRATIONS[version].split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            version += 1
            conn.execute(f"PRAGMA user_version={version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return version


def check_database(path: Path, timeout: float = 5.0) -> None:
    """Validates (and migrates) the job database before serving; raises :class:`StoreError`.

    Checks that the file is a SQLite database that passes ``quick_check`` and that it can be
    written (a read-only file would otherwise only fail at the first job).
    """
    where = f"job database {str(path)!r}"
    if path.exists() and not path.is_file():
        raise StoreError(f"{where} is not a regular file")
    try:
        conn = connect(path, timeout)
    except sqlite3.DatabaseError as exc:
        raise StoreError(_explain(where, exc)) from None
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
        if [r[0] for r in rows] != ["ok"]:
            first = rows[0][0] if rows else "no answer"
            raise StoreError(f"{where} is corrupt ({first}); {_KEEP}")
        migrate(conn)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('last_start', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(time.time()),),
        )
    except sqlite3.DatabaseError as exc:
        raise StoreError(_explain(where, exc)) from None
    finally:
        conn.close()


_KEEP = "IIR never recreates it: move it aside or restore it from a backup, then start again"


def _explain(where: str, exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return f"{where} cannot be written ({text}); check its permissions and the disk"
    if "locked" in text or "busy" in text:
        return f"{where} is locked by another process ({text})"
    return f"{where} is not a usable SQLite database ({text}); {_KEEP}"


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


def claim_job(conn: sqlite3.Connection, job_id: str, now: float) -> tuple[str, bytes] | None:
    """pending → running; None if the job was cancelled or purged meanwhile."""
    row = conn.execute(
        "UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1 "
        "WHERE id = ? AND status = 'pending' RETURNING kind, request",
        (now, job_id),
    ).fetchone()
    return (row[0], row[1]) if row else None


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


def recover_jobs(conn: sqlite3.Connection) -> list[str]:
    """Puts interrupted jobs back in the queue; returns every pending id, oldest first."""
    conn.execute("UPDATE jobs SET status = 'pending' WHERE status = 'running'")
    rows = conn.execute(
        "SELECT id FROM jobs WHERE status = 'pending' ORDER BY created_at, rowid"
    ).fetchall()
    return [r[0] for r in rows]


def purge_jobs(conn: sqlite3.Connection, now: float) -> int:
    return conn.execute(
        "DELETE FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
    ).rowcount


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
        raise StoreError(_explain(f"job database {str(path)!r}", exc)) from None
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
        raise StoreError(_explain(f"job database {str(db_path(data_dir))!r}", exc)) from None
    finally:
        conn.close()


class JobStore:
    """The server's handle on the database: async calls onto a writer and a reader thread.

    Writes are group-committed: those that arrive while the thread is busy go into the next
    transaction together, so concurrent jobs share one fsync. Each write still has its own
    savepoint, and no caller hears "done" before the transaction holding its write is durable.
    """

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
        self._batch: list[
            tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any], bool]
        ] = []
        self._flush_queued = False

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
            raise StoreError(_explain(f"job database {str(self.path)!r}", exc)) from None

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

    async def write(self, fn: Callable[..., T], *args: Any, durable: bool = True) -> T:
        """Runs ``fn(conn, *args)`` in the next group commit; returns once that is committed.

        ``durable`` (the default) commits with ``synchronous=FULL``. Only a write whose loss in
        a power cut changes nothing may pass False: a batch of such writes alone skips the fsync
        (the next durable commit syncs them too, since the write-ahead log is sequential).
        """
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._batch.append((fn, args, fut, durable))
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
        relaxed = False
        try:
            if conn is None:
                raise StoreUnavailable("the job database is not open")
            relaxed = not any(item[3] for item in batch)
            try:
                if relaxed:
                    conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreUnavailable(str(exc)) from None
            for fn, args, _, _ in batch:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((fn(conn, *args), None))
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    err = StoreUnavailable(str(exc)) if isinstance(exc, sqlite3.Error) else exc
                    outcomes.append((None, err))
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
        finally:
            if relaxed and conn is not None:
                with suppress(sqlite3.Error):
                    conn.execute("PRAGMA synchronous=FULL")
        assert self._loop is not None
        for (_, _, fut, _), (value, err) in zip(batch, outcomes, strict=True):
            self._loop.call_soon_threadsafe(_settle, fut, value, err)


def _settle(fut: asyncio.Future[Any], value: Any, err: BaseException | None) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(value)


def unavailable(exc: StoreUnavailable) -> ApiError:
    return ApiError(
        503,
        f"The job store is unavailable right now ({exc}); nothing was accepted, retry shortly",
        code="job_store_unavailable",
        headers=[("retry-after", "1")],
    )


# --- the worker pool ---------------------------------------------------------------------------


def _error_body(err: ApiError) -> dict[str, Any]:
    return err.to_dict()["error"]


class JobPool:
    """Runs queued jobs through :class:`~iir.chat.ChatService`, ``concurrency`` at a time."""

    def __init__(
        self,
        store: JobStore,
        chat: ChatService,
        concurrency: int = 4,
        queue_max: int = 10000,
        scrub: Scrub | None = None,
    ) -> None:
        self.store = store
        self.scrub = scrub
        self.chat = chat
        self.concurrency = concurrency
        self.queue_max = queue_max
        # How each kind of job turns a chat.completion body into the result it stores.
        self.shapers: dict[str, Shaper] = {"chat": lambda body: body}
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
        try:
            pending = await self.store.call(recover_jobs)
        except StoreUnavailable as exc:
            raise StoreError(f"job database {str(self.store.path)!r}: {exc}") from None
        for job_id in pending:
            self._queue.put_nowait(job_id)
        if pending:
            log.info("jobs recovered", extra={"event": "jobs_recovered", "count": len(pending)})
        await self._refresh_counts()
        self._tasks = [asyncio.ensure_future(self._worker()) for _ in range(self.concurrency)]
        self._tasks.append(asyncio.ensure_future(self._purger()))
        self._started = True

    async def stop(self) -> None:
        """Stops the workers; a job they were running stays ``running`` and is run at restart."""
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

    # the API

    async def submit(self, owner: str, kind: str, chat: ChatRequest) -> str:
        """Commits a new job and queues it; returns only once it is on disk."""
        if self._queue.qsize() + self._reserved >= self.queue_max:
            raise ApiError(
                429,
                f"The job queue is full ({self.queue_max} jobs waiting); retry later",
                code="job_queue_full",
                headers=[("retry-after", "5")],
            )
        stored = self._for_storage(chat.model_dump(mode="json", exclude_unset=True))
        job_id = new_job_id()
        self._reserved += 1
        try:
            await self.store.write(
                insert_job,
                job_id,
                owner,
                kind,
                str(stored.get("model", "")),
                orjson.dumps(stored),
                self.store.clock(),
            )
        except StoreUnavailable as exc:
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

    async def _write(self, fn: Callable[..., T], *args: Any, durable: bool = True) -> T:
        """A state transition the worker must not lose: retried until the database takes it."""
        delay = 0.05
        while True:
            try:
                return await self.store.write(fn, *args, durable=durable)
            except StoreUnavailable as exc:
                log.warning("job store unavailable; retrying", extra={"event": "job_store_retry"})
                log.debug("job store error: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _run(self, job_id: str) -> None:
        # pending → running need not survive a power cut: a job found running at start-up is
        # put back to pending and run again anyway, so this commit skips the fsync.
        claimed = await self._write(claim_job, job_id, self.store.clock(), durable=False)
        if claimed is None:
            return  # cancelled (or purged) while waiting
        self._move("pending", "running")
        kind, request = claimed
        started = time.perf_counter()
        task = asyncio.ensure_future(self._execute(kind, request))
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
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # shutting down: the job stays running and is run again at start-up
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
        stored = await self._write(
            finish_job, job_id, status, result, error, self.store.clock(), self.store.ttl
        )
        self._cancel_requested.discard(job_id)
        self._ended(job_id)
        if stored:
            self._move("running", status)
            metrics.JOB_DURATION.labels(status).observe(time.perf_counter() - started)

    def _ended(self, job_id: str) -> None:
        event = self._events.get(job_id)
        if event is not None:
            event.set()

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

    async def _execute(self, kind: str, request: bytes) -> dict[str, Any]:
        chat = parse_chat_request(orjson.loads(request))
        shaper = self.shapers.get(kind)
        if shaper is None:
            raise ApiError(500, f"Unknown job kind {kind!r}")
        return shaper(await self.chat.complete(chat))

    async def _purger(self) -> None:
        interval = max(0.2, min(60.0, self.store.ttl / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                gone = await self.store.call(purge_jobs, self.store.clock())
                if gone:
                    log.info("jobs purged", extra={"event": "jobs_purged", "count": gone})
                await self._refresh_counts()
            except StoreUnavailable:
                log.warning("job purge skipped: store unavailable", extra={"event": "purge_skip"})

    # --- HTTP handlers -----------------------------------------------------------------------

    async def handle_submit(self, req: Request) -> Response:
        body = await req.json()
        chat = parse_chat_request(body)
        if chat.stream:
            raise bad_request(
                "Async jobs cannot stream; drop 'stream' or use POST /v1/chat/completions",
                param="stream",
            )
        req.state["model"] = chat.model
        job_id = await self.submit(req.key_id or "", "chat", chat)
        return accepted(job_id)

    async def handle_get(self, req: Request, job_id: str) -> Response:
        wait = _wait_param(req.query)
        if wait and valid_job_id(job_id):
            job = await self.wait(req.key_id or "", job_id, wait)
        else:
            job = await self.get(req.key_id or "", job_id)
        req.state["model"] = job.model
        headers = [("x-iir-job-status", job.status)]
        if job.status == "succeeded" and job.result is not None:
            return json_response(job.result, headers=headers)
        body: dict[str, Any] = {"job_id": job.id, "status": job.status}
        if job.status == "failed":
            body["error"] = job.error or _error_body(ApiError(500, "The job failed"))
        return json_response(body, headers=headers)

    async def handle_cancel(self, req: Request, job_id: str) -> Response:
        before = await self.cancel(req.key_id or "", job_id)
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


def accepted(job_id: str) -> Response:
    return json_response(
        {"job_id": job_id, "status": "pending"},
        status=202,
        headers=[
            ("location", f"/v1/async/chat/completions/{job_id}"),
            ("x-iir-job-status", "pending"),
        ],
    )


MAX_WAIT = 60.0


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


def _no_job(job_id: str) -> ApiError:
    shown = job_id if valid_job_id(job_id) else "(malformed id)"
    return not_found(f"No job {shown} for this API key", code="job_not_found")


JOB_SCHEMAS: dict[str, Any] = {
    "JobStatus": {
        "type": "object",
        "required": ["job_id", "status"],
        "properties": {
            "job_id": {"type": "string", "pattern": "^job_[0-9a-f]{32}$"},
            "status": {"enum": list(STATUSES)},
            "error": {
                "type": "object",
                "description": "Only for failed jobs: the error the synchronous call would give.",
            },
        },
    },
    "JobResult": {
        "description": "The chat.completion (or, for jobs submitted to /infer, the /infer "
        "answer) once the job succeeded (header x-iir-job-status: succeeded); otherwise the "
        "job's status.",
        "oneOf": [
            {"$ref": "#/components/schemas/ChatCompletion"},
            {"$ref": "#/components/schemas/InferResponse"},
            {"$ref": "#/components/schemas/JobStatus"},
        ],
    },
}
