"""A real ``tiktoken.Encoding`` built offline from the same rank table, as the reference."""

from __future__ import annotations

import base64
import functools
import hashlib

import tiktoken
import tiktoken_ext.openai_public as openai_public

from iir import _native


@functools.cache
def reference(name: str) -> tuple[tiktoken.Encoding, str]:
    """(tiktoken encoding, the sha256 tiktoken expects of the published rank file)."""
    table = _native.encoding_ranks(name)
    seen: dict[str, str] = {}

    def load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen["hash"] = expected_hash or ""
        return {token: rank for rank, token in enumerate(table)}

    original = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = load
    try:
        spec = getattr(openai_public, name)()
    finally:
        openai_public.load_tiktoken_bpe = original
    return tiktoken.Encoding(**spec), seen["hash"]


def rank_file_sha256(name: str) -> str:
    """SHA-256 of the ``.tiktoken`` file that our table corresponds to."""
    h = hashlib.sha256()
    for rank, token in enumerate(_native.encoding_ranks(name)):
        h.update(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    return h.hexdigest()
