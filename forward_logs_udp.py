#!/usr/bin/env python3
"""Forward log lines to a UDP sink, or receive and print them (standard library only, Python 3.8+).

python forward_logs_udp.py --sink 10.0.0.5:9999 --file /var/log/iir/iir.log   # follow a file
journalctl -u iir -f -o cat | python forward_logs_udp.py --sink 10.0.0.5:9999  # from stdin
python forward_logs_udp.py --listen 9999                                       # receiving side
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import stat
import sys

from iir.ops.logforward import (
    UdpSender,
    follow,
    forward,
    listen,
    parse_port,
    parse_sink,
)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forward_logs_udp.py",
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
        sys.stderr.write(f"forward_logs_udp.py: cannot listen on {args.bind}:{port}: {exc}\n")
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
    sender = UdpSender((host, port))
    try:
        if args.file is not None:
            forward(follow(args.file, from_start=args.from_start), sender)
        else:
            # Undecodable bytes must not stop the forwarder: replace them.
            stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
            forward(stdin, sender)
    except OSError as exc:
        sys.stderr.write(f"forward_logs_udp.py: cannot read {args.file or 'stdin'}: {exc}\n")
        return 1
    finally:
        sender.close(timeout=5.0)
        if sender.dropped:
            sys.stderr.write(f"forward_logs_udp.py: {sender.dropped} line(s) dropped\n")
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
