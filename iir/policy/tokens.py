"""Token counting for OpenAI models, offline and identical to ``tiktoken``'s counts.

Counting runs in Rust with the rank tables compiled in (checked against OpenAI's published
SHA-256 at first use) and releases the GIL for large texts.
"""

from __future__ import annotations

import re
from typing import Any

from iir import _native

O200K = "o200k_base"
CL100K = "cl100k_base"

#: Chat overhead (OpenAI's published accounting for current chat models).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

_O200K_MODEL = re.compile(r"^(?:gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|chatgpt-4o|o1|o3|o4)(?:[-.:_]|$)")
_CL100K_MODEL = re.compile(
    r"^(?:gpt-4|gpt-3\.5|gpt-35|text-embedding-ada-002|text-embedding-3)(?:[-.:_]|$)"
)


def warm_up() -> None:
    """Load and integrity-check both rank tables now (a few hundred ms), not on a request."""
    for encoding in (O200K, CL100K):
        _native.count_text("", encoding)


def encoding_for_model(model: str) -> tuple[str, bool]:
    """``(encoding name, is_estimate)`` for a model, provider prefix (``openai/``) ignored."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    if _O200K_MODEL.match(name):
        return O200K, False
    if _CL100K_MODEL.match(name):
        return CL100K, False
    return O200K, True


def _utf8_safe(text: str) -> str:
    """Replace lone surrogates (not encodable as UTF-8) the way ``tiktoken`` does."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def count_text(text: str, encoding: str = O200K) -> int:
    """Number of tokens in ``text`` (special-token text counts as ordinary text)."""
    try:
        return _native.count_text(text, encoding)
    except UnicodeEncodeError:
        return _native.count_text(_utf8_safe(text), encoding)


def encode(text: str, encoding: str = O200K) -> list[int]:
    """Token ids of ``text``, as ``tiktoken``'s ``encode_ordinary``."""
    try:
        return _native.encode(text, encoding)
    except UnicodeEncodeError:
        return _native.encode(_utf8_safe(text), encoding)


def _message_texts(message: dict[str, Any]) -> tuple[list[str], int]:
    """The texts of one chat message that cost tokens, and its fixed overhead."""
    texts: list[str] = []
    overhead = TOKENS_PER_MESSAGE
    for key, value in message.items():
        if key == "name" and isinstance(value, str):
            overhead += TOKENS_PER_NAME
            texts.append(value)
        elif key == "content":
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, list):
                for part in value:
                    if isinstance(part, dict):
                        text = part.get("text", part.get("refusal"))
                        if isinstance(text, str):
                            texts.append(text)
                    elif isinstance(part, str):
                        texts.append(part)
        elif key == "tool_calls" and isinstance(value, list):
            for call in value:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    for field in ("name", "arguments"):
                        text = function.get(field)
                        if isinstance(text, str):
                            texts.append(text)
        elif key == "function_call" and isinstance(value, dict):
            for field in ("name", "arguments"):
                text = value.get(field)
                if isinstance(text, str):
                    texts.append(text)
        elif isinstance(value, str) and key in ("role", "tool_call_id", "refusal"):
            texts.append(value)
    return texts, overhead


def count_chat(messages: list[dict[str, Any]], model: str) -> int:
    """Prompt tokens of a chat request, with OpenAI's per-message overhead.

    3 per message, the role and content text (text parts of multi-part content), tool-call
    names and arguments, 1 more per ``name``, and 3 to prime the reply.
    """
    if not isinstance(messages, list):
        raise TypeError(f"messages must be a list, got {type(messages).__name__}")
    encoding, _ = encoding_for_model(model)
    texts: list[str] = []
    total = REPLY_PRIMING
    for message in messages:
        if not isinstance(message, dict):
            raise TypeError(f"each message must be an object, got {type(message).__name__}")
        message_texts, overhead = _message_texts(message)
        texts.extend(message_texts)
        total += overhead
    try:
        return total + _native.count_texts(texts, encoding)
    except UnicodeEncodeError:
        return total + _native.count_texts([_utf8_safe(t) for t in texts], encoding)
