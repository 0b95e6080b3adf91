"""Starting Granian with the IIR app: one worker process, RSGI, JSON logs, graceful drain."""

from __future__ import annotations

import math
import os
from pathlib import Path

from granian import Granian
from granian.constants import Interfaces
from granian.http import HTTP1Settings

from iir.core.settings import ConfigError, Settings
from iir.ops.logs import granian_log_config
from iir.store.sqlite import StoreError, check_database, db_path


def prepare_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"IIR_DATA_DIR={str(path)!r} cannot be created: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"IIR_DATA_DIR={str(path)!r} is not writable")


def check_job_store(settings: Settings) -> None:
    """The job store must be usable before the server starts: the SQLite file (checked and
    migrated), or the fleet's PostgreSQL database (reached and migrated)."""
    if settings.job_store_url:
        import asyncio

        from iir.store.pgjobs import PgJobStore

        async def check() -> None:
            store = PgJobStore(settings.job_store_url or "", settings.job_ttl_seconds, max_size=1)
            await store.open()
            await store.close()

        asyncio.run(check())
        return
    check_database(db_path(settings.data_dir), settings.job_db_timeout)


def serve(settings: Settings, env_file: str | None) -> None:
    """Blocks until SIGINT/SIGTERM; in-flight requests get ``shutdown_timeout`` to finish."""
    prepare_data_dir(settings.data_dir)
    try:
        check_job_store(settings)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    # The worker process rebuilds Settings from the same sources; the command line already won.
    os.environ["IIR_ENV_FILE"] = str(Path(env_file).resolve()) if env_file else ""
    os.environ["IIR_HOST"] = settings.host
    os.environ["IIR_PORT"] = str(settings.port)
    server = Granian(
        "iir.api.app:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.RSGI,
        workers=1,
        log_enabled=True,
        log_dictconfig=granian_log_config(settings.log_level),
        log_access=False,
        workers_kill_timeout=max(1, math.ceil(settings.shutdown_timeout)),
        # A request head that trickles in is cut by the same deadline as a body (the app
        # enforces the body's own, see iir.api.http.Request.body).
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, math.ceil(settings.body_timeout * 1000))
        ),
        ssl_cert=settings.tls_cert,
        ssl_key=settings.tls_key,
    )
    try:
        server.serve()
    except SystemExit as exc:
        # Granian exits 1 when its worker dies at start-up; when the job database is the
        # reason (it went bad after the check above), say so and exit 2 like the check would.
        if exc.code not in (0, None):
            try:
                check_job_store(settings)
            except StoreError as bad:
                raise ConfigError(str(bad)) from None
        raise
