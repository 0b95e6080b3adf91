"""The ``iir`` command: ``iir serve``, ``iir keygen``, ``iir doctor``, ``iir version``.

Exit codes: 0 success, 2 bad arguments or configuration (one clear line on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__, keygen


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iir", description="IIR, the Intelligent Inference Router.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    s = sub.add_parser("serve", help="serve the API (Granian, one worker)")
    s.add_argument("--host", help="address to bind (default: IIR_HOST or 127.0.0.1)")
    s.add_argument("--port", type=int, help="port to bind (default: IIR_PORT or 8000)")
    s.add_argument("--env-file", help="env file to load; the environment wins over it")
    sub.add_parser("version", help="print the version")
    d = sub.add_parser("doctor", help="check configuration, data, database, GPU, vLLM, providers")
    d.add_argument("--env-file", help="env file to check and load; the environment wins over it")
    d.add_argument("--timeout", type=float, default=3.0, help="seconds per provider probe")
    k = sub.add_parser("keygen", help="print new API keys (from the OS's secure random source)")
    keygen.add_arguments(k)
    return p


def _serve(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_settings

    environ = dict(os.environ)
    if args.host:
        environ["IIR_HOST"] = args.host
    if args.port is not None:
        environ["IIR_PORT"] = str(args.port)
    try:
        settings = load_settings(environ, args.env_file)
        from .server import serve

        serve(settings, args.env_file)
    except ConfigError as exc:
        print(f"iir: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "doctor":
        from . import doctor

        return doctor.main(os.environ, args.env_file, args.timeout)
    if args.command == "keygen":
        return keygen.run(args)
    if args.command == "version":
        print(__version__)
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands first


if __name__ == "__main__":
    sys.exit(main())
