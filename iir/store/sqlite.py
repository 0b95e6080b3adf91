"""The SQLite database file: opening it (WAL, fully synced commits), schema migrations, and the
start-up check that refuses a corrupt or unwritable file instead of recreating it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

DB_NAME = "iir.db"
#: The most the write-ahead log keeps on disk once it is reset (a large write grows it for a while).
WAL_SIZE_LIMIT = 16 * 1024 * 1024

#: SQL run in one transaction, or a function run outside any (for what SQLite refuses inside one,
#: such as VACUUM); a function must be safe to run again, in case the process dies before the
#: version is written.
Migration = str | Callable[[sqlite3.Connection], None]


def _incremental_vacuum(conn: sqlite3.Connection) -> None:
    """Version 2: the file gives back the pages purged jobs free (``auto_vacuum=INCREMENTAL``).

    SQLite changes that mode only on an empty file or by rebuilding the file with VACUUM: a file
    from an older IIR is rebuilt once here (it needs about its own size again in free disk space
    for the time it takes); a new file got the mode before its first table.
    """
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("VACUUM")


# Migration i takes the schema from version i to i + 1. Each entry is its own step: entries are
# only ever appended.
MIGRATIONS: list[Migration] = [
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
    _incremental_vacuum,
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The database file cannot be used; start-up must stop (exit code 2)."""


class StoreUnavailable(Exception):
    """The database is locked, full or failing right now; the request gets a 503."""


def db_path(data_dir: Path) -> Path:
    return Path(data_dir) / DB_NAME


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
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Brings the schema to :data:`SCHEMA_VERSION`; refuses a file from a newer IIR."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"schema version {version} is newer than this IIR understands ({SCHEMA_VERSION}); "
            "run the IIR release that wrote it"
        )
    if version == 0:  # a new file: pages freed later go back to the filesystem (see version 2)
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    while version < SCHEMA_VERSION:
        step = MIGRATIONS[version]
        if callable(step):
            step(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if isinstance(step, str):
                for stmt in step.split(";"):
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
        raise StoreError(explain(where, exc)) from None
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
        raise StoreError(explain(where, exc)) from None
    finally:
        conn.close()


_KEEP = "IIR never recreates it: move it aside or restore it from a backup, then start again"


def explain(where: str, exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return f"{where} cannot be written ({text}); check its permissions and the disk"
    if "locked" in text or "busy" in text:
        return f"{where} is locked by another process ({text})"
    return f"{where} is not a usable SQLite database ({text}); {_KEEP}"
