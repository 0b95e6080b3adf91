"""UDP log forwarding: real loopback sockets, real threads, the script as real processes."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from iir.ops import logforward
from iir.ops.logforward import UdpLogHandler, UdpSender
from iir.policy.scrub import Scrubber

from .secret_samples import make

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "forward_logs_udp.py"
WAIT = 10.0  # generous upper bound for "should arrive"; never a speed assertion
PYTHON38 = "/root/.pyenv/versions/3.8.18/bin/python"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("forward_logs_udp", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FORWARDER = _load_script()
# The server's sender and the standalone script each carry the sink syntax and datagram format.
BOTH = [pytest.param(logforward, id="server"), pytest.param(FORWARDER, id="script")]


def oldest_python() -> str | None:
    """A Python 3.8 interpreter (the script's promise) when this machine has one."""
    found = [p for p in (PYTHON38, shutil.which("python3.8")) if p and Path(p).exists()]
    return found[0] if found else None


def pythons() -> list[str]:
    oldest = oldest_python()
    return [sys.executable, *([oldest] if oldest else [])]


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(WAIT)
    yield sock
    sock.close()


def recv_lines(sock: socket.socket, n: int) -> list[bytes]:
    return [sock.recvfrom(65535)[0] for _ in range(n)]


def make_logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"level": record.levelname, "msg": record.getMessage()})


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9999", ("127.0.0.1", 9999)),
        ("logs.example:514", ("logs.example", 514)),
        ("[::1]:9999", ("::1", 9999)),
        (" host:1 ", ("host", 1)),
        ("[fe80::1%eth0]:65535", ("fe80::1%eth0", 65535)),
    ],
)
@pytest.mark.parametrize("impl", BOTH)
def test_parse_sink_accepts(impl: ModuleType, text: str, expected: tuple[str, int]) -> None:
    assert impl.parse_sink(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("hostonly", "no port"),
        (":9999", "no host"),
        ("::1:9999", "brackets"),
        ("[::1]9999", "[ipv6-address]:port"),
        ("[]:9999", "empty address"),
        ("host:0", "from 1 to 65535"),
        ("host:65536", "from 1 to 65535"),
        ("host:-1", "must be a number"),
        ("host:http", "must be a number"),
        ("ho st:1", "whitespace"),
    ],
)
@pytest.mark.parametrize("impl", BOTH)
def test_parse_sink_rejects_with_clear_error(impl: ModuleType, text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=r".") as info:
        impl.parse_sink(text)
    assert fragment in str(info.value)
    assert str(info.value) == _message(logforward.parse_sink, text)  # both copies say the same


def _message(parse: object, text: str) -> str:
    try:
        parse(text)  # type: ignore[operator]
    except ValueError as exc:
        return str(exc)
    raise AssertionError(f"{text!r} was accepted")


def test_handler_from_env() -> None:
    assert logforward.handler_from_env({}) is None
    assert logforward.handler_from_env({"REMOTE_LOG_SINK": "  "}) is None
    with pytest.raises(ValueError, match="REMOTE_LOG_SINK"):
        logforward.handler_from_env({"REMOTE_LOG_SINK": "nonsense"})
    handler = logforward.handler_from_env({"REMOTE_LOG_SINK": "127.0.0.1:9"})
    assert isinstance(handler, UdpLogHandler)
    handler.close()


# --- truncation ----------------------------------------------------------------------------


@pytest.mark.parametrize("impl", BOTH)
def test_short_line_unchanged_with_newline(impl: ModuleType) -> None:
    assert impl.truncate_line('{"a": 1}\n', 1200) == b'{"a": 1}\n'
    assert impl.truncate_line("crlf\r\n", 1200) == b"crlf\n"


@pytest.mark.parametrize("impl", BOTH)
def test_long_line_truncated_with_marker_and_valid_utf8(impl: ModuleType) -> None:
    line = "x" + "é€😀" * 2000
    data = impl.truncate_line(line, 1200)
    assert len(data) <= 1200
    assert data.endswith(b"...[truncated]\n")
    data.decode("utf-8")  # strict: a cut never splits a character
    assert len(data) > 1200 - 4 - len(b"...[truncated]\n")
    assert data == logforward.truncate_line(line, 1200)


def test_both_copies_share_the_datagram_limits() -> None:
    assert FORWARDER.DEFAULT_MAX_DATAGRAM == logforward.DEFAULT_MAX_DATAGRAM
    assert FORWARDER.TRUNCATION_MARKER == logforward.TRUNCATION_MARKER


# --- the handler against a real listener ---------------------------------------------------


def test_handler_delivers_records_to_listener(receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    handler = UdpLogHandler(f"127.0.0.1:{port}")
    handler.setFormatter(JsonFormatter())
    logger = make_logger("iir.test.deliver", handler)
    for i in range(20):
        logger.info("request %d done", i)
    got = [json.loads(d) for d in recv_lines(receiver, 20)]
    assert [g["msg"] for g in got] == [f"request {i} done" for i in range(20)]
    handler.close()
    assert handler.dropped == 0


def test_handler_truncates_long_records(receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    handler = UdpLogHandler(("127.0.0.1", port), max_datagram=300)
    logger = make_logger("iir.test.trunc", handler)
    logger.info("y" * 5000)
    (data,) = recv_lines(receiver, 1)
    assert len(data) <= 300
    assert data.endswith(b"...[truncated]\n")
    handler.close()


def test_ipv6_sink(receiver: socket.socket) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support in this Python build")
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.bind(("::1", 0))
    except OSError as exc:
        sock.close()
        pytest.skip(f"no IPv6 loopback here: {exc}")
    sock.settimeout(WAIT)
    try:
        sender = UdpSender(f"[::1]:{sock.getsockname()[1]}")
        sender.submit("over v6")
        assert sock.recvfrom(100)[0] == b"over v6\n"
        sender.close()
    finally:
        sock.close()


def test_full_queue_drops_and_counts_without_blocking(receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    reasons: list[str] = []
    # The drain thread is started only after the burst, so the queue is certainly full.
    handler = UdpLogHandler(
        f"127.0.0.1:{port}", queue_size=5, on_drop=reasons.append, autostart=False
    )
    logger = make_logger("iir.test.full", handler)
    for i in range(12):
        logger.info("line %d", i)
    assert handler.dropped == 7
    assert reasons == ["queue_full"] * 7
    handler.start()
    got = recv_lines(receiver, 5)
    assert got == [f"line {i}\n".encode() for i in range(5)]
    handler.close()
    assert handler.sender.sent == 5


def test_unresolvable_sink_warns_once_and_never_raises() -> None:
    warnings: list[str] = []
    reasons: list[str] = []
    handler = UdpLogHandler(
        "no-such-host.invalid:9999", on_warning=warnings.append, on_drop=reasons.append
    )
    logger = make_logger("iir.test.unresolvable", handler)
    for i in range(50):
        logger.info("line %d", i)  # must return normally every time
    assert handler.sender.flush(WAIT)
    handler.close()
    assert handler.dropped == 50
    assert set(reasons) == {"unresolvable"}
    assert len(warnings) == 1
    assert "no-such-host.invalid:9999" in warnings[0]


def test_dead_sink_does_not_disturb_caller() -> None:
    # A port nobody listens on: ICMP unreachable must not surface as an error to the logger.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    warnings: list[str] = []
    handler = UdpLogHandler(f"127.0.0.1:{port}", on_warning=warnings.append)
    logger = make_logger("iir.test.dead", handler)
    for i in range(200):
        logger.info("line %d", i)
    assert handler.sender.flush(WAIT)
    handler.close()
    assert handler.sender.sent + handler.dropped == 200
    assert len(warnings) <= 1


def test_bad_format_is_counted_not_raised() -> None:
    class Broken(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            raise RuntimeError("formatter bug")

    handler = UdpLogHandler("127.0.0.1:9", autostart=False)
    handler.setFormatter(Broken())
    logger = make_logger("iir.test.broken", handler)
    logger.info("x")
    assert handler.sender.dropped_by_reason == {"format_error": 1}
    handler.close()


def test_emit_after_close_is_dropped_quietly() -> None:
    handler = UdpLogHandler("127.0.0.1:9")
    handler.close()
    handler.emit(logging.makeLogRecord({"msg": "late"}))
    assert handler.sender.dropped_by_reason == {"closed": 1}


def test_hooks_that_raise_do_not_break_logging(receiver: socket.socket) -> None:
    def bad_hook(_: str) -> None:
        raise RuntimeError("hook bug")

    handler = UdpLogHandler(
        "127.0.0.1:1", queue_size=1, on_drop=bad_hook, on_warning=bad_hook, autostart=False
    )
    logger = make_logger("iir.test.hooks", handler)
    logger.info("a")
    logger.info("b")
    assert handler.dropped == 1
    handler.close()


def test_sender_threads_from_many_callers(receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    handler = UdpLogHandler(f"127.0.0.1:{port}")
    logger = make_logger("iir.test.threads", handler)

    def work(t: int) -> None:
        for i in range(25):
            logger.info("t%d-%d", t, i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = {d.decode().strip() for d in recv_lines(receiver, 100)}
    assert got == {f"t{t}-{i}" for t in range(4) for i in range(25)}
    handler.close()


# --- the script, end to end ----------------------------------------------------------------


def script(*args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-S", str(SCRIPT), *args],
        text=True,
        cwd="/",
        **kw,  # type: ignore[call-overload]
    )


@contextlib.contextmanager
def listener_process() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = script(
        "--listen", "0", "--bind", "127.0.0.1", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        assert banner.startswith("listening on 127.0.0.1:"), banner
        port = int(banner.split(":")[1].split("/")[0])
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(WAIT)


def test_listen_mode_prints_datagrams_and_stops_cleanly() -> None:
    with listener_process() as (proc, port):
        send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        send.sendto(b'{"msg": "hello"}\n', ("127.0.0.1", port))
        send.sendto(b"no newline", ("127.0.0.1", port))
        send.close()
        assert proc.stdout is not None
        assert proc.stdout.readline() == '{"msg": "hello"}\n'
        assert proc.stdout.readline() == "no newline\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


def test_sink_mode_from_stdin_to_listener_script() -> None:
    with listener_process() as (listener, port):
        sender = script(f"--sink=127.0.0.1:{port}", stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        long_line = "z" * 3000
        _, err = sender.communicate("first\n\nsecond\n" + long_line + "\n", timeout=WAIT)
        assert sender.returncode == 0, err
        assert listener.stdout is not None
        assert listener.stdout.readline() == "first\n"
        assert listener.stdout.readline() == "second\n"
        third = listener.stdout.readline()
        assert third.endswith("...[truncated]\n")
        assert len(third.encode()) <= logforward.DEFAULT_MAX_DATAGRAM


def test_sink_mode_follows_a_file(tmp_path: Path, receiver: socket.socket) -> None:
    log = tmp_path / "iir.log"
    log.write_text("old line\n")
    port = receiver.getsockname()[1]
    proc = script(
        "--sink", f"127.0.0.1:{port}", "--file", str(log), "--from-start", stderr=subprocess.PIPE
    )
    try:
        assert recv_lines(receiver, 1) == [b"old line\n"]
        with log.open("a") as f:
            f.write("appended\n")
        assert recv_lines(receiver, 1) == [b"appended\n"]
        # Rotation: the file is replaced; the follower picks up the new one.
        os.rename(log, tmp_path / "iir.log.1")
        log.write_text("after rotate\n")
        assert recv_lines(receiver, 1) == [b"after rotate\n"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "one of the arguments --sink --listen is required"),
        (["--sink", "nohost"], "no port"),
        (["--sink", "h:99999"], "from 1 to 65535"),
        (["--listen", "abc"], "--listen"),
        (["--listen", "70000"], "--listen"),
        (["--sink", "h:1", "--listen", "9"], "not allowed with"),
        (["--listen", "9", "--file", "x"], "--file only goes with --sink"),
        (["--sink", "h:1", "--file", "/no/such/file"], "no such file"),
        (["--sink", "h:1", "--from-start"], "--from-start only goes with --file"),
        (["--sink", "h:1", "--bind", "::"], "--bind only goes with --listen"),
    ],
)
def test_script_bad_args_exit_2(args: list[str], fragment: str) -> None:
    proc = script(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    _out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 2, err
    assert fragment in err
    assert "usage:" in err
    assert "Traceback" not in err


def test_script_listen_on_busy_port_is_a_clear_error() -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        proc = script(
            "--listen",
            str(busy.getsockname()[1]),
            "--bind",
            "127.0.0.1",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 1
        assert "cannot listen" in err
        assert "Traceback" not in err
    finally:
        busy.close()


def test_script_runs_on_oldest_supported_python(receiver: socket.socket) -> None:
    python = oldest_python()
    if python is None:
        pytest.skip("no Python 3.8 interpreter on this machine (the syntax test still covers 3.8)")
    port = receiver.getsockname()[1]
    result = subprocess.run(
        [python, "-S", str(SCRIPT), "--sink", f"127.0.0.1:{port}"],
        input="from python 3.8\n",
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert recv_lines(receiver, 1) == [b"from python 3.8\n"]
    bad = subprocess.run(
        [python, "-S", str(SCRIPT), "--listen", "x"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        check=False,
    )
    assert bad.returncode == 2 and "--listen" in bad.stderr


def test_attach_from_env_forwards_the_loggers_lines(receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    logger = logging.getLogger("iir.test.attach")
    logger.handlers[:] = []
    logger.setLevel(logging.INFO)
    logger.propagate = False
    drops: list[str] = []
    assert logforward.attach_from_env(logger, environ={}) is None
    handler = logforward.attach_from_env(
        logger, JsonFormatter(), {"REMOTE_LOG_SINK": f"127.0.0.1:{port}"}, on_drop=drops.append
    )
    assert handler is not None and handler in logger.handlers
    logger.warning("disk %s", "low")
    assert json.loads(recv_lines(receiver, 1)[0]) == {"level": "WARNING", "msg": "disk low"}
    logger.removeHandler(handler)
    handler.close()
    assert drops == []


def test_sink_mode_survives_undecodable_stdin(receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-S", str(SCRIPT), "--sink", f"127.0.0.1:{port}"],
        input=b"bad \xff\xfe bytes\nnext\n",
        capture_output=True,
        timeout=WAIT,
        cwd="/",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert recv_lines(receiver, 2) == ["bad \ufffd\ufffd bytes\n".encode(), b"next\n"]


def _traversable_by_anyone(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in (path, *path.parents))


@contextlib.contextmanager
def world_readable_folder() -> Iterator[Path]:
    """A fresh 0755 folder that an unprivileged user can reach (its parents searchable by all).

    The checkout, ``tmp_path`` or ``$TMPDIR`` may sit under a private (0700) folder, so a test that
    drops privileges brings what it runs into a folder of its own, created here.
    """
    for base in (tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"):
        where = Path(base).resolve()
        if where.is_dir() and _traversable_by_anyone(where):
            break
    else:
        pytest.skip("no temporary folder that an unprivileged user can reach")
    folder = Path(tempfile.mkdtemp(prefix="iir-unprivileged-", dir=where))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder)


def test_unreadable_file_is_a_clear_error() -> None:
    # Root reads any file, so as root the script runs as nobody (with the system Python,
    # which nobody can execute), from a copy in a folder that nobody can reach.
    with world_readable_folder() as folder:
        script_copy = Path(shutil.copy(SCRIPT, folder / SCRIPT.name))
        script_copy.chmod(0o644)
        command = [sys.executable, "-I", "-S", str(script_copy)]
        if os.geteuid() == 0:
            if not (Path("/usr/bin/python3").exists() and shutil.which("setpriv")):
                pytest.skip("as root this needs setpriv and /usr/bin/python3 to drop privileges")
            command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
            command += ["/usr/bin/python3", "-I", "-S", str(script_copy)]
        log = folder / "private.log"
        log.write_text("x\n")
        log.chmod(0)
        proc = subprocess.run(
            [*command, "--sink", "127.0.0.1:9", "--file", str(log)],
            capture_output=True,
            text=True,
            timeout=WAIT,
            cwd=folder,
            check=False,
        )
    assert proc.returncode == 1, proc.stderr
    assert "cannot read" in proc.stderr and "Permission denied" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_file_must_be_a_regular_file(tmp_path: Path) -> None:
    proc = script("--sink", "127.0.0.1:9", "--file", str(tmp_path), stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 2
    assert "not a regular file" in err


# --- the script alone: one standard-library file ------------------------------------------


def test_script_is_python38_syntax() -> None:
    # Only syntax can be checked without a 3.8 interpreter; the run on 3.8 above does the rest.
    ast.parse(SCRIPT.read_text(), filename=str(SCRIPT), feature_version=(3, 8))


def test_script_imports_only_the_standard_library_and_iir_optionally() -> None:
    tree = ast.parse(SCRIPT.read_text())
    outside: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        outside += [n for n in names if n.split(".")[0] not in sys.stdlib_module_names]
    assert outside == ["iir.policy.scrub"]
    # ...and that one only inside a try in the function that falls back without it.
    (func,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "iir_scrubber"]
    (guard,) = [n for n in func.body if isinstance(n, ast.Try)]
    assert any(isinstance(n, ast.ImportFrom) and n.module == "iir.policy.scrub" for n in guard.body)


@pytest.fixture
def alone(tmp_path: Path) -> Path:
    """The script copied alone into an empty folder, as on a machine without IIR."""
    folder = tmp_path / "alone"
    folder.mkdir()
    return Path(shutil.copy(SCRIPT, folder / SCRIPT.name))


@contextlib.contextmanager
def listening(python: str, path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen(
        [python, "-I", "-S", str(path), "--listen", "0", "--bind", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=path.parent,
    )
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        assert banner.startswith("listening on 127.0.0.1:"), banner
        yield proc, int(banner.rsplit(":", 1)[1].split("/")[0])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


@pytest.mark.parametrize("python", pythons())
def test_alone_under_isolated_python_sends_and_listens(python: str, alone: Path) -> None:
    with listening(python, alone) as (listener, port):
        sent = subprocess.run(
            [python, "-I", "-S", str(alone), "--sink", f"127.0.0.1:{port}"],
            input="first line\n\nsecond line\n",
            capture_output=True,
            text=True,
            timeout=WAIT,
            cwd=alone.parent,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        # Without IIR it forwards as is and says so, once.
        notes = sent.stderr.splitlines()
        assert len(notes) == 1 and "IIR is not importable here" in notes[0], sent.stderr
        assert "not scrubbed" in notes[0]
        assert listener.stdout is not None
        assert listener.stdout.readline() == "first line\n"
        assert listener.stdout.readline() == "second line\n"
    assert sorted(p.name for p in alone.parent.iterdir()) == [SCRIPT.name]


def test_alone_scrubs_with_iir_when_importable(alone: Path, receiver: socket.socket) -> None:
    env_secret = "forwarder-env-secret-0123456789"
    token = make("openai_key", 7)
    env = {**os.environ, "FORWARDER_TEST_TOKEN": env_secret}
    lines = [f"login with {env_secret} ok", f"calling with {token} now", "nothing secret here"]
    port = receiver.getsockname()[1]
    # This interpreter has IIR installed: the copy finds it through site-packages.
    sent = subprocess.run(
        [sys.executable, str(alone), "--sink", f"127.0.0.1:{port}"],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=alone.parent,
        env=env,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr
    assert "not importable" not in sent.stderr
    got = recv_lines(receiver, 3)
    scrubber = Scrubber.from_environ(env)
    assert got == [scrubber.scrub_text(line)[0].encode() + b"\n" for line in lines]
    assert got[2] == b"nothing secret here\n"
    for data in got[:2]:
        assert b"REDACTED" in data
        assert env_secret.encode() not in data and token.encode() not in data


def test_listener_strips_control_characters() -> None:
    with listener_process() as (proc, port):
        send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        hostile = (
            "\x1b[2J\x1b[31mred\x1b[0m\tcol\r\nforged\x00line\x07\x7f"
            "\u009b31m\u202egnp.exe\u2028end\n"
        )
        send.sendto(hostile.encode(), ("127.0.0.1", port))
        send.sendto(b"\xff\xfe invalid utf-8\n", ("127.0.0.1", port))
        send.close()
        assert proc.stdout is not None
        assert proc.stdout.readline() == "[2J[31mred[0m col  forgedline31mgnp.exeend\n"
        assert proc.stdout.readline() == "\ufffd\ufffd invalid utf-8\n"


@pytest.mark.parametrize(
    ("datagram", "printed"),
    [
        (b"plain\n", b"plain\n"),
        (b"no newline", b"no newline\n"),
        (b"crlf\r\n", b"crlf\n"),
        (b"a\nb\n", b"a b\n"),
        ("caf\u00e9 \u2603\n".encode(), "caf\u00e9 \u2603\n".encode()),
        (b"\x1b]0;title\x07x\n", b"]0;titlex\n"),
        ("\u2066iso\u2069\u200f\n".encode(), b"iso\n"),
        (b"", b"\n"),
    ],
)
def test_printable(datagram: bytes, printed: bytes) -> None:
    assert FORWARDER.printable(datagram) == printed


def test_line_cutter_keeps_a_bounded_part_of_each_line() -> None:
    limit = 100
    text = "a" * 10_000 + "\nshort\n" + "b" * 250 + "\nlast without newline"
    cutter = FORWARDER.LineCutter(limit)
    sizes: list[int] = []

    class Recording(io.StringIO):
        def readline(self, size: int | None = -1) -> str:
            assert size is not None and 0 < size <= limit
            sizes.append(size)
            return super().readline(size)

    got = list(cutter.lines(Recording(text)))
    assert got == ["a" * limit, "short\n", "b" * limit, "last without newline"]
    assert sizes


def test_line_cutter_joins_a_line_written_in_pieces() -> None:
    cutter = FORWARDER.LineCutter(1000)
    assert cutter.feed("par") is None
    assert cutter.feed("tial") is None
    assert cutter.feed(" line\n") == "partial line\n"
    assert cutter.feed("next\n") == "next\n"


def test_sink_mode_cuts_a_huge_stdin_line(receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(SCRIPT), "--sink", f"127.0.0.1:{port}"],
        input=b"x" * 5_000_000 + b"\nafter\n",
        capture_output=True,
        timeout=WAIT * 3,
        cwd="/",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    first, second = recv_lines(receiver, 2)
    assert first.endswith(b"...[truncated]\n") and len(first) <= FORWARDER.DEFAULT_MAX_DATAGRAM
    assert second == b"after\n"
