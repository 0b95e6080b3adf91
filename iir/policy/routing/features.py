"""The cheap facts about a chat request that routing decides on.

Everything here is linear in the prompt and allocation-light, because it runs before every routed
request; the text the classifier reads is bounded (:data:`HEAD_CHARS`, :data:`TAIL_CHARS`) so that
a 100 KB prompt costs no more to classify than a 3 KB one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iir.core.protocol import ChatRequest
from iir.policy.routing.language import detect
from iir.policy.tokens import count_chat

# The classifier reads the start and the end of the last user message: instructions sit there
# ("Summarize this: <article>", "<code> Why does this fail?"); the middle is mostly material.
HEAD_CHARS = 400
TAIL_CHARS = 200


@dataclass(slots=True, frozen=True)
class Features:
    prompt_tokens: int
    output_tokens: int | None  # what the client asked for (max_tokens), None when unbounded
    needs_tools: bool
    needs_vision: bool
    needs_structured: bool  # response_format json_object / json_schema
    turns: int  # messages in the conversation
    head: str  # start of the last user message, lower-cased
    tail: str  # end of the last user message (empty when the message is short), lower-cased
    system: str  # start of the system/developer prompt, lower-cased
    chars: int  # length of the last user message

    @property
    def language(self) -> str:
        """ISO 639-1 code, or "und" when unknown. Reported, never routed on: found when asked
        for, not on every decision."""
        return detect(self.head)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "needs_tools": self.needs_tools,
            "needs_vision": self.needs_vision,
            "needs_structured": self.needs_structured,
            "turns": self.turns,
            "language": self.language,
            "chars": self.chars,
        }


def count_prompt_tokens(chat: ChatRequest) -> int:
    """Prompt tokens (``o200k_base``, the Rust counter via :mod:`iir.policy.tokens`), with OpenAI's
    framing per message: close enough to any model's own count to decide what fits."""
    messages = []
    for m in chat.messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.text()}
        if m.name:
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = [
                {"function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in m.tool_calls
            ]
        messages.append(msg)
    return count_chat(messages, "o200k")


def _needs_vision(chat: ChatRequest) -> bool:
    for m in chat.messages:
        if isinstance(m.content, list):
            for part in m.content:
                if part.type == "image_url":
                    return True
    return False


def _needs_structured(chat: ChatRequest) -> bool:
    fmt = chat.response_format
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def extract(chat: ChatRequest, prompt_tokens: int | None = None) -> Features:
    last = ""
    system = ""
    for m in chat.messages:
        if m.role == "user":
            last = m.text()
        elif m.role in ("system", "developer") and not system:
            system = m.text()[:HEAD_CHARS]
    n = len(last)
    if n <= HEAD_CHARS + TAIL_CHARS:
        head, tail = last.lower(), ""
    else:
        head, tail = last[:HEAD_CHARS].lower(), last[-TAIL_CHARS:].lower()
    tools = bool(chat.tools) and chat.tool_choice != "none"
    return Features(
        prompt_tokens=count_prompt_tokens(chat) if prompt_tokens is None else prompt_tokens,
        output_tokens=chat.output_limit,
        needs_tools=tools,
        needs_vision=_needs_vision(chat),
        needs_structured=_needs_structured(chat),
        turns=len(chat.messages),
        head=head,
        tail=tail,
        system=system.lower(),
        chars=n,
    )
