"""API key generation from the OS's secure random source (standard library only).

Shared by ``generate_api_key.py``, ``iir keygen`` and the package's post-install script, so every
key an operator sees has the same shape: ``[prefix_]<random alphanumerics>``.
"""

from __future__ import annotations

import argparse
import re
import secrets
import string
import sys
from collections.abc import Sequence

ALPHABET = string.ascii_letters + string.digits
MIN_LENGTH = 32
DEFAULT_LENGTH = 40
MAX_LENGTH = 512
MAX_COUNT = 1000
PREFIX_SEPARATOR = "_"
# Keys travel in env files and Authorization headers: keep prefixes to characters that need no quoting.
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


def validate_prefix(prefix: str) -> str:
    """Reject prefixes that would need quoting in an env file or header."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            "prefix must be 1-32 characters of letters, digits, '_' or '-', starting with a "
            f"letter or digit (got {prefix!r})"
        )
    return prefix


def generate_key(length: int = DEFAULT_LENGTH, prefix: str | None = None) -> str:
    """Return one key; ``length`` counts the random characters only, so the prefix adds no entropy."""
    if isinstance(length, bool) or not isinstance(length, int):
        raise ValueError(f"length must be an integer (got {length!r})")
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise ValueError(f"length must be between {MIN_LENGTH} and {MAX_LENGTH} (got {length})")
    body = "".join(secrets.choice(ALPHABET) for _ in range(length))
    if prefix:
        return validate_prefix(prefix) + PREFIX_SEPARATOR + body
    return body


def format_env(keys: Sequence[str]) -> str:
    """One key is the single-key variable; several go comma-separated into the allow-list."""
    if len(keys) == 1:
        return f"IIR_API_KEY={keys[0]}"
    return "IIR_ALLOWED_KEYS=" + ",".join(keys)


def _length_arg(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < MIN_LENGTH:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_LENGTH} (got {value})")
    if value > MAX_LENGTH:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_LENGTH} (got {value})")
    return value


def _count_arg(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_COUNT} (got {value})")
    return value


def _prefix_arg(text: str) -> str:
    try:
        return validate_prefix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the key options on ``parser`` so ``iir keygen`` and the script accept the same ones."""
    parser.add_argument(
        "--length",
        type=_length_arg,
        default=DEFAULT_LENGTH,
        help=f"random characters per key, at least {MIN_LENGTH} (default {DEFAULT_LENGTH})",
    )
    parser.add_argument(
        "--prefix",
        type=_prefix_arg,
        default=None,
        help="label put before the random part, joined with '_' (e.g. myservice)",
    )
    parser.add_argument(
        "--count",
        type=_count_arg,
        default=1,
        help=f"how many keys to print, 1-{MAX_COUNT} (default 1)",
    )
    parser.add_argument(
        "--env",
        action="store_true",
        help="print as an env-file line: IIR_API_KEY=... or, with --count > 1, IIR_ALLOWED_KEYS=...",
    )


def run(args: argparse.Namespace) -> int:
    """Print keys for already-parsed options (the ``iir keygen`` subcommand calls this)."""
    keys = [generate_key(args.length, args.prefix) for _ in range(args.count)]
    if args.env:
        print(format_env(keys))
    else:
        print("\n".join(keys))
    return 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Generate API keys for IIR from the operating system's secure random source.",
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv`` and print keys; bad options exit with code 2 and a usage message."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
