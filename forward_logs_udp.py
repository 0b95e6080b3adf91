#!/usr/bin/env python3
"""Forward log lines to a UDP sink, or receive and print them.

One file, standard library only, Python 3.8+: copy it to any machine and run it with ``python3``.

python3 forward_logs_udp.py --sink 10.0.0.5:9999 --file /var/log/iir/iir.log   # follow a file
journalctl -u iir -f -o cat | python3 forward_logs_udp.py --sink 10.0.0.5:9999  # from stdin
python3 forward_logs_udp.py --listen 9999                                       # receiving side

Sending: each line becomes one datagram of at most 1200 bytes (cut lines end with a marker).
When IIR is importable (for example run with IIR's own interpreter, /opt/iir/venv/bin/python),
every line is first scrubbed with IIR's scrubber: its rules plus the values of this process's
secret environment variables. Otherwise lines go as they are, and the script says so once.

Receiving: each datagram is printed as one line with its control characters removed, so a
datagram can neither drive the terminal (colours, cursor moves, clearing) nor forge a second line.

IIR's in-process sender behind ``REMOTE_LOG_SINK`` (``iir.ops.logforward``) keeps its own queue and
thread; it shares with this file only the sink syntax and the datagram format, and the tests run
both copies of those functions against the same cases.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO

PROG = "forward_logs_udp.py"
# Stays under the IPv6 minimum MTU (1280) minus headers, so a datagram is never fragmented.
DEFAULT_MAX_DATAGRAM = 1200
TRUNCATION_MARKER = "...[truncated]"
# The longest part of one line kept in memory; a datagram carries far less of it anyway.
MAX_LINE_CHARS = 64 * 1024
WARN_INTERVAL_S = 60.0
RESOLVE_RETRY_S = 5.0
RERESOLVE_S = 300.0


# --- shared with iir.ops.logforward (the tests hold both copies to the same cases) ----------------


def parse_sink(text: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6addr]:port``) and check both halves; raise ValueError if bad."""
    value = text.strip() if isinstance(text, str) else ""
    if not value:
        raise ValueError("log sink is empty; expected host:port, e.g. 10.0.0.5:9999 or [::1]:9999")
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or not value[end + 1 :].startswith(":"):
            raise ValueError(f"log sink {text!r} is not [ipv6-address]:port")
        host, port_text = value[1:end], value[end + 2 :]
        if not host:
            raise ValueError(f"log sink {text!r} has an empty address between the brackets")
    else:
        if value.count(":") != 1:
            if value.count(":") > 1:
                raise ValueError(
                    f"log sink {text!r} is ambiguous; write an IPv6 address in brackets: [::1]:9999"
                )
            raise ValueError(f"log sink {text!r} has no port; expected host:port")
        host, port_text = value.split(":", 1)
        if not host:
            raise ValueError(f"log sink {text!r} has no host; expected host:port")
    if any(ch.isspace() for ch in host):
        raise ValueError(f"log sink {text!r} has whitespace in the host")
    return host, parse_port(port_text, what=f"log sink {text!r}")


def parse_port(text: str, what: str = "port", allow_zero: bool = False) -> int:
    """Parse a UDP port number with a message that says which value was wrong."""
    low = 0 if allow_zero else 1
    if not text.isdigit():
        raise ValueError(f"{what}: port must be a number from {low} to 65535 (got {text!r})")
    port = int(text)
    if not low <= port <= 65535:
        raise ValueError(f"{what}: port must be from {low} to 65535 (got {port})")
    return port


def truncate_line(line: str, max_bytes: int = DEFAULT_MAX_DATAGRAM) -> bytes:
    """Encode ``line`` as one newline-terminated datagram of at most ``max_bytes`` UTF-8 bytes.

    A cut never splits a multi-byte character, and the marker shows the receiver the line was cut.
    """
    data = line.rstrip("\r\n").encode("utf-8", "replace") + b"\n"
    if len(data) <= max_bytes:
        return data
    tail = (TRUNCATION_MARKER + "\n").encode("utf-8")
    keep = max(0, max_bytes - len(tail))
    head = data[:keep].decode("utf-8", "ignore").encode("utf-8")
    return head + tail


# --- sending -----------------------------------------------------------------------------------


def note(message: str) -> None:
    """One line on stderr, prefixed with the script's name."""
    try:
        sys.stderr.write(f"{PROG}: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass


class Sender:
    """Sends each line as one datagram from the calling thread; drops and counts what cannot go.

    A UDP send never waits for the receiver, so the forwarder needs no queue: the reader simply
    sends each line in turn. An unresolvable host is retried every few seconds (lines are dropped
    meanwhile) and a resolved one is looked up again now and then, so a moved sink is followed.
    """

    def __init__(
        self,
        host: str,
        port: int,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
        warn: Callable[[str], None] = note,
        warn_interval: float = WARN_INTERVAL_S,
    ) -> None:
        self.host = host
        self.port = port
        self.max_datagram = max_datagram
        self.sent = 0
        self.dropped = 0
        self._warn_to = warn
        self._warn_interval = warn_interval
        self._last_warned: dict[str, float] = {}
        self._sock: socket.socket | None = None
        self._addr: tuple[object, ...] | None = None
        self._resolved_at = 0.0
        self._next_resolve = 0.0

    @property
    def sink(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def send(self, line: str) -> bool:
        """Send one line; False (and counted in ``dropped``) if it could not be sent."""
        if not self._resolve() or self._sock is None or self._addr is None:
            self.dropped += 1
            return False
        try:
            self._sock.sendto(truncate_line(line, self.max_datagram), self._addr)
        except OSError as exc:
            self.dropped += 1
            self._warn("send", f"cannot send to {self.sink} ({exc}); dropping lines")
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        last = self._last_warned.get(kind)
        if last is not None and now - last < self._warn_interval:
            return
        self._last_warned[kind] = now
        self._warn_to(message)

    def _resolve(self) -> bool:
        now = time.monotonic()
        if self._addr is not None and now - self._resolved_at < RERESOLVE_S:
            return True
        if self._addr is None and now < self._next_resolve:
            return False
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            self._next_resolve = now + RESOLVE_RETRY_S
            if self._addr is not None:
                self._resolved_at = now  # keep the last good address; retry later
                return True
            self._warn(
                "resolve", f"cannot resolve {self.sink} ({exc}); dropping lines until it does"
            )
            return False
        family, socktype, proto, _, addr = infos[0]
        if self._sock is None or self._sock.family != family:
            if self._sock is not None:
                self._sock.close()
            self._sock = socket.socket(family, socktype, proto)
        self._addr = addr
        self._resolved_at = now
        return True


class LineCutter:
    """Joins the chunks of one line and keeps at most ``limit`` characters of it.

    The rest of a longer line is skipped, so memory stays bounded whatever the input; the parts
    are joined once per line, so the cost stays linear however small the chunks.
    """

    def __init__(self, limit: int = MAX_LINE_CHARS) -> None:
        self.limit = limit
        self._parts: list[str] = []
        self._size = 0
        self._skipping = False

    def room(self) -> int:
        """How many characters to read next (a ``readline`` size)."""
        return self.limit if self._skipping else max(1, self.limit - self._size)

    def feed(self, chunk: str) -> str | None:
        """Take a ``readline`` result; return a line once it is complete or reaches the limit."""
        complete = chunk.endswith("\n")
        if self._skipping:
            self._skipping = not complete
            return None
        self._parts.append(chunk)
        self._size += len(chunk)
        if complete or self._size >= self.limit:
            self._skipping = not complete
            return self.flush_partial()
        return None

    def flush_partial(self) -> str:
        """What is held of the current line (at the end of the input, or of a rotated file)."""
        line = "".join(self._parts)
        self._parts = []
        self._size = 0
        return line

    def lines(self, stream: IO[str]) -> Iterator[str]:
        """Every line of ``stream`` until its end, each cut to the limit."""
        while True:
            chunk = stream.readline(self.room())
            if not chunk:
                break
            line = self.feed(chunk)
            if line is not None:
                yield line
        rest = self.flush_partial()
        if rest:
            yield rest


def _open_text(path: str) -> IO[str]:
    return open(path, encoding="utf-8", errors="replace", newline="")


def follow(
    path: str, from_start: bool = False, poll: float = 0.25, limit: int = MAX_LINE_CHARS
) -> Iterator[str]:
    """Yield lines appended to ``path`` like ``tail -F``: survives truncation and rotation."""
    cutter = LineCutter(limit)
    handle = _open_text(path)
    try:
        if not from_start:
            handle.seek(0, os.SEEK_END)
        inode = os.fstat(handle.fileno()).st_ino
        while True:
            chunk = handle.readline(cutter.room())
            if chunk:
                line = cutter.feed(chunk)
                if line is not None:
                    yield line
                continue
            try:
                current = os.stat(path)
            except FileNotFoundError:
                time.sleep(poll)
                continue
            if current.st_ino != inode:
                # Rotated: finish the old file (the writer may have added to it), then the new one.
                try:
                    new = _open_text(path)
                except FileNotFoundError:
                    time.sleep(poll)
                    continue
                yield from cutter.lines(handle)
                handle.close()
                handle = new
                inode = os.fstat(handle.fileno()).st_ino
                continue
            if current.st_size < handle.tell():
                handle.seek(0)  # truncated in place
                continue
            time.sleep(poll)
    finally:
        handle.close()


def iir_scrubber() -> Callable[[str], str] | None:
    """IIR's scrubber with this process's secret environment values, or None without IIR."""
    try:
        from iir.policy.scrub import Scrubber

        scrub_text = Scrubber.from_environ().scrub_text
    except Exception as exc:  # not installed here, or an install without its native part
        note(f"IIR is not importable here ({exc}); lines are sent as they are, not scrubbed")
        return None

    def scrub(line: str) -> str:
        return scrub_text(line)[0]

    return scrub


def forward(lines: Iterable[str], sender: Sender, scrub: Callable[[str], str] | None = None) -> int:
    """Send each non-blank line (scrubbed first when a scrubber is given); return how many went."""
    count = 0
    for line in lines:
        if not line.strip():
            continue
        if scrub is not None:
            try:
                line = scrub(line)
            except Exception:
                sender.dropped += 1  # never send a line that could not be scrubbed
                continue
        if sender.send(line):
            count += 1
    return count


# --- receiving ---------------------------------------------------------------------------------

# C0 controls (tab, CR and LF become a space; the rest go), DEL, C1 controls, and the Unicode
# marks that reorder or break displayed text (bidi embeddings, overrides and isolates, line and
# paragraph separators).
_TERMINAL_SAFE = {code: None for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_TERMINAL_SAFE.update(dict.fromkeys((0x09, 0x0A, 0x0D), " "))
_TERMINAL_SAFE.update(
    dict.fromkeys((0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F)))
)
_TERMINAL_SAFE.update(dict.fromkeys(range(0x2066, 0x206A)))


def printable(datagram: bytes) -> bytes:
    """One datagram as one output line: UTF-8, control characters removed, one newline added."""
    text = datagram.decode("utf-8", "replace").rstrip("\r\n")
    return (text.translate(_TERMINAL_SAFE) + "\n").encode("utf-8")


def listen(
    port: int,
    host: str = "0.0.0.0",
    out: IO[bytes] | None = None,
    ready: Callable[[tuple[str, int]], None] | None = None,
) -> None:
    """Print every datagram that arrives on ``host:port`` as one line, until interrupted."""
    stream = out if out is not None else sys.stdout.buffer
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
        if ready is not None:
            bound = sock.getsockname()
            ready((str(bound[0]), int(bound[1])))
        while True:
            data, _ = sock.recvfrom(65535)
            stream.write(printable(data))
            stream.flush()
    finally:
        sock.close()


# --- command line ------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Send log lines as UDP datagrams to host:port, or listen and print them.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--sink", metavar="HOST:PORT", help="where to send lines ([v6addr]:port too)")
    mode.add_argument("--listen", metavar="PORT", help="receive on PORT and print each datagram")
    parser.add_argument(
        "--file",
        metavar="PATH",
        help="with --sink: follow PATH like tail -F instead of reading stdin",
    )
    parser.add_argument(
        "--from-start",
        action="store_true",
        help="with --file: send the lines already in the file before following it",
    )
    parser.add_argument(
        "--bind",
        metavar="HOST",
        default="0.0.0.0",
        help="with --listen: address to bind (default 0.0.0.0; '::' for IPv6)",
    )
    return parser


def _on_term(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _listen(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        port = parse_port(args.listen, what="--listen", allow_zero=True)
    except ValueError as exc:
        parser.error(str(exc))

    def ready(bound: tuple[str, int]) -> None:
        sys.stderr.write(f"listening on {bound[0]}:{bound[1]}/udp\n")
        sys.stderr.flush()

    try:
        listen(port, host=args.bind, ready=ready)
    except OSError as exc:
        note(f"cannot listen on {args.bind}:{port}: {exc}")
        return 1
    return 0


def _send(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        host, port = parse_sink(args.sink)
    except ValueError as exc:
        parser.error(str(exc))
    if args.file is not None:
        try:
            mode = os.stat(args.file).st_mode
        except FileNotFoundError:
            parser.error(f"--file {args.file!r}: no such file")
        except OSError as exc:
            parser.error(f"--file {args.file!r}: {exc.strerror}")
        if not stat.S_ISREG(mode):
            parser.error(f"--file {args.file!r}: not a regular file")
    scrub = iir_scrubber()
    sender = Sender(host, port)
    try:
        if args.file is not None:
            lines = follow(args.file, from_start=args.from_start)
        else:
            # Undecodable bytes must not stop the forwarder: replace them.
            stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
            lines = LineCutter().lines(stdin)
        forward(lines, sender, scrub)
    except OSError as exc:
        note(f"cannot read {args.file or 'stdin'}: {exc}")
        return 1
    finally:
        sender.close()
        if sender.dropped:
            note(f"{sender.dropped} line(s) dropped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.listen is not None and args.file is not None:
        parser.error("--file only goes with --sink")
    if args.listen is None and args.bind != "0.0.0.0":
        parser.error("--bind only goes with --listen")
    if args.from_start and args.file is None:
        parser.error("--from-start only goes with --file")
    signal.signal(signal.SIGTERM, _on_term)
    try:
        if args.listen is not None:
            return _listen(args, parser)
        return _send(args, parser)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (e.g. piped into head); exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
