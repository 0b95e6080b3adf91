"""Token counts are identical to tiktoken's, offline."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iir import _native
from iir.policy.tokens import count_chat, count_text, encode, encoding_for_model, warm_up
from tests.tiktoken_offline import rank_file_sha256, reference

ENCODINGS = ["o200k_base", "cl100k_base"]

ADVERSARIAL = [
    "",
    " ",
    "   \n\n\n   \t\t  x",
    " " * 5000,
    "\n" * 3000 + "a",
    "1234567890" * 50,
    "I'm you're they'll we've she'd IT'S DON'T 'tis",
    "a" * 10_000,
    "🙂" * 200 + "👩‍👩‍👧‍👦🇩🇪",
    "日本語のテキストと中文文本\uff0c한국어 텍스트",
    "Ελληνικά кириллица עברית العربية हिन्दी",
    "<|endoftext|> <|fim_prefix|> special-looking text",
    "def f(x):\n    return x**2  # comment\n\n\n",
    "\u0301\u0302 combining \u200b\u200d zero-width \ufeff",
    "ÀÉÎõü ǅungla ǈ titlecase ǋ",
    "  leading, trailing  \r\n\r\n",
    "!!!???...,,,;;;:::---___+++===",
]


@pytest.mark.parametrize("name", ENCODINGS)
def test_rank_table_matches_openai_published_hash(name: str) -> None:
    _, expected = reference(name)
    assert expected and rank_file_sha256(name) == expected


@pytest.mark.parametrize("name", ENCODINGS)
@pytest.mark.parametrize("text", ADVERSARIAL)
def test_adversarial_equal_to_tiktoken(name: str, text: str) -> None:
    enc, _ = reference(name)
    assert encode(text, name) == enc.encode_ordinary(text)
    assert count_text(text, name) == len(enc.encode_ordinary(text))


text_strategy = st.one_of(
    st.text(max_size=400),
    st.text(
        alphabet=st.sampled_from(" \t\n\r\u00a0\u3000'sdtmlrevSDTMLRVE0123456789"), max_size=400
    ),
    st.lists(
        st.sampled_from(
            [
                "'s",
                "'ll",
                " ",
                "  ",
                "\n",
                "123",
                "4567",
                "word",
                "Word",
                "WORD",
                "é",
                "🙂",
                "日本",
                ".",
                "!?",
                "\t",
            ]
        ),
        max_size=80,
    ).map("".join),
)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(ENCODINGS), text_strategy)
def test_property_equal_to_tiktoken(name: str, text: str) -> None:
    enc, _ = reference(name)
    expected = enc.encode_ordinary(text)
    assert encode(text, name) == expected
    assert count_text(text, name) == len(expected)


def test_lone_surrogates_count_like_tiktoken() -> None:
    enc, _ = reference("o200k_base")
    text = "a\ud800b\udfff"
    assert count_text(text) == len(enc.encode_ordinary(text))


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", ("o200k_base", False)),
        ("openai/gpt-4o-mini", ("o200k_base", False)),
        ("gpt-4.1-nano", ("o200k_base", False)),
        ("gpt-5", ("o200k_base", False)),
        ("o1-preview", ("o200k_base", False)),
        ("o3-mini", ("o200k_base", False)),
        ("azure/o4-mini", ("o200k_base", False)),
        ("gpt-4", ("cl100k_base", False)),
        ("gpt-4-turbo-2024-04-09", ("cl100k_base", False)),
        ("openai/gpt-3.5-turbo", ("cl100k_base", False)),
        ("claude-3-5-sonnet", ("o200k_base", True)),
        ("meta-llama/Llama-3.1-8B", ("o200k_base", True)),
        ("gpt-40-fake", ("o200k_base", True)),
        ("", ("o200k_base", True)),
    ],
)
def test_encoding_for_model(model: str, expected: tuple[str, bool]) -> None:
    assert encoding_for_model(model) == expected


def test_count_chat_matches_openai_accounting() -> None:
    enc, _ = reference("o200k_base")
    n = lambda s: len(enc.encode_ordinary(s))  # noqa: E731
    messages = [
        {"role": "system", "content": "You are helpful."},
        {
            "role": "user",
            "name": "ann",
            "content": [
                {"type": "text", "text": "Hi"},
                {"type": "image_url", "image_url": {"url": "data:x"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    expected = (
        3 * 4
        + 3
        + n("system")
        + n("You are helpful.")
        + n("user")
        + n("ann")
        + 1
        + n("Hi")
        + n("assistant")
        + n("get_weather")
        + n('{"city": "Paris"}')
        + n("tool")
        + n("call_1")
        + n("sunny")
    )
    assert count_chat(messages, "gpt-4o") == expected


def test_count_chat_uses_model_encoding() -> None:
    enc, _ = reference("cl100k_base")
    msgs = [{"role": "user", "content": "日本語のテキスト 🙂"}]
    assert count_chat(msgs, "gpt-4") == 3 + 3 + len(enc.encode_ordinary("user")) + len(
        enc.encode_ordinary("日本語のテキスト 🙂")
    )


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        count_text("x", "p50k_base")
    with pytest.raises(TypeError):
        count_text(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        count_chat("hello", "gpt-4o")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        count_chat(["hello"], "gpt-4o")  # type: ignore[list-item]


def test_large_text_counts_in_threads() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 20_000
    expected = count_text(text)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(count_text(text))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4
    assert _native.count_texts([text, text]) == 2 * expected


def test_warm_up_loads_both_encodings() -> None:
    warm_up()
    assert count_text("hello world", "cl100k_base") == 2
