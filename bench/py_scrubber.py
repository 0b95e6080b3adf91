"""Pure-Python baseline: the same rules and checks as the Rust scrubber, on the ``re`` module.

The patterns are rules of the table (the bench passes those the scrubber knew before the table)
translated to ``re`` syntax (Rust's ASCII-only groups become ``(?a:...)``); each rule is searched
on its own and the matches are merged leftmost-first (faster than one combined alternation on
``re``), and every match goes through the same placeholder checks.
"""

from __future__ import annotations

import base64
import re
import urllib.parse

REDACTED = "REDACTED"
_PLACEHOLDER_VALUES = {
    "true", "false", "null", "none", "nil", "undefined", "empty", "required", "optional",
    "string", "str", "bytes", "secretstr", "int", "bool", "password", "secret", "token",
    "changeme",
}  # fmt: skip
_TOKEN_PLACEHOLDERS = (
    "your-", "your_", "YOUR-", "YOUR_", "xxxxx", "XXXXX", "EXAMPLE", "example",
    "placeholder", "PLACEHOLDER", "dummy", "DUMMY",
)  # fmt: skip
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+\Z")
_TOKEN_LIKE = {
    "age_secret_key", "anthropic_key", "openrouter_key", "openai_key", "stripe_secret_key",
    "xai_key", "groq_key", "huggingface_token", "replicate_token", "perplexity_key",
    "github_pat", "github_oauth", "github_app_token", "github_refresh_token",
    "github_fine_grained_pat", "gitlab_pat", "slack_bot_token", "slack_user_token",
    "google_api_key", "google_oauth_token", "aws_access_key_id", "aws_secret_key", "npm_token",
    "pypi_token", "sendgrid_key", "digitalocean_token", "databricks_token",
    "vault_service_token", "twilio_key", "shopify_token",
    "linear_key", "jwt",
}  # fmt: skip


def _translate(pattern: str) -> str:
    # Rust's ASCII-only groups are Python's ASCII groups: `(?-u:\b)`, `(?-u:(?i:word))`,
    # `(?i-u:word)`.
    return pattern.replace("(?-u:", "(?a:").replace("(?i-u:", "(?ai:")


def _forms(value: str) -> list[str]:
    forms = {
        value,
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"),
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
        base64.b64encode(value.encode()).decode().rstrip("="),
        base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
    }
    return sorted((f for f in forms if len(f) >= 8), key=lambda f: (-len(f), f))


def _accept(name: str, value: str, before: str, after: str) -> bool:
    if not value or value == REDACTED:
        return False
    if name == "env_secret":
        return True
    lower = value.lower()
    if "redacted" in lower or "..." in lower or "\u2026" in value:
        return False
    if name in ("assignment", "url_password"):
        if value[0] in "<${%*[(":
            return False
        if name == "assignment" and len(value) < 4:
            return False
        if lower in _PLACEHOLDER_VALUES or after in ("(", "["):
            return False
        word = value.rstrip(".!?")
        if before == ":" and word.isascii() and word.isalpha() and word.islower():
            return False
        if _DOTTED.match(value) or len(set(value)) == 1:
            return False
        return not (
            "your" in lower and any(w in lower for w in ("key", "token", "password", "secret"))
        )
    if name == "basic_auth":
        try:
            raw = base64.b64decode(value, validate=True).decode()
        except ValueError:
            return False
        return ":" in raw and raw.isprintable()
    if name in _TOKEN_LIKE or name == "bearer":
        if any(p in value for p in _TOKEN_PLACEHOLDERS):
            return False
        if len({c for c in value if c.isascii()}) < 6:
            return False
        if name in ("bearer", "openai_key"):
            return any(c.isdigit() for c in value)
    return True


class PyScrubber:
    """The baseline scrubber."""

    def __init__(self, secrets: list[str], patterns: list[tuple[str, str, list[str]]]) -> None:
        literals = sorted({f for s in secrets for f in _forms(s)}, key=lambda f: (-len(f), f))
        rules: list[tuple[str, str]] = []
        if literals:
            rules.append(("env_secret", "|".join(map(re.escape, literals))))
        rules.extend((name, _translate(p)) for name, p, _ in patterns)
        # One regex per rule: each keeps its literal prefix, which ``re`` searches quickly.
        self._rules = [(name, re.compile(p)) for name, p in rules]

    def scrub_text(self, text: str) -> tuple[str, dict[str, int]]:
        """Search rule by rule and merge leftmost-first.

        Faster on ``re`` than one combined alternation (measured: about 3x), since each rule
        keeps its literal prefix.
        """
        candidates: list[tuple[int, int, int, int, str, str]] = []
        for index, (name, regex) in enumerate(self._rules):
            for m in regex.finditer(text):
                start, end = m.span()
                for g in range(1, (regex.groups or 0) + 1):
                    if m.group(g) is not None:
                        start, end = m.span(g)
                        break
                before = text[m.start() : start].rstrip(" \t")[-1:]
                candidates.append((m.start(), index, start, end, name, before))
        if not candidates:
            return text, {}
        candidates.sort()
        counts: dict[str, int] = {}
        out: list[str] = []
        copied = 0
        for _, _, start, end, name, before in candidates:
            if start < copied or not _accept(name, text[start:end], before, text[end : end + 1]):
                continue
            out.append(text[copied:start])
            out.append(REDACTED)
            counts[name] = counts.get(name, 0) + 1
            copied = end
        if not out:
            return text, counts
        out.append(text[copied:])
        return "".join(out), counts
