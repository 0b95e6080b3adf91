"""The SQLite database file: opening it (WAL, fully synced commits), schema migrations, and the
start-up check that refuses a corrupt or unwritable file instead of recreating it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

DB_NAME = "iir.db"
SCHEMA_VERSION = 2

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
    # 1 -> 2: stored responses of the Responses API (iir.store.responses)
    """
    CREATE TABLE responses (
        id          TEXT PRIMARY KEY,
        owner       TEXT NOT NULL,
        job_id      TEXT,
        status      TEXT NOT NULL,
        model       TEXT NOT NULL,
        request     BLOB NOT NULL,
        response    BLOB NOT NULL,
        created_at  REAL NOT NULL,
        expires_at  REAL NOT NULL
    );
    CREATE INDEX responses_expires ON responses (expires_at);
    """,
]


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
