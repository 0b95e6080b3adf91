"""The ``iir`` command: ``iir serve``, ``iir keygen``, ``iir doctor``, ``iir jobs``,
``iir scrub``, ``iir version``.

Exit codes: 0 success, 2 bad arguments or configuration (one clear line on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys

from iir import __version__
from iir.cli import keygen, scrub


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
    j = sub.add_parser(
        "jobs",
        help="list, show or cancel async jobs (the local database, or IIR_JOB_STORE_URL's)",
    )
    jsub = j.add_subparsers(dest="jobs_command", metavar="ACTION")
    jsub.required = True
    jl = jsub.add_parser("list", help="newest jobs first (summaries, no payloads)")
    jl.add_argument("--status", help="only jobs in this state (pending, running, succeeded, ...)")
    jl.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    js = jsub.add_parser("show", help="one job with its scrubbed request, result and error")
    js.add_argument("job_id")
    jc = jsub.add_parser("cancel", help="mark a pending or running job cancelled")
    jc.add_argument("job_id")
    for parser in (jl, js, jc):
        parser.add_argument(
            "--env-file", help="env file to read IIR_DATA_DIR or IIR_JOB_STORE_URL from"
        )
        parser.add_argument(
            "--data-dir",
            help="data directory of a SQLite store (default: IIR_DATA_DIR or ./var; "
            "with IIR_JOB_STORE_URL set, the shared store is used unless this is given)",
        )
    k = sub.add_parser("keygen", help="print new API keys (from the OS's secure random source)")
    keygen.add_arguments(k)
    sc = sub.add_parser("scrub", help="scrub stdin to stdout; the rules that fired go to stderr")
    scrub.add_arguments(sc)
    return p


def _serve(args: argparse.Namespace) -> int:
    from iir.cli.checks import load_config
    from iir.core.settings import ConfigError

    environ = dict(os.environ)
    if args.host:
        environ["IIR_HOST"] = args.host
    if args.port is not None:
        environ["IIR_PORT"] = str(args.port)
    try:
        settings = load_config(environ, args.env_file)
        from iir.cli.serve import serve

        serve(settings, args.env_file)
    except ConfigError as exc:
        print(f"iir: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from pathlib import Path

    import orjson

    from iir.core.settings import ConfigError, merged_env
    from iir.store import jobs
    from iir.store.sqlite import StoreError

    try:
        env = merged_env(os.environ, args.env_file)
        url = env.get("IIR_JOB_STORE_URL", "").strip()
        if url and not args.data_dir:
            return _shared_jobs(args, url)
        data_dir = Path(args.data_dir or env.get("IIR_DATA_DIR", "").strip() or "./var")
        if args.jobs_command == "list":
            rows = jobs.list_jobs(data_dir, args.status, args.limit)
            for row in rows:
                print(orjson.dumps(row).decode())
            return 0
        if args.jobs_command == "show":
            job = jobs.show_job(data_dir, args.job_id)
            if job is None:
                print(f"iir: no job {args.job_id}", file=sys.stderr)
                return 1
            print(orjson.dumps(job, option=orjson.OPT_INDENT_2).decode())
            return 0
        before = jobs.cancel_job_offline(data_dir, args.job_id)
    except (ConfigError, StoreError) as exc:
        print(f"iir: {exc}", file=sys.stderr)
        return 2
    if before is None:
        print(f"iir: no job {args.job_id}", file=sys.stderr)
        return 1
    print(
        f"{args.job_id}: {before} -> cancelled"
        if before in ("pending", "running")
        else f"{args.job_id}: already {before}"
    )
    return 0


def _shared_jobs(args: argparse.Namespace, url: str) -> int:
    """``iir jobs`` against the fleet's PostgreSQL job store (``IIR_JOB_STORE_URL``)."""
    import asyncio

    import orjson

    from iir.store.pgjobs import operate

    job_id = getattr(args, "job_id", "")
    out = asyncio.run(
        operate(url, args.jobs_command, job_id, getattr(args, "status", None), args.limit)
        if args.jobs_command == "list"
        else operate(url, args.jobs_command, job_id)
    )
    if args.jobs_command == "list":
        for row in out:
            print(orjson.dumps(row).decode())
        return 0
    if out is None:
        print(f"iir: no job {job_id}", file=sys.stderr)
        return 1
    if args.jobs_command == "show":
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(
        f"{job_id}: {out} -> cancelled"
        if out in ("pending", "running")
        else f"{job_id}: already {out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "doctor":
        from iir.cli import doctor

        return doctor.main(os.environ, args.env_file, args.timeout)
    if args.command == "jobs":
        return _jobs(args)
    if args.command == "keygen":
        return keygen.run(args)
    if args.command == "scrub":
        return scrub.run(args)
    if args.command == "version":
        print(__version__)
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands first


if __name__ == "__main__":
    sys.exit(main())
