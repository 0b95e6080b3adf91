"""The job table on PostgreSQL, shared by a fleet of boxes (``IIR_JOB_STORE_URL``).

The same job semantics as the SQLite store (:mod:`iir.store.jobs`): a job is answered 202 only
once its row is committed; owners see only their own jobs; payloads arrive scrubbed; finished
jobs expire after the TTL. What a fleet adds:

* any box's workers take the oldest pending job with ``FOR UPDATE SKIP LOCKED``, so two boxes
  never take the same job and never wait for each other;
* a running job holds a lease (``IIR_JOB_LEASE_SECONDS``) that the box running it renews; a box
  that dies (``kill -9``, power) stops renewing, and once the lease has lapsed any box puts the
  job back in the queue (:meth:`PgJobStore.recover`), where it runs again, counted against the
  job's attempts: a job that has used them all fails with ``job_crashed`` instead;
* a box only finishes a job it still holds: one whose lease lapsed and went to another box is
  that box's to finish;
* a job cancelled on one box stops on the box running it at that box's next renewal.

Every time is the database server's clock.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Any

from iir.store.base import Claimed
from iir.store.jobs import _COLUMNS, ACTIVE, STATUSES, Job, _job
from iir.store.postgres import NOW, Database
from iir.store.sqlite import StoreError, StoreUnavailable


def box_id() -> str:
    """This process among the fleet's: host, process and a random part (a restarted box is a
    new one, whatever its pid)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


class PgJobStore:
    """The job table on a shared PostgreSQL database."""

    #: Other boxes use the same table: jobs may be claimed, cancelled and finished elsewhere.
    shared = True

    def __init__(
        self, url: str, ttl: float, lease: float = 30.0, timeout: float = 5.0, max_size: int = 16
    ) -> None:
        self.db = Database(url, timeout, max_size)
        self.where = self.db.where
        self.ttl = ttl
        self.lease = lease
        self.box = box_id()

    async def open(self, upgrade: bool = True) -> None:
        await self.db.open(upgrade)

    async def close(self) -> None:
        await self.db.close()

    async def _one(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        async def q(conn: Any) -> tuple[Any, ...] | None:
            cur = await conn.execute(sql, args)
            row: tuple[Any, ...] | None = await cur.fetchone()
            return row

        return await self.db.run(q)

    async def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        async def q(conn: Any) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, args)
            rows: list[tuple[Any, ...]] = await cur.fetchall()
            return rows

        return await self.db.run(q)

    # --- the API's side -----------------------------------------------------------------------

    async def insert(self, job_id: str, owner: str, kind: str, model: str, request: bytes) -> None:
        """Committed (autocommit) before it returns. Tried again on a fresh connection when the
        first was dropped: the id is new, so a second insert of a row that did land is a no-op."""
        await self._one(
            "INSERT INTO jobs (id, owner, kind, status, model, request, created_at) "
            f"VALUES (%s, %s, %s, 'pending', %s, %s, {NOW}) ON CONFLICT (id) DO NOTHING "
            "RETURNING 1",
            (job_id, owner, kind, model, request),
        )

    async def get(self, job_id: str, owner: str | None) -> Job | None:
        row = await self._one(
            f"SELECT {_COLUMNS} FROM jobs WHERE id = %s AND (%s::text IS NULL OR owner = %s) "
            f"AND (expires_at IS NULL OR expires_at > {NOW})",
            (job_id, owner, owner),
        )
        return _job(row) if row else None

    async def cancel(self, job_id: str, owner: str | None) -> str | None:
        """Cancels a pending or running job; returns the status it had (None: no such job)."""

        async def q(conn: Any) -> str | None:
            async with conn.transaction():
                cur = await conn.execute(
                    "SELECT status FROM jobs WHERE id = %s AND (%s::text IS NULL OR owner = %s) "
                    f"AND (expires_at IS NULL OR expires_at > {NOW}) FOR UPDATE",
                    (job_id, owner, owner),
                )
                row = await cur.fetchone()
                if row is None:
                    return None
                if row[0] in ACTIVE:
                    await conn.execute(
                        f"UPDATE jobs SET status = 'cancelled', finished_at = {NOW}, "
                        f"expires_at = {NOW} + %s, box = NULL, lease_until = NULL WHERE id = %s",
                        (self.ttl, job_id),
                    )
                return str(row[0])

        return await self.db.run(q)

    # --- the workers' side --------------------------------------------------------------------

    async def claim(self, job_id: str | None = None) -> Claimed | None:
        """Takes the oldest pending job (any box's), or ``job_id`` when given, for this box:
        running, its attempt counted, leased. None when there is none."""
        pick = (
            "SELECT id FROM jobs WHERE id = %s AND status = 'pending' FOR UPDATE SKIP LOCKED"
            if job_id is not None
            else "SELECT id FROM jobs WHERE status = 'pending' ORDER BY created_at, seq "
            "LIMIT 1 FOR UPDATE SKIP LOCKED"
        )
        row = await self._one(
            f"WITH next AS ({pick}) "
            f"UPDATE jobs j SET status = 'running', started_at = {NOW}, "
            f"attempts = j.attempts + 1, box = %s, lease_until = {NOW} + %s "
            "FROM next WHERE j.id = next.id RETURNING j.id, j.kind, j.request, j.owner, j.attempts",
            ((job_id,) if job_id is not None else ()) + (self.box, self.lease),
        )
        if row is None:
            return None
        return Claimed(row[0], row[1], bytes(row[2]), row[3], row[4])

    async def renew(self, job_ids: list[str]) -> set[str]:
        """Extends this box's leases; returns the ids it still holds (the others were cancelled,
        or lapsed and went back to the queue: their runs here are to stop)."""
        if not job_ids:
            return set()
        rows = await self._all(
            f"UPDATE jobs SET lease_until = {NOW} + %s "
            "WHERE id = ANY(%s) AND status = 'running' AND box = %s RETURNING id",
            (self.lease, job_ids, self.box),
        )
        return {r[0] for r in rows}

    async def finish(
        self, job_id: str, status: str, result: bytes | None, error: bytes | None
    ) -> bool:
        """running → ``status`` with its result or error, if this box still holds the job."""
        row = await self._one(
            f"UPDATE jobs SET status = %s, result = %s, error = %s, finished_at = {NOW}, "
            f"expires_at = {NOW} + %s, box = NULL, lease_until = NULL "
            "WHERE id = %s AND status = 'running' AND box = %s RETURNING 1",
            (status, result, error, self.ttl, job_id, self.box),
        )
        return row is not None

    async def fail(self, job_id: str, error: bytes) -> bool:
        """pending, or running here → failed with ``error``; False when it had ended already."""
        row = await self._one(
            f"UPDATE jobs SET status = 'failed', result = NULL, error = %s, finished_at = {NOW}, "
            f"expires_at = {NOW} + %s, box = NULL, lease_until = NULL WHERE id = %s "
            "AND (status = 'pending' OR (status = 'running' AND box = %s)) RETURNING 1",
            (error, self.ttl, job_id, self.box),
        )
        return row is not None

    async def release(self, job_ids: list[str]) -> int:
        """running here → pending, for jobs a clean shutdown interrupted: any box runs them
        next, and the interruption is not counted as an attempt."""
        if not job_ids:
            return 0
        rows = await self._all(
            "UPDATE jobs SET status = 'pending', attempts = greatest(0, attempts - 1), "
            "box = NULL, lease_until = NULL "
            "WHERE id = ANY(%s) AND status = 'running' AND box = %s RETURNING id",
            (job_ids, self.box),
        )
        return len(rows)

    async def recover(self, max_attempts: int, crashed: bytes) -> tuple[list[str], list[str]]:
        """Jobs whose box stopped renewing their lease (it died): back to pending, or failed
        with ``crashed`` once they used ``max_attempts`` (0: no limit). Returns (requeued ids,
        failed ids). Any box may run it at any time: each row is taken once."""

        async def q(conn: Any) -> tuple[list[str], list[str]]:
            async with conn.transaction():
                failed: list[str] = []
                if max_attempts:
                    cur = await conn.execute(
                        f"UPDATE jobs SET status = 'failed', error = %s, finished_at = {NOW}, "
                        f"expires_at = {NOW} + %s, box = NULL, lease_until = NULL "
                        f"WHERE status = 'running' AND lease_until < {NOW} AND attempts >= %s "
                        "RETURNING id",
                        (crashed, self.ttl, max_attempts),
                    )
                    failed = [r[0] for r in await cur.fetchall()]
                cur = await conn.execute(
                    "UPDATE jobs SET status = 'pending', box = NULL, lease_until = NULL "
                    f"WHERE status = 'running' AND lease_until < {NOW} RETURNING id"
                )
                return [r[0] for r in await cur.fetchall()], failed

        return await self.db.run(q)

    # --- housekeeping and the operator's view --------------------------------------------------

    async def purge(self) -> int:
        rows = await self._all(
            f"DELETE FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= {NOW} RETURNING 1"
        )
        return len(rows)

    async def compact(self) -> None:
        """Nothing to do: PostgreSQL's autovacuum reclaims what purges free."""

    async def counts(self) -> dict[str, int]:
        rows = await self._all(
            f"SELECT status, count(*) FROM jobs WHERE expires_at IS NULL OR expires_at > {NOW} "
            "GROUP BY status"
        )
        return {s: 0 for s in STATUSES} | {r[0]: int(r[1]) for r in rows}

    async def usage(self) -> dict[str, tuple[int, int]]:
        """owner -> (jobs not ended, bytes stored in requests, results and errors)."""
        rows = await self._all(
            "SELECT owner, count(*) FILTER (WHERE status IN ('pending', 'running')), "
            "sum(length(request) + coalesce(length(result), 0) + coalesce(length(error), 0)) "
            "FROM jobs GROUP BY owner"
        )
        return {r[0]: (int(r[1] or 0), int(r[2] or 0)) for r in rows}

    async def list(self, status: str | None, limit: int) -> list[Job]:
        rows = await self._all(
            f"SELECT {_COLUMNS} FROM jobs WHERE (expires_at IS NULL OR expires_at > {NOW}) "
            "AND (%s::text IS NULL OR status = %s) ORDER BY created_at DESC, seq DESC LIMIT %s",
            (status, status, limit),
        )
        return [_job(r) for r in rows]


# --- the operator's view (``iir jobs list|show|cancel`` with IIR_JOB_STORE_URL) -------------------


async def operate(
    url: str, action: str, job_id: str = "", status: str | None = None, limit: int = 100
) -> Any:
    """What ``iir jobs`` does, on the shared store: ``list`` (summaries, newest first),
    ``show`` (one job with its scrubbed payloads, or None), ``cancel`` (the status it had, or
    None). A box running a cancelled job stops it at its next lease renewal."""
    if status is not None and status not in STATUSES:
        raise StoreError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
    store = PgJobStore(url, ttl=86400.0, max_size=1)
    await store.open(upgrade=False)
    try:
        if action == "list":
            return [j.summary() for j in await store.list(status, limit)]
        if action == "show":
            job = await store.get(job_id, None)
            if job is None:
                return None
            return job.summary() | {
                "request": job.request,
                "result": job.result,
                "error": job.error,
            }
        return await store.cancel(job_id, None)
    except StoreUnavailable as exc:
        raise StoreError(f"{store.where}: {exc}") from None
    finally:
        await store.close()
