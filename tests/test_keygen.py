"""generate_api_key.py and iir.cli.keygen: key shape, options and bad input, through a real process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from iir.cli import keygen

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "generate_api_key.py"


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    # Run from a neutral directory with -I-like isolation of the venv: the checkout root must
    # be enough to import iir (sys.path[0] is the script's directory).
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        check=False,
    )


def test_documented_invocation_prints_prefixed_key() -> None:
    result = run_script("--length", "40", "--prefix", "myservice")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"myservice_[A-Za-z0-9]{40}", lines[0])


def test_default_key_is_40_alphanumerics() -> None:
    result = run_script()
    assert result.returncode == 0
    assert re.fullmatch(r"[A-Za-z0-9]{40}\n", result.stdout)


def test_count_gives_distinct_keys() -> None:
    result = run_script("--count", "50", "--length", "32")
    keys = result.stdout.split()
    assert len(keys) == 50
    assert len(set(keys)) == 50
    assert all(re.fullmatch(r"[A-Za-z0-9]{32}", k) for k in keys)


def test_env_single_and_several() -> None:
    one = run_script("--env", "--prefix", "iir")
    assert re.fullmatch(r"IIR_API_KEY=iir_[A-Za-z0-9]{40}\n", one.stdout)
    several = run_script("--env", "--count", "3")
    name, _, value = several.stdout.strip().partition("=")
    assert name == "IIR_ALLOWED_KEYS"
    keys = value.split(",")
    assert len(keys) == 3 and len(set(keys)) == 3


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--length", "31"], "at least 32"),
        (["--length", "abc"], "not an integer"),
        (["--length", "100000"], "at most"),
        (["--count", "0"], "between 1 and"),
        (["--count", "x"], "not an integer"),
        (["--prefix", "has space"], "prefix must be"),
        (["--prefix", "a=b"], "prefix must be"),
        (["--prefix", ""], "prefix must be"),
        (["--nope"], "unrecognized arguments"),
        (["positional"], "unrecognized arguments"),
    ],
)
def test_bad_options_exit_2_with_message(args: list[str], fragment: str) -> None:
    result = run_script(*args)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_main_returns_codes_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert keygen.main(["--count", "2"]) == 0
    assert len(capsys.readouterr().out.split()) == 2
    assert keygen.main(["--length", "3"]) == 2


def test_add_arguments_reusable_in_subcommand_parser(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="iir")
    sub = parser.add_subparsers(dest="command")
    keygen.add_arguments(sub.add_parser("keygen"))
    args = parser.parse_args(["keygen", "--prefix", "p", "--env"])
    assert keygen.run(args) == 0
    assert capsys.readouterr().out.startswith("IIR_API_KEY=p_")


def test_generate_key_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="between"):
        keygen.generate_key(8)
    with pytest.raises(ValueError, match="integer"):
        keygen.generate_key("40")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefix"):
        keygen.generate_key(40, "bad prefix")


def test_keys_use_whole_alphabet() -> None:
    # A weak source (or a bug limiting the alphabet) would show up as missing characters.
    seen = set("".join(keygen.generate_key(64) for _ in range(200)))
    assert seen == set(keygen.ALPHABET)


def test_script_is_standard_library_only() -> None:
    # Run with -S (no site-packages): only the standard library and the checkout are importable.
    result = subprocess.run(
        [sys.executable, "-S", str(SCRIPT), "--prefix", "x"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("x_")
