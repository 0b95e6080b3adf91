"""The database migrates from a version-1 file (jobs only) to the current schema, keeping every
job, and the server then stores responses in it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import openai
import orjson

from iir.store.jobs import list_jobs
from iir.store.sqlite import MIGRATIONS, SCHEMA_VERSION, check_database, db_path

from .harness import Server


def version_1_file(data: Path) -> Path:
    """A database exactly as IIR with schema version 1 left it, holding one finished job."""
    data.mkdir(parents=True)
    path = db_path(data)
    conn = sqlite3.connect(path, isolation_level=None)
    for stmt in MIGRATIONS[0].split(";"):
        if stmt.strip():
            conn.execute(stmt)
    conn.execute("PRAGMA user_version=1")
    now = time.time()
    conn.execute(
        "INSERT INTO jobs (id, owner, kind, status, model, request, result, attempts, "
        "created_at, finished_at, expires_at) VALUES (?, ?, 'chat', 'succeeded', 'iir/echo', ?, ?, "
        "1, ?, ?, ?)",
        (
            "job_" + "ab" * 16,
            "owner",
            orjson.dumps({"model": "iir/echo", "messages": []}),
            orjson.dumps({"object": "chat.completion"}),
            now,
            now,
            now + 3600,
        ),
    )
    conn.close()
    return path


def test_version_1_file_migrates_and_keeps_its_jobs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = version_1_file(data)
    check_database(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "responses", "meta"} <= tables
    conn.close()
    assert [j["job_id"] for j in list_jobs(data)] == ["job_" + "ab" * 16]
    check_database(path)  # migrating again changes nothing


def test_server_on_a_version_1_file_stores_responses(tmp_path: Path) -> None:
    data = tmp_path / "data"
    version_1_file(data)
    with Server(data_dir=data) as s:
        sdk = openai.OpenAI(base_url=s.url + "/v1", api_key=s.key, max_retries=0)
        resp = sdk.responses.create(model="iir/echo", input="kept")
        assert sdk.responses.retrieve(resp.id).output_text == "kept"
    assert len(list_jobs(data)) == 1
    conn = sqlite3.connect(db_path(data))
    rows = conn.execute("SELECT id, owner, status FROM responses").fetchall()
    conn.close()
    assert [(r[0], r[2]) for r in rows] == [(resp.id, "completed")]
    assert rows[0][1] != s.key  # the owner is the key's id, never the key
