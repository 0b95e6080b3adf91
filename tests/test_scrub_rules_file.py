"""An operator's rules in gitleaks' TOML format (``IIR_SCRUB_RULES_FILE``), and ``iir scrub``.

The file below is written the way gitleaks' own configuration is (its semi-generic keyword form,
a prefix form, alternations, per-rule and global allowlists with regexes and stopwords, a rule
on file paths only): a team's existing file must apply at the gateway as it is. A file that
cannot be used stops ``iir serve`` with exit code 2 and names the rule and its line.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from iir.policy.scrub import REDACTED, RulesFileError, Scrubber, load_rules_file

from .harness import IIR

TEAM_RULES = r"""
title = "team rules"

[allowlist]
description = "global allow lists"
regexes = [
    '''^\$(?:\d+|{\d+})$''',
    '''^\${(?:[A-Z_]+|[a-z_]+)}$''',
]
stopwords = ["corpdemo"]

[[rules]]
id = "corp-api-token"
description = "Corp API token"
regex = '''\b(corp_[a-z0-9]{32})(?:[\x60'"\s;]|\\[nr]|$)'''
secretGroup = 1
entropy = 3
keywords = ["corp_"]
[[rules.allowlists]]
description = "the documentation's token"
regexes = ['''corp_0{32}''']

[[rules]]
id = "acme-secret"
description = "Acme client secret, next to its vendor's name"
regex = '''(?i)[\w.-]{0,50}?(?:acme)(?:[ \t\w.-]{0,20})[\s'"]{0,3}(?:=|>|:{1,3}=|\|\||:|=>|\?=|,)[\x60'"\s=]{0,5}([a-z0-9]{24})(?:[\x60'"\s;]|\\[nr]|$)'''
keywords = ["acme"]

[[rules]]
id = "legacy-or-new"
description = "Two generations of one format"
regex = '''\b(?:lgc1_[A-Z0-9]{20}|(?i:lgc2-)[a-f0-9]{30})\b'''
keywords = ["lgc1_", "lgc2-"]

[[rules]]
id = "middle-keyword"
description = "A format found through a literal in its middle"
regex = '''\b[a-z0-9]{14}\.corpv1\.[a-z0-9]{40}\b'''
keywords = ["corpv1"]

[[rules]]
id = "key-files"
description = "Key files, by name"
path = '''\.pem$'''
"""

CORP = "corp_7f3kq9x2m4v8b1n6c5z0w3e7r2t9y4u1"
ACME = "k3j9x7m2q8w4e6r1t5y0u3i7"
LGC1 = "lgc1_Q7W3E9R1T5Y8U2I6O4P0"
LGC2 = "LGC2-" + "9f2c7a1e" * 3 + "4b6d0e"


@pytest.fixture(scope="module")
def rules_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("rules") / "gitleaks.toml"
    p.write_text(TEAM_RULES)
    return p


@pytest.fixture(scope="module")
def scrubber(rules_path: Path) -> Scrubber:
    return Scrubber(extra_rules=load_rules_file(rules_path))


def test_the_rules_load_and_those_that_may_start_anywhere_are_named(rules_path: Path) -> None:
    rules = load_rules_file(rules_path)
    assert rules.names == ["user_corp_api_token", "user_acme_secret", "user_legacy_or_new"]
    [why] = rules.skipped
    line = TEAM_RULES[: TEAM_RULES.index('id = "middle-keyword"')].count("\n")  # its [[rules]]
    assert "middle-keyword" in why and f"line {line}" in why and "may start with any" in why


@pytest.mark.parametrize(
    ("text", "secret", "rule"),
    [
        (f"export CORP_CRED={CORP}\n", CORP, "user_corp_api_token"),
        (f'ACME_CLIENT = "{ACME}"', ACME, "user_acme_secret"),
        (f"acme.secret: {ACME}", ACME, "user_acme_secret"),
        (f"old {LGC1} and", LGC1, "user_legacy_or_new"),
        (f"new {LGC2} too", LGC2, "user_legacy_or_new"),
    ],
)
def test_an_operators_rules_redact_the_secret_group_in_every_wrapper(
    scrubber: Scrubber, text: str, secret: str, rule: str
) -> None:
    got, counts = scrubber.scrub_text(text)
    assert got == text.replace(secret, REDACTED) and counts.get(rule) == 1, (got, counts)
    for wrapped in (
        json.dumps({"content": text}),
        urllib.parse.quote(text, safe=""),
    ):
        got, _ = scrubber.scrub_text(wrapped)
        assert secret not in got and urllib.parse.quote(secret, safe="") not in got, got
        assert REDACTED in got
    # Split anywhere in a stream: the same.
    for cut in range(1, len(text)):
        s = scrubber.stream()
        assert s.push(text[:cut]) + s.push(text[cut:]) + s.finish() == text.replace(
            secret, REDACTED
        )


@pytest.mark.parametrize(
    "text",
    [
        "export CORP_CRED=corp_" + "0" * 32 + "\n",  # the rule's allowlist
        "ACME_CLIENT = corpdemo7x2m4v8b1n6c5z0w",  # a global stopword
        "acme_key = ${ACME_KEY}",  # a global allowlist regex (and no 24-character value)
        "see lgc1_ in the manual",
        "acmecorp_tools = 12",
    ],
)
def test_the_allowlists_apply(scrubber: Scrubber, text: str) -> None:
    assert scrubber.scrub_text(text) == (text, {})


def test_the_built_in_rules_still_apply_beside_an_operators(scrubber: Scrubber) -> None:
    gh = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    got, counts = scrubber.scrub_text(f"{gh} {CORP}")
    assert got == f"{REDACTED} {REDACTED}"
    assert counts["user_corp_api_token"] == 1 and sum(counts.values()) == 2


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            "[[rules]]\nid = 'a'\nregex = 'corp_[a-z]{4}'\n\n[[rules]]\nid = 'b'\n"
            "regex = '(x)\\1'\n",
            5,
            "back-references",
        ),
        ("[[rules]]\nid = 'a'\nregex = 'corp_[a-z'\n", 1, "not closed"),
        ("title = 'x'\n[[rules]\n", 2, ""),
        ("[[rules]]\nid = 'a'\n", 1, "needs a `regex`"),
        (
            "[[rules]]\nid = 'a'\nregex = 'corp_[a-z]{4}'\n[[rules.allowlists]]\n"
            "regexTarget = 'file'\n",
            1,
            "regexTarget",
        ),
    ],
)
def test_a_bad_file_names_its_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(RulesFileError) as err:
        load_rules_file(p)
    assert str(p) in str(err.value) and f"line {line}" in str(err.value), err.value
    assert message in str(err.value)


def test_unreadable_and_binary_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(RulesFileError, match="cannot be read"):
        load_rules_file(tmp_path / "missing.toml")
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RulesFileError, match="not UTF-8"):
        load_rules_file(p)


def test_skipped_rules_are_logged_once_at_start(
    rules_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="iir.policy.scrub"):
        Scrubber.from_environ({}, rules_file=rules_path)
    [rec] = [r for r in caplog.records if r.name == "iir.policy.scrub"]
    assert "middle-keyword" in rec.getMessage() and "left out" in rec.getMessage()


# --- the command line ----------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IIR_")}
    return {**base, **extra}


def _run(args: list[str], stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IIR, *args], input=stdin, env=_env(**env), capture_output=True, text=True, timeout=60
    )


def test_iir_scrub_writes_the_text_scrubbed_and_the_rules_that_fired(rules_path: Path) -> None:
    gh = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    text = f"line one {gh}\nCORP_CRED={CORP}\n" + "plain words\n" * 20_000
    res = _run(["scrub"], text, IIR_SCRUB_RULES_FILE=str(rules_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout == text.replace(gh, REDACTED).replace(CORP, REDACTED)
    lines = res.stderr.splitlines()
    assert "github_pat: 1" in lines and "user_corp_api_token: 1" in lines, res.stderr
    assert any("middle-keyword" in line and "left out" in line for line in lines)
    # --rules wins over the setting, and no rules file means the built-in table only.
    res = _run(["scrub"], f"CORP_CRED={CORP}\n")
    assert (res.returncode, res.stdout) == (0, f"CORP_CRED={CORP}\n")


def test_iir_scrub_with_a_bad_rules_file_exits_2(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[[rules]]\nid = 'b'\nregex = '(x)\\1'\n")
    res = _run(["scrub", "--rules", str(p)], "text")
    assert res.returncode == 2 and "line 1" in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == ""


def test_serve_exits_2_on_a_bad_rules_file(tmp_path: Path) -> None:
    p = tmp_path / "rules.toml"
    p.write_text(
        "[[rules]]\nid = 'ok'\nregex = 'corp_[a-z]{4}'\n\n[[rules]]\nid = 'bad'\n"
        "regex = '[a-z]{3}('\n"
    )
    proc = subprocess.run(
        [IIR, "serve", "--port", "0"],
        env={"IIR_API_KEY": "k" * 32, "IIR_SCRUB_RULES_FILE": str(p), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "IIR_SCRUB_RULES_FILE=" in proc.stderr and "line 5" in proc.stderr, proc.stderr
    assert '"bad"' in proc.stderr and "Traceback" not in proc.stderr


def test_doctor_names_the_rules_left_out(rules_path: Path, tmp_path: Path) -> None:
    env = {
        "IIR_API_KEY": "doctor-key-0123456789abcdef0123456789",
        "IIR_DATA_DIR": str(tmp_path),
        "IIR_SCRUB_RULES_FILE": str(rules_path),
    }
    res = _run(["doctor"], **env)
    [row] = [line for line in res.stdout.splitlines() if "secret rules" in line]
    assert row.startswith("warn") and "3 from" in row and "middle-keyword" in row, row
    res = _run(["doctor"], **{**env, "IIR_SCRUB_RULES_FILE": ""})
    [row] = [line for line in res.stdout.splitlines() if "secret rules" in line]
    assert row.startswith("ok") and "built-in rules" in row and "from" not in row, row
