"""The job store the settings name: this box's SQLite file, or a fleet's PostgreSQL database; and
the stored responses' table, in the same database."""

from __future__ import annotations

from iir.core.settings import Settings
from iir.store.base import JobTable, ResponseTable
from iir.store.jobs import JobStore
from iir.store.responses import SqliteResponses
from iir.store.sqlite import db_path


def job_store(settings: Settings) -> JobTable:
    """``IIR_JOB_STORE_URL`` when set (the ``fleet`` extra's driver is imported only then), else
    the SQLite file in ``IIR_DATA_DIR``."""
    if settings.job_store_url:
        from iir.store.pgjobs import PgJobStore

        return PgJobStore(
            settings.job_store_url,
            settings.job_ttl_seconds,
            lease=settings.job_lease_seconds,
            timeout=max(1.0, settings.job_db_timeout),
            max_size=max(4, settings.job_concurrency + 4),
        )
    return JobStore(
        db_path(settings.data_dir), settings.job_ttl_seconds, timeout=settings.job_db_timeout
    )


def response_table(jobs: JobTable) -> ResponseTable:
    """Stored responses beside the jobs, over the job store's connections (the job pool opens
    them): in this box's SQLite file, or in the fleet's PostgreSQL database, where every box
    reads what any box stored."""
    if isinstance(jobs, JobStore):
        return SqliteResponses(jobs)
    from iir.store.pgjobs import PgJobStore
    from iir.store.pgresponses import PgResponses

    if isinstance(jobs, PgJobStore):
        return PgResponses(jobs.db)
    raise TypeError(f"no response table for a job store of type {type(jobs).__name__}")
