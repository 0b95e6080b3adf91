"""Real Redis and PostgreSQL servers for the fleet tests and benchmarks.

Each server runs from the distribution's packages (``redis-server``; ``initdb`` and ``postgres``
from ``postgresql``), installed by ``make test-deps`` (``packaging/ci-deps.sh``) when missing, on a
free loopback port in a temporary folder, and is stopped and removed afterwards: no system service
is used or touched.

PostgreSQL refuses to run as root. When the tests run as root (CI does), ``initdb`` and
``postgres`` run as the unprivileged ``nobody`` user (``subprocess.Popen(user=, group=)``), in a
temporary folder handed to that user; as any other user they run as that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import free_port

#: Where Debian keeps the server binaries (not on PATH): /usr/lib/postgresql/<major>/bin.
_PG_DIRS = "/usr/lib/postgresql/*/bin"


def _missing(what: str) -> None:
    """Without the server the fleet tests cannot run: CI fails, a developer's run skips."""
    message = f"{what} not found: run `make test-deps` (packaging/ci-deps.sh) to install it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _pg_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"{_PG_DIRS}/{name}"))
    return candidates[-1] if candidates else None


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} in {timeout} s")


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, no persistence; :meth:`kill` and :meth:`start` again
    simulate an outage (the state is lost, as when a real state server restarts empty)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _missing("redis-server")
        assert binary is not None
        self.binary = binary
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="iir-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = open(Path(self._tmp.name) / "redis.log", "ab")  # noqa: SIM115 - kept for the process
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._tmp.name,
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        _wait_port(self.port, self.proc, "redis-server")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, listening on 127.0.0.1 only, trust auth
    for the ``iir`` user (loopback only, a throw-away cluster). ``durable``: commits reach the
    disk (fsync on, as in production; the benchmarks compare it with SQLite's synced commits);
    without it, a killed server still keeps every committed row, a lost machine would not."""

    USER = "iir"

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        initdb, postgres = _pg_tool("initdb"), _pg_tool("postgres")
        if initdb is None or postgres is None:
            _missing("PostgreSQL (initdb, postgres)")
        assert initdb is not None and postgres is not None
        self.initdb, self.postgres = initdb, postgres
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="iir-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: dict[str, int] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self._as = {"user": nobody.pw_uid, "group": nobody.pw_gid}
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
        self._run(
            [
                self.initdb,
                "-D",
                str(self.data),
                "-U",
                self.USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ]
        )

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(
            argv,
            capture_output=True,
            cwd=self.root,
            env=self._env(),
            **self._as,  # type: ignore[arg-type]
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.decode(errors='replace')}")

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{db}"

    def start(self) -> PostgresServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept for the process
        self.proc = subprocess.Popen(
            [
                self.postgres,
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
                # Speed for a throw-away cluster: commits still wait for the WAL write, so a
                # killed server (not a lost machine) keeps every committed row.
                *([] if self.durable else ["-c", "fsync=off", "-c", "full_page_writes=off"]),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=self._env(),
            **self._as,  # type: ignore[arg-type]
        )
        log.close()
        _wait_port(self.port, self.proc, "postgres")
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """A fresh database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, sig: int = signal.SIGINT) -> None:
        """SIGINT: fast shutdown; SIGQUIT: immediate shutdown (recovery at the next start, as
        after a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, sig: int = signal.SIGQUIT) -> None:
        self.stop(sig)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.close()


@contextlib.contextmanager
def postgres_server(durable: bool = False) -> Iterator[PostgresServer]:
    srv = PostgresServer(durable)
    try:
        srv.start()
        yield srv
    finally:
        srv.close()
