"""Schemathesis hooks for tests/test_schemathesis.py (loaded through ``SCHEMATHESIS_HOOKS``).

Generated requests name the one model the test server surely serves, so that fuzzed fields
(``n``, ``stop``, ``max_tokens``, ``stream``, messages of every role...) travel the whole pipeline
to a backend instead of stopping at "model not found". The schema is only narrowed: every request
this generates is valid under the served document too, and requests naming other models are still
made by the negative phase (and answered 404, a rejection).
"""

from __future__ import annotations

from typing import Any

import schemathesis

MODEL = "iir/echo"
REQUESTS = ("ChatRequest", "InferRequest")


@schemathesis.hook
def before_load_schema(context: Any, raw_schema: dict[str, Any]) -> None:
    schemas = raw_schema["components"]["schemas"]
    for name in REQUESTS:
        schemas[name]["properties"]["model"] = {"type": "string", "enum": [MODEL]}
