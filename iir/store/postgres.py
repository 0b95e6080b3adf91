"""A PostgreSQL database shared by a fleet of boxes (``IIR_JOB_STORE_URL``): the connection pool
and the versioned schema.

Every table IIR keeps there is created by an entry of :data:`MIGRATIONS`; version ``i`` is the
schema after entry ``i - 1``, and ``iir_schema`` records each version applied. Whichever box starts
first applies what is missing, in one transaction under an advisory lock: the others wait for
the lock, then find nothing left to do. Entries are only ever appended (a release that adds a
table, such as stored Responses-API objects, adds one entry and a class over
:class:`Database` like :class:`iir.store.pgjobs.PgJobStore`); a database whose version is newer
than this release knows is refused, as the SQLite file is.

Times are the database server's clock (``now()``), never a box's: leases are compared across
boxes whose clocks may disagree. ``psycopg`` and ``psycopg_pool`` (the ``fleet`` extra) are
imported only when this module is used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, TypeVar

from iir.store.sqlite import StoreError, StoreUnavailable

T = TypeVar("T")

#: Arbitrary, fixed: the key of the advisory lock migrations run under.
MIGRATION_LOCK = 0x11_52_4A_0B

MIGRATIONS: list[str] = [
    # 1: async jobs (iir.store.pgjobs). ``seq`` orders jobs created in the same microsecond;
    # ``box`` and ``lease_until`` say which box runs a job and until when its lease holds.
    """
    CREATE TABLE jobs (
        id          text PRIMARY KEY,
        owner       text NOT NULL,
        kind        text NOT NULL,
        status      text NOT NULL,
        model       text NOT NULL,
        request     bytea NOT NULL,
        result      bytea,
        error       bytea,
        attempts    integer NOT NULL DEFAULT 0,
        created_at  double precision NOT NULL,
        started_at  double precision,
        finished_at double precision,
        expires_at  double precision,
        seq         bigserial,
        box         text,
        lease_until double precision
    );
    CREATE INDEX jobs_pending ON jobs (created_at, seq) WHERE status = 'pending';
    CREATE INDEX jobs_leases ON jobs (lease_until) WHERE status = 'running';
    CREATE INDEX jobs_expires ON jobs (expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX jobs_owner ON jobs (owner, created_at);
    """,
    # 2: stored Responses-API objects (iir.store.pgresponses), as the SQLite file's table.
    """
    CREATE TABLE responses (
        id          text PRIMARY KEY,
        owner       text NOT NULL,
        job_id      text,
        status      text NOT NULL,
        model       text NOT NULL,
        request     bytea NOT NULL,
        response    bytea NOT NULL,
        created_at  double precision NOT NULL,
        expires_at  double precision NOT NULL
    );
    CREATE INDEX responses_expires ON responses (expires_at);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

#: The database's clock, in seconds since the epoch.
NOW = "extract(epoch from clock_timestamp())::double precision"


class Database:
    """A pooled async connection to one PostgreSQL database."""

    def __init__(self, url: str, timeout: float = 5.0, max_size: int = 16) -> None:
        import psycopg
        from psycopg_pool import AsyncConnectionPool, PoolTimeout

        from iir.store.state import redacted

        self.url = url
        self.where = f"job store {redacted(url)}"
        self.timeout = timeout
        self._errors: tuple[type[BaseException], ...] = (
            psycopg.OperationalError,
            psycopg.errors.AdminShutdown,
            PoolTimeout,
            OSError,
        )
        self._broken: tuple[type[BaseException], ...] = (psycopg.OperationalError,)
        self.pool: Any = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=timeout,
            # A server that restarted leaves every pooled connection broken: :meth:`run` drops
            # them and tries once more on a fresh one.
            reconnect_timeout=max(timeout, 60.0),
            kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout))},
        )

    async def open(self, upgrade: bool = True) -> None:
        """Opens the pool and brings the schema up to date (``upgrade`` false: only checks that
        it is; the operator's commands never change a schema); :class:`StoreError` if not."""
        try:
            await self.pool.open(wait=True, timeout=self.timeout)
        except self._errors as exc:
            await self.pool.close()
            raise StoreError(f"{self.where} cannot be reached ({type(exc).__name__})") from None
        try:
            await self.run(migrate if upgrade else check_version)
        except StoreUnavailable as exc:
            await self.pool.close()
            raise StoreError(f"{self.where}: {exc}") from None
        except StoreError:
            await self.pool.close()
            raise

    async def close(self) -> None:
        await self.pool.close()

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``await fn(conn)`` on a pooled connection; a connection the server dropped (it
        restarted) is replaced once. :class:`StoreUnavailable` when the server cannot be used."""
        for attempt in (1, 2):
            try:
                async with self.pool.connection() as conn:
                    return await fn(conn)
            except self._broken as exc:
                if attempt == 2:
                    raise StoreUnavailable(_reason(exc)) from None
                # The server went away under the pool: every idle connection is as dead as
                # this one. Drop them all (one cheap check each) before the second try.
                with suppress(*self._errors):
                    await self.pool.check()
            except self._errors as exc:
                raise StoreUnavailable(_reason(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover


def _reason(exc: BaseException) -> str:
    """What went wrong, without the server's message (it may quote data)."""
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}{f' ({state})' if state else ''}"


async def migrate(conn: Any) -> int:
    """Applies the missing :data:`MIGRATIONS` in one transaction under the advisory lock."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS iir_schema ("
            " version integer PRIMARY KEY,"
            f" applied_at double precision NOT NULL DEFAULT {NOW})"
        )
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM iir_schema")
        row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the job store's schema version {version} is newer than this IIR understands "
                f"({SCHEMA_VERSION}); upgrade this box to the release the others run"
            )
        while version < SCHEMA_VERSION:
            await conn.execute(MIGRATIONS[version])
            version += 1
            await conn.execute("INSERT INTO iir_schema (version) VALUES (%s)", (version,))
    return version


async def check_version(conn: Any) -> int:
    """The schema's version, if it is this release's; :class:`StoreError` otherwise."""
    cur = await conn.execute("SELECT to_regclass('iir_schema') IS NOT NULL")
    row = await cur.fetchone()
    version = 0
    if row and row[0]:
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM iir_schema")
        row = await cur.fetchone()
        version = int(row[0]) if row else 0
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"the job store's schema version is {version}, this IIR's is {SCHEMA_VERSION}; "
            "start a box of this release once to create or migrate it"
        )
    return version
