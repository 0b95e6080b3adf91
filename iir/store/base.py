"""What the job pool needs of a job store, whichever database keeps the jobs.

Two implementations: :class:`iir.store.jobs.JobStore` (this box's SQLite file, the default) and
:class:`iir.store.pgjobs.PgJobStore` (a PostgreSQL database shared by a fleet). The pool speaks
only this interface; :func:`iir.store.factory.job_store` picks one from the settings. Another
table (stored Responses-API objects, say) gets its own small interface next to this one, with a
method per operation, and an implementation per database over the same connection (the SQLite
file's writer thread, or :class:`iir.store.postgres.Database`'s pool).

Every method is a coroutine and raises :class:`iir.store.sqlite.StoreUnavailable` when the
database cannot be used right now (the caller answers 503 or retries); times are the store's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from iir.store.jobs import Job
    from iir.store.responses import StoredResponse


@dataclass(slots=True, frozen=True)
class Claimed:
    """A job a worker took: what it needs to run it."""

    id: str
    kind: str
    request: bytes
    owner: str
    attempts: int


class JobTable(Protocol):
    #: Seconds a finished job is kept.
    ttl: float
    #: Other boxes use the same table: jobs may be claimed, cancelled and finished elsewhere.
    shared: bool

    @property
    def where(self) -> str:
        """How messages name the store (a file path, or a URL without its password)."""
        ...

    async def open(self) -> None:
        """Checks (and migrates) the database; :class:`StoreError` stops the start."""
        ...

    async def close(self) -> None: ...

    async def insert(self, job_id: str, owner: str, kind: str, model: str, request: bytes) -> None:
        """A new pending job, durable before this returns."""
        ...

    async def get(self, job_id: str, owner: str | None) -> Job | None:
        """The job (``owner`` None: whoever owns it), unless it expired."""
        ...

    async def cancel(self, job_id: str, owner: str | None) -> str | None:
        """pending or running → cancelled; the status it had (None: no such job)."""
        ...

    async def claim(self, job_id: str | None = None) -> Claimed | None:
        """pending → running for this box, counting the attempt: ``job_id``, or (a shared
        store) the oldest pending job. None when there is none (or it was cancelled)."""
        ...

    async def renew(self, job_ids: list[str]) -> set[str]:
        """Extends the leases of jobs this box runs; the ids it still holds."""
        ...

    async def finish(
        self, job_id: str, status: str, result: bytes | None, error: bytes | None
    ) -> bool:
        """running → ``status``; False when the job is no longer this box's to finish."""
        ...

    async def fail(self, job_id: str, error: bytes) -> bool:
        """pending or running → failed with ``error``; False when it had ended already."""
        ...

    async def release(self, job_ids: list[str]) -> int:
        """running → pending for jobs a clean shutdown interrupted (no attempt counted)."""
        ...

    async def recover(self, max_attempts: int, crashed: bytes) -> tuple[list[str], list[str]]:
        """Jobs whose run was interrupted by a crash, back to pending (or failed with
        ``crashed`` after ``max_attempts``): (pending ids, oldest first; failed ids)."""
        ...

    async def purge(self) -> int:
        """Deletes expired jobs; how many."""
        ...

    async def compact(self) -> None:
        """Gives freed space back after a purge, where the database needs telling."""
        ...

    async def counts(self) -> dict[str, int]:
        """Jobs by status (unexpired)."""
        ...

    async def usage(self) -> dict[str, tuple[int, int]]:
        """owner -> (jobs not ended, bytes stored)."""
        ...

    async def list(self, status: str | None, limit: int) -> list[Job]:
        """Newest first."""
        ...


class ResponseTable(Protocol):
    """Stored Responses-API objects, in the database the jobs are in: this box's SQLite file
    (:class:`iir.store.responses.SqliteResponses`) or the fleet's PostgreSQL
    (:class:`iir.store.pgresponses.PgResponses`), so that any box that can poll a background
    response's job can also read the response. Payloads arrive scrubbed and serialized."""

    async def open(self) -> None:
        """Opens what this table owns (nothing, when it shares the job store's connections)."""
        ...

    async def close(self) -> None: ...

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
        """A new row, expiring ``ttl`` seconds from now (the store's clock); durable before
        this returns."""
        ...

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        """The row, if it is ``owner``'s and has not expired."""
        ...

    async def update(self, response_id: str, status: str, response: bytes) -> bool:
        """A new status and response object; False when the row is gone."""
        ...

    async def delete(self, response_id: str, owner: str) -> StoredResponse | None:
        """Deletes ``owner``'s unexpired row; what it held (None: there was none)."""
        ...

    async def purge(self) -> int:
        """Deletes expired rows; how many."""
        ...
