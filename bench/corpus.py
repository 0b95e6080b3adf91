"""Deterministic, realistic chat text for the benchmarks, with and without planted secrets."""

from __future__ import annotations

import json
import random

from tests.secret_samples import MAKERS, make

_PARAGRAPHS = [
    "Sure! Here's how you can fix the error you're seeing. The traceback shows that the "
    "request handler raised a KeyError because the 'user_id' field is missing from the payload.",
    '```python\ndef handler(event: dict) -> dict:\n    user = event.get("user_id")\n'
    '    if user is None:\n        return {"status": 400, "detail": "missing user"}\n'
    '    return {"status": 200, "items": load_items(user)}\n```',
    "1. Check the deployment logs for request 550e8400-e29b-41d4-a716-446655440000.\n"
    "2. Compare commit 9fceb02d0ae598e95dc970b74767f19372d61af8 with the previous release.\n"
    "3. Re-run the job with `--max-tokens 512` and temperature 0.2.",
    "Les modèles de langage répondent mieux quand la consigne est précise ; 日本語の質問にも"
    "対応できます。Summaries should be short, risk-free and written for the task-force.",
    json.dumps(
        {
            "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "model": "gpt-4o-2024-08-06",
            "usage": {"prompt_tokens": 1234, "completion_tokens": 256, "total_tokens": 1490},
            "system_fingerprint": "fp_44709d6fcb",
        }
    ),
    "| metric | p50 | p99 |\n|---|---|---|\n| latency (ms) | 12.4 | 88.1 |\n"
    "| tokens/s | 1532 | 1210 |\n\nThe numbers above come from the nightly benchmark run.",
    "2025-06-01T12:00:00Z INFO request_id=req_8f2a status=200 duration_ms=41 "
    "model=meta-llama/Llama-3.1-8B-Instruct route=/v1/chat/completions",
    "To configure the client, set the base URL to your gateway and pass the key from the "
    "environment; never hard-code credentials in notebooks that you share with colleagues.",
]


def chat_text(size: int, secrets: bool, seed: int = 7) -> str:
    """About ``size`` bytes of chat text; with ``secrets``, one planted secret per ~1 KB."""
    rng = random.Random(seed)
    parts: list[str] = []
    length = 0
    rules = sorted(MAKERS)
    next_secret = 400
    while length < size:
        p = rng.choice(_PARAGRAPHS)
        if secrets and length >= next_secret:
            rule = rng.choice(rules)
            p = f"{p}\nMy {rule.replace('_', ' ')} is {make(rule, rng.randrange(2**32))} by the way."
            next_secret += 1024
        parts.append(p)
        length += len(p.encode()) + 2
    return "\n\n".join(parts).encode()[:size].decode("utf-8", "ignore")
