"""Stored Responses-API objects on the fleet's PostgreSQL database (``IIR_JOB_STORE_URL``).

The same rows as the SQLite file's ``responses`` table (:mod:`iir.store.responses`), in the
database the jobs are in and over the job store's connection pool: a response stored on one box
is read, continued (``previous_response_id``), cancelled and deleted on any other, and a background
response's job, run by whichever box took it, updates the row every box reads. Times are the
database server's clock, as for jobs.
"""

from __future__ import annotations

from typing import Any

from iir.store.postgres import NOW, Database
from iir.store.responses import _COLUMNS, StoredResponse, _row


class PgResponses:
    """The ``responses`` table on a shared PostgreSQL database, over ``db`` (the job store's
    pool: opened, migrated and closed by the job store)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def open(self) -> None:
        """Nothing: the job store opened the pool and created the table (migration 2)."""

    async def close(self) -> None:
        """Nothing: the job store closes the pool."""

    async def _one(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        async def q(conn: Any) -> tuple[Any, ...] | None:
            cur = await conn.execute(sql, args)
            row: tuple[Any, ...] | None = await cur.fetchone() if cur.description else None
            return row

        return await self.db.run(q)

    async def insert(
        self,
        response_id: str,
        owner: str,
        job_id: str | None,
        status: str,
        model: str,
        request: bytes,
        response: bytes,
        ttl: float,
    ) -> None:
        """Committed (autocommit) before it returns. Tried again on a fresh connection when the
        first was dropped: the id is new, so a second insert of a row that did land is a no-op."""
        await self._one(
            f"INSERT INTO responses ({_COLUMNS}) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s, {NOW}, {NOW} + %s) ON CONFLICT (id) DO NOTHING",
            (response_id, owner, job_id, status, model, request, response, ttl),
        )

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        row = await self._one(
            f"SELECT {_COLUMNS} FROM responses WHERE id = %s AND owner = %s AND expires_at > {NOW}",
            (response_id, owner),
        )
        return _stored(row) if row else None

    async def update(self, response_id: str, status: str, response: bytes) -> bool:
        row = await self._one(
            "UPDATE responses SET status = %s, response = %s WHERE id = %s RETURNING 1",
            (status, response, response_id),
        )
        return row is not None

    async def delete(self, response_id: str, owner: str) -> StoredResponse | None:
        row = await self._one(
            f"DELETE FROM responses WHERE id = %s AND owner = %s AND expires_at > {NOW} "
            f"RETURNING {_COLUMNS}",
            (response_id, owner),
        )
        return _stored(row) if row else None

    async def purge(self) -> int:
        async def q(conn: Any) -> int:
            cur = await conn.execute(f"DELETE FROM responses WHERE expires_at <= {NOW}")
            return int(cur.rowcount)

        return await self.db.run(q)


def _stored(row: tuple[Any, ...]) -> StoredResponse:
    """A row as :func:`iir.store.responses._row` reads SQLite's (bytea arrives as bytes or
    memoryview, which orjson reads alike once it is bytes)."""
    return _row((*row[:5], bytes(row[5]), bytes(row[6]), *row[7:]))
