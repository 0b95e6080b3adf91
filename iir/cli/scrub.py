"""``iir scrub``: stdin through the gateway's scrubber to stdout, to try text by hand.

The same rules as ``iir serve`` (the built-in table, ``IIR_SCRUB_RULES_FILE`` or ``--rules``, and
the values of the secret variables of the environment and the env file); the rules that fired go
to stderr as ``rule: count`` lines. The text is read and written in chunks through the streaming
scrubber, whose output equals a one-shot scrub of the whole input.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

CHUNK = 64 * 1024


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env-file", help="env file to read IIR_SCRUB_RULES_FILE and secrets from")
    p.add_argument("--rules", help="extra rules in gitleaks' TOML format (default: the setting)")


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    from iir.core.settings import ConfigError, merged_env
    from iir.policy.scrub import RulesFileError, Scrubber, load_rules_file, secret_values

    src = stdin or sys.stdin
    out = stdout or sys.stdout
    try:
        env = merged_env(os.environ, args.env_file)
        rules_file = args.rules or env.get("IIR_SCRUB_RULES_FILE", "").strip() or None
        extra = load_rules_file(rules_file) if rules_file else None
    except (ConfigError, RulesFileError) as exc:
        print(f"iir: {exc}", file=sys.stderr)
        return 2
    for why in extra.skipped if extra else ():
        print(f"iir: {rules_file}: {why} left out", file=sys.stderr)
    scrubber = Scrubber([*secret_values(env)], extra)
    stream = scrubber.stream()
    while chunk := src.read(CHUNK):
        out.write(stream.push(chunk))
    out.write(stream.finish())
    out.flush()
    for rule, n in sorted(stream.counts.items()):
        print(f"{rule}: {n}", file=sys.stderr)
    return 0
