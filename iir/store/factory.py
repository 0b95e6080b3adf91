"""The job store the settings name: this box's SQLite file, or a fleet's PostgreSQL database."""

from __future__ import annotations

from iir.core.settings import Settings
from iir.store.base import JobTable
from iir.store.jobs import JobStore
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
