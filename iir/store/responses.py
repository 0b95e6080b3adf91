"""Stored responses of the Responses API: the ``responses`` table and the server's handle on it.

A stored response keeps what continuing the conversation needs (``previous_response_id``) and
what ``GET /v1/responses/{id}`` and ``.../input_items`` answer: the earlier turns, this turn's input
items and the response object. Every payload is scrubbed once more on its way to the disk (it
was built from scrubbed text already), each row belongs to one API key (another key's lookups
find nothing) and expires ``IIR_RESPONSE_TTL_SECONDS`` after it was created.

The table lives in the job database (:class:`iir.store.base.ResponseTable`): on one box, the SQLite
file, whose writes share the job store's group commits (and their fsync), so a response answered
is a response on disk; in a fleet (``IIR_JOB_STORE_URL``), the shared PostgreSQL database
(:mod:`iir.store.pgresponses`), so any box answers for a response another box stored.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sqlite3
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import orjson

from iir.core.errors import ApiError
from iir.store.base import ResponseTable
from iir.store.jobs import JobStore
from iir.store.sqlite import StoreUnavailable

log = logging.getLogger("iir.store.responses")

_ID = re.compile(r"resp_[0-9a-f]{48}")
#: The scrubber's signature (``Scrubber.scrub``): (scrubbed object, counts).
Scrub = Callable[[Any], tuple[Any, Any]]


def new_response_id() -> str:
    """192 bits from the OS CSPRNG: ids cannot be guessed or enumerated."""
    return "resp_" + secrets.token_hex(24)


def valid_response_id(response_id: str) -> bool:
    return _ID.fullmatch(response_id) is not None


@dataclass(slots=True)
class StoredResponse:
    id: str
    owner: str
    job_id: str | None
    status: str
    model: str
    #: ``{"history": [...], "input": [...]}``: earlier turns' items and this turn's.
    request: dict[str, Any]
    response: dict[str, Any]
    created_at: float
    expires_at: float


_COLUMNS = "id, owner, job_id, status, model, request, response, created_at, expires_at"


def _row(row: tuple[Any, ...]) -> StoredResponse:
    return StoredResponse(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        orjson.loads(row[5]),
        orjson.loads(row[6]),
        row[7],
        row[8],
    )


def insert_response(
    conn: sqlite3.Connection,
    response_id: str,
    owner: str,
    job_id: str | None,
    status: str,
    model: str,
    request: bytes,
    response: bytes,
    now: float,
    ttl: float,
) -> None:
    conn.execute(
        f"INSERT INTO responses ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (response_id, owner, job_id, status, model, request, response, now, now + ttl),
    )


def get_response(
    conn: sqlite3.Connection, response_id: str, owner: str, now: float
) -> StoredResponse | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM responses WHERE id = ? AND owner = ? AND expires_at > ?",
        (response_id, owner, now),
    ).fetchone()
    return _row(row) if row else None


def update_response(
    conn: sqlite3.Connection, response_id: str, status: str, response: bytes
) -> bool:
    cur = conn.execute(
        "UPDATE responses SET status = ?, response = ? WHERE id = ?",
        (status, response, response_id),
    )
    return cur.rowcount == 1


def delete_response(
    conn: sqlite3.Connection, response_id: str, owner: str, now: float
) -> StoredResponse | None:
    found = get_response(conn, response_id, owner, now)
    if found is not None:
        conn.execute("DELETE FROM responses WHERE id = ?", (response_id,))
    return found


def purge_responses(conn: sqlite3.Connection, now: float) -> int:
    return conn.execute("DELETE FROM responses WHERE expires_at <= ?", (now,)).rowcount


def _unavailable(exc: StoreUnavailable) -> ApiError:
    return ApiError(
        503,
        f"The response store is unavailable right now ({exc}); retry shortly",
        code="store_unavailable",
        headers=[("retry-after", "1")],
    )


def not_found(response_id: str, param: str | None = None) -> ApiError:
    shown = response_id if valid_response_id(response_id) else "(malformed id)"
    return ApiError(
        404, f"No response with id '{shown}' for this API key", code="not_found", param=param
    )


class SqliteResponses:
    """The ``responses`` table in this box's SQLite job file, over the job store's connections
    (``db``, opened by the job pool unless ``owns``)."""

    def __init__(self, db: JobStore, owns: bool = False) -> None:
        self.db = db
        #: The connections are this table's own to open and close.
        self.owns = owns

    async def open(self) -> None:
        if self.owns:
            await self.db.open()

    async def close(self) -> None:
        if self.owns:
            await self.db.close()

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
        await self.db.write(
            insert_response,
            response_id,
            owner,
            job_id,
            status,
            model,
            request,
            response,
            self.db.clock(),
            ttl,
        )

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        return await self.db.read(get_response, response_id, owner, self.db.clock())

    async def update(self, response_id: str, status: str, response: bytes) -> bool:
        return await self.db.write(update_response, response_id, status, response)

    async def delete(self, response_id: str, owner: str) -> StoredResponse | None:
        return await self.db.write(delete_response, response_id, owner, self.db.clock())

    async def purge(self) -> int:
        return await self.db.call(purge_responses, self.db.clock())


class ResponseStore:
    """Stored responses: scrubbing, ids, TTL and errors over a :class:`ResponseTable`."""

    def __init__(self, table: ResponseTable, ttl: float, scrub: Scrub | None = None) -> None:
        self.table = table
        self.ttl = ttl
        self.scrub = scrub
        self._purger: asyncio.Task[None] | None = None

    def _bytes(self, obj: Any) -> bytes:
        if self.scrub is not None:
            obj = self.scrub(obj)[0]
        return orjson.dumps(obj)

    async def start(self) -> None:
        await self.table.open()
        self._purger = asyncio.ensure_future(self._purge_loop())

    async def stop(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None
        await self.table.close()

    async def save(
        self,
        owner: str,
        response_id: str,
        model: str,
        status: str,
        request: dict[str, Any],
        response: dict[str, Any],
        job_id: str | None = None,
    ) -> None:
        try:
            await self.table.insert(
                response_id,
                owner,
                job_id,
                status,
                model,
                self._bytes(request),
                self._bytes(response),
                self.ttl,
            )
        except StoreUnavailable as exc:
            raise _unavailable(exc) from None

    async def get(self, owner: str, response_id: str, param: str | None = None) -> StoredResponse:
        """The response, or 404 (absent, expired, another key's)."""
        if not valid_response_id(response_id):
            raise not_found(response_id, param)
        try:
            found = await self.table.get(response_id, owner)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from None
        if found is None:
            raise not_found(response_id, param)
        return found

    async def update(self, response_id: str, status: str, response: dict[str, Any]) -> None:
        try:
            await self.table.update(response_id, status, self._bytes(response))
        except StoreUnavailable as exc:
            raise _unavailable(exc) from None

    async def delete(self, owner: str, response_id: str) -> StoredResponse:
        if not valid_response_id(response_id):
            raise not_found(response_id)
        try:
            found = await self.table.delete(response_id, owner)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from None
        if found is None:
            raise not_found(response_id)
        return found

    async def _purge_loop(self) -> None:
        interval = max(0.2, min(60.0, self.ttl / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                gone = await self.table.purge()
            except StoreUnavailable:
                log.warning("response purge skipped: store unavailable")
                continue
            if gone:
                log.info("responses purged", extra={"event": "responses_purged", "count": gone})
