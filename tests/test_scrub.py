"""Secret scrubbing: planted secrets never survive; everything else is untouched."""

from __future__ import annotations

import base64
import copy
import json
import re
import sys
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iir import _native
from iir.policy.scrub import (
    MIN_ENV_SECRET_LEN,
    REDACTED,
    Scrubber,
    ScrubError,
    is_secret_name,
    secret_values,
)
from tests.secret_samples import MAKERS, SURVIVORS, make

ENV = {
    "OPENAI_API_KEY": "env-openai-value-7Hq2",
    "DB_PASSWORD": 'p@ss"w0rd/with\\odd chars',
    "IIR_AUTH_TOKENS": "iir-admin-4f1d9c2b",
    "SHORT_SECRET": "short",
    "HOME": "/root/not-a-secret-value",
}
SCRUBBER = Scrubber.from_environ(ENV, extra_secrets=["provider-key-Zx81kq0p"])

WRAPPERS = {
    "plain": "here it is {} thanks",
    "json": '{{"role": "user", "content": "my key is {}"}}',
    "code": 'client = OpenAI(api_key="{}")\nprint(client.models.list())',
    "yaml": "providers:\n  openai:\n    api_key: {}\n    timeout: 30\n",
    "env": "export SOME_VALUE={}\n",
    "url": "https://api.example.com/v1/callback?code=x&access_token={}&state=2",
    "url_password": "redis://default:{}@cache.internal:6379/0",
    "markdown": "Run `curl -H 'Authorization: Bearer {}' https://x.y` then **done**.",
    "log": "2025-06-01T12:00:00Z ERROR auth failed for key {} (status=401)",
    "header": "Authorization: Bearer {}\r\nContent-Type: application/json",
    "quoted": "the value '{}' leaked",
}

seeds = st.integers(min_value=0, max_value=2**63)
rules = st.sampled_from(sorted(MAKERS))
wrappers = st.sampled_from(sorted(WRAPPERS))
fillers = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60
).map(lambda s: s + " ")


def scrub(text: str) -> str:
    return SCRUBBER.scrub_text(text)[0]


def stream(text: str, cuts: list[int]) -> str:
    s = SCRUBBER.stream()
    points = sorted({c % (len(text) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(text)]:
        out.append(s.push(text[last:p]))
        last = p
    out.append(s.finish())
    return "".join(out)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules, seeds, wrappers, fillers, fillers)
def test_no_planted_secret_survives_any_wrapper(
    rule: str, seed: int, wrapper: str, before: str, after: str
) -> None:
    secret = make(rule, seed)
    text = before + "\n" + WRAPPERS[wrapper].format(secret) + "\n" + after
    clean, counts = SCRUBBER.scrub_text(text)
    assert secret not in clean
    assert REDACTED in clean
    assert sum(counts.values()) >= 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules, seeds, wrappers, fillers, st.lists(st.integers(0, 10_000), max_size=12))
def test_stream_equals_one_shot_and_hides_split_secrets(
    rule: str, seed: int, wrapper: str, before: str, cuts: list[int]
) -> None:
    secret = make(rule, seed)
    text = before + "\n" + WRAPPERS[wrapper].format(secret) + "\nbye"
    streamed = stream(text, cuts)
    assert streamed == scrub(text)
    assert secret not in streamed


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.lists(st.integers(0, 1000), max_size=20))
def test_stream_equals_one_shot_on_any_text(text: str, cuts: list[int]) -> None:
    assert stream(text, cuts) == scrub(text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(rules, seeds, fillers), min_size=2, max_size=5), st.integers(1, 40))
def test_interleaved_and_abandoned_streams_do_not_disturb_each_other(
    texts: list[tuple[str, int, str]], step: int
) -> None:
    """Streams share pooled scratch space: one left mid-secret must not leak into the next."""
    docs = [f"{before} token={make(rule, seed)} end" for rule, seed, before in texts]
    abandoned = SCRUBBER.stream()
    abandoned.push(docs[0][: len(docs[0]) // 2])  # holds part of a secret back, then is dropped
    del abandoned
    streams = [SCRUBBER.stream() for _ in docs]
    outs = ["" for _ in docs]
    for start in range(0, max(map(len, docs)), step):
        for i, doc in enumerate(docs):
            outs[i] += streams[i].push(doc[start : start + step])
    for i, s in enumerate(streams):
        outs[i] += s.finish()
    assert outs == [scrub(d) for d in docs]


@settings(max_examples=200, deadline=None)
@given(rules, seeds, fillers, fillers)
def test_idempotent(rule: str, seed: int, before: str, after: str) -> None:
    once = scrub(f"{before}\n{make(rule, seed)} and password={make(rule, seed + 1)}\n{after}")
    twice, counts = SCRUBBER.scrub_text(once)
    assert twice == once
    assert counts == {}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(SURVIVORS), max_size=6), st.sampled_from([" ", "\n", "\t", "; "]))
def test_non_secret_text_is_byte_identical(parts: list[str], sep: str) -> None:
    text = sep.join(parts)
    clean, counts = SCRUBBER.scrub_text(text)
    assert clean is text
    assert counts == {}


@pytest.mark.parametrize("text", SURVIVORS)
def test_survivors_untouched(text: str) -> None:
    clean, counts = SCRUBBER.scrub_text(text)
    assert (clean, counts) == (text, {})


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=200))
def test_unicode_text_without_secrets_survives(text: str) -> None:
    clean, _ = SCRUBBER.scrub_text(text)
    if REDACTED not in clean:
        assert clean is text


@pytest.mark.parametrize("seed", range(5))
def test_pem_private_key_block_is_removed_whole(seed: int) -> None:
    pem = make("pem_private_key", seed)
    text = f"key:\n{pem}\nthat was it"
    clean, counts = SCRUBBER.scrub_text(text)
    assert clean == f"key:\n{REDACTED}\nthat was it"
    assert counts == {"pem_private_key": 1}
    body_line = pem.splitlines()[1]
    assert body_line not in stream(text, [7, 40, 41, 100, 200])
    assert stream(text, [7, 40, 41, 100, 200]) == clean


def test_rule_names_are_reported() -> None:
    key = make("openai_key", 1)
    clean, counts = SCRUBBER.scrub_text(f"a {key} b {make('github_token', 2)} c")
    assert clean == f"a {REDACTED} b {REDACTED} c"
    assert counts == {"openai_key": 1, "github_pat": 1}
    assert "openai_key" in SCRUBBER.rule_names


@pytest.mark.parametrize(
    ("text", "expected", "rule"),
    [
        (
            "Authorization: Bearer abc.def-123_456~xyz",
            f"Authorization: Bearer {REDACTED}",
            "authorization_header",
        ),
        ("Authorization: Basic dXNlcjpodW50ZXIy", f"Authorization: Basic {REDACTED}", "basic_auth"),
        (
            "postgres://app:s3cr3t-pw@db:5432/x",
            f"postgres://app:{REDACTED}@db:5432/x",
            "url_password",
        ),
        ('{"password": "hunter22"}', f'{{"password": "{REDACTED}"}}', "assignment"),
        ("DB_PASSWORD=hunter22\nX=1", f"DB_PASSWORD={REDACTED}\nX=1", "assignment"),
        ("db:\n  password: hunter22\n", f"db:\n  password: {REDACTED}\n", "assignment"),
        ("GET /x?api_key=abc123def&page=2", f"GET /x?api_key={REDACTED}&page=2", "assignment"),
        ("secret = 'tops3cret'", f"secret = '{REDACTED}'", "assignment"),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8Xk2LmNp",
            f"aws_secret_access_key = {REDACTED}",
            "aws_secret_key",
        ),
        (
            "https://hooks.slack.com/services/T0ABCDEF1/B0ABCDEF2/q7Rk2mW9xLp4Zc8Vn3Td6Hs1",
            f"https://hooks.slack.com/{REDACTED}",
            "slack_webhook",
        ),
    ],
)
def test_context_rules_redact_the_value_only(text: str, expected: str, rule: str) -> None:
    clean, counts = SCRUBBER.scrub_text(text)
    assert clean == expected
    assert counts == {rule: 1}


_OLD_SECRET_NAME = re.compile("KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


@settings(max_examples=500, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(
            [
                *"KEYTOKENSECRETPASSWDCRLIAUHkeytokensecretpasswdcrliauh_-1 ",
                *"\u212a\u017f\u0130\u0131\u00e9\u00df",
            ]
        ),
        max_size=20,
    )
    | st.text(max_size=20)
)
def test_secret_env_names_are_those_of_the_case_insensitive_pattern(name: str) -> None:
    # The test lives in Rust now; it must say what the Python pattern said, letter for letter.
    assert is_secret_name(name) == (_OLD_SECRET_NAME.search(name) is not None)


def test_secret_env_name_letters_fold_as_python_folds_them() -> None:
    # Every character that the case-insensitive pattern takes for a letter of a word (the Kelvin
    # sign for K, the long s for S, dotted and dotless I for I) makes the word for Rust too.
    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    for word in _native.SECRET_NAME_WORDS:
        for i, letter in enumerate(word):
            for m in re.finditer(letter, every, re.IGNORECASE):
                name = word[:i] + m.group() + word[i + 1 :]
                assert is_secret_name(f"x{name}x"), name


def test_the_secret_constants_come_from_rust() -> None:
    assert REDACTED == _native.REDACTED == "REDACTED"
    assert MIN_ENV_SECRET_LEN == _native.MIN_ENV_SECRET_LEN == 8
    assert _native.SECRET_NAME_WORDS == (
        "KEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "AUTH",
    )
    # Values shorter than the minimum are not matched (they would redact ordinary words).
    assert Scrubber(["x" * (MIN_ENV_SECRET_LEN - 1) + "!"]).scrub_text("a xxxxxxx! b")[1] != {}
    assert Scrubber(["y" * (MIN_ENV_SECRET_LEN - 2) + "!"]).scrub_text("a yyyyyy! b")[1] == {}


def test_secret_env_names() -> None:
    assert is_secret_name("openai_api_key")
    assert is_secret_name("GH_TOKEN") and is_secret_name("Db_PassWd") and is_secret_name("AUTH")
    assert not is_secret_name("HOME")
    assert secret_values(ENV) == sorted(
        [ENV["OPENAI_API_KEY"], ENV["DB_PASSWORD"], ENV["IIR_AUTH_TOKENS"]]
    )


@pytest.mark.parametrize(
    "value",
    [ENV["OPENAI_API_KEY"], ENV["DB_PASSWORD"], ENV["IIR_AUTH_TOKENS"], "provider-key-Zx81kq0p"],
)
def test_env_secrets_in_every_form(value: str) -> None:
    forms = {
        "raw": value,
        "json": json.dumps(value)[1:-1],
        "url": urllib.parse.quote(value, safe=""),
        "url_plus": urllib.parse.quote_plus(value),
        "base64": base64.b64encode(value.encode()).decode(),
        "base64url": base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
    }
    for name, form in forms.items():
        clean, counts = SCRUBBER.scrub_text(f"x {form} y")
        assert form not in clean, name
        assert counts.get("env_secret", 0) + counts.get("assignment", 0) >= 1, name


def test_short_and_non_secret_env_values_are_kept() -> None:
    text = "short and /root/not-a-secret-value"
    assert SCRUBBER.scrub_text(text)[0] is text


def test_from_environ_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-from-env-91x")
    s = Scrubber.from_environ()
    assert s.scrub_text("t tok-from-env-91x")[0] == f"t {REDACTED}"


def test_scrub_object_returns_same_object_when_clean() -> None:
    payload = {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
            {
                "role": "assistant",
                "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}],
            },
        ],
        "max_tokens": 10,
        "temperature": 0.5,
        "stream": True,
        "stop": None,
    }
    out, counts = SCRUBBER.scrub(payload)
    assert out is payload
    assert counts == {}


def test_scrub_object_never_mutates_and_rebuilds_only_changed_parts() -> None:
    key = make("anthropic_key", 3)
    other = {"role": "system", "content": "be brief"}
    payload = {
        "messages": [
            other,
            {"role": "user", "content": [{"type": "text", "text": f"use {key}"}]},
            {
                "role": "assistant",
                "tool_calls": [
                    {"function": {"name": "f", "arguments": json.dumps({"token": "abc123xyz"})}}
                ],
            },
        ],
        "metadata": {"api_key": "plainvalue1", "note": "ok"},
        ("t" if False else "tags"): ("a", f"b {key}"),
    }
    before = copy.deepcopy(payload)
    out, counts = SCRUBBER.scrub(payload)
    assert payload == before
    assert out["messages"][0] is other
    assert out["messages"][1]["content"][0]["text"] == f"use {REDACTED}"
    assert json.loads(out["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {
        "token": REDACTED
    }
    assert out["metadata"] == {"api_key": REDACTED, "note": "ok"}
    assert out["tags"] == ("a", f"b {REDACTED}")
    assert counts == {"anthropic_key": 2, "assignment": 2}
    assert list(out) == list(payload)


def test_scrub_object_keys_and_non_json_values() -> None:
    key = make("groq_key", 4)
    obj = {key: 1, "n": 1.5, "b": b"bytes", "x": None}
    out, counts = SCRUBBER.scrub(obj)
    assert list(out) == [REDACTED, "n", "b", "x"]
    assert out["b"] == b"bytes"
    assert counts == {"groq_key": 1}


def test_deeply_nested_payload_is_a_clear_error() -> None:
    obj: list[object] = []
    for _ in range(1000):
        obj = [obj]
    with pytest.raises(ValueError, match="nested deeper"):
        SCRUBBER.scrub(obj)


def _nested(depth: int) -> object:
    obj: object = "deep"
    for _ in range(depth):
        obj = {"x": obj}
    return obj


def test_a_payload_nested_too_deep_names_the_field() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [{"text": _nested(600)}]}]}
    with pytest.raises(ScrubError) as info:
        SCRUBBER.scrub(body)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.reason == "nested deeper than 256 levels"
    assert err.path.startswith("messages[0].content[0].text.x.x")
    assert len(err.path) <= 201  # a path 256 levels deep is elided in the middle
    assert str(err) == f"{err.path}: {err.reason}"
    # 256 levels of containers are walked (and scrubbed); one more is refused.
    assert SCRUBBER.scrub(_nested(256))[0] == _nested(256)
    with pytest.raises(ScrubError):
        SCRUBBER.scrub(_nested(257))


def test_the_path_of_a_refused_field_never_shows_a_secret() -> None:
    key = make("openai_key", 5)
    with pytest.raises(ScrubError) as info:
        SCRUBBER.scrub({key: [_nested(300)]})
    assert key not in str(info.value)
    assert info.value.path.startswith(f"{REDACTED}[0].x")


def test_tuples_nested_too_deep_are_refused_too() -> None:
    obj: object = "x"
    for _ in range(300):
        obj = (obj,)
    with pytest.raises(ScrubError) as info:
        SCRUBBER.scrub(obj)
    assert info.value.path.startswith("[0][0]")


def test_a_dict_changed_while_the_scrubber_runs_is_no_crash() -> None:
    # The GIL is released for long strings; another thread may resize the dict meanwhile.
    import threading

    payload: dict[str, object] = {f"k{i}": "x " * 10_000 for i in range(50)}
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            payload[f"new{i % 100}"] = "y"
            payload.pop(f"new{(i + 50) % 100}", None)
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(20):
            _, counts = SCRUBBER.scrub(payload)
            assert counts == {}
    finally:
        stop.set()
        t.join()


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(TypeError):
        SCRUBBER.scrub_text(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        SCRUBBER.stream().push(None)  # type: ignore[arg-type]


def test_lone_surrogates_do_not_raise() -> None:
    text = "a \ud800 b"
    assert SCRUBBER.scrub_text(text)[0] is text
    key = make("openai_key", 9)
    clean, _ = SCRUBBER.scrub_text(f"\ud800 {key}")
    assert key not in clean
    s = SCRUBBER.stream()
    assert key not in s.push(f"\udfff {key} ") + s.finish()


def test_stream_counts_and_holdback() -> None:
    s = SCRUBBER.stream()
    key = make("github_token", 7)
    first = s.push("hello world, token " + key[:10])
    assert first.startswith("hello world, ")
    assert key[:4] not in first
    rest = s.push(key[10:] + " done") + s.finish()
    assert first + rest == f"hello world, token {REDACTED} done"
    assert s.counts == {"github_app_token": 1}


def test_stream_holds_back_little_for_plain_prose() -> None:
    s = SCRUBBER.stream()
    out = s.push("The quick brown fox jumps over the lazy dog. ")
    assert out == "The quick brown fox jumps over the lazy dog. "
    assert s.finish() == ""


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_scrub_any_json_value_without_secrets_is_identity(value: object) -> None:
    before = copy.deepcopy(value)
    out, counts = SCRUBBER.scrub(value)
    assert value == before
    if not counts:
        assert out is value


@settings(max_examples=100, deadline=None)
@given(json_values, rules, seeds)
def test_scrub_planted_secret_in_any_json_value(value: object, rule: str, seed: int) -> None:
    secret = make(rule, seed)
    payload = {"messages": [{"role": "user", "content": f"key: {secret}"}], "extra": value}
    out, counts = SCRUBBER.scrub(payload)
    assert secret not in json.dumps(out)
    assert sum(counts.values()) >= 1
