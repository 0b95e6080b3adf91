"""The OpenAPI document against the live server, with every check Schemathesis has.

``/openapi.json`` is generated from the same models that validate requests; this proves the two
agree from the outside: no request the document allows is refused (``positive_data_acceptance``),
no request it forbids is accepted (``negative_data_rejection``), every answer matches its
documented status, content type and schema, and nothing ever answers 5xx. The run is bounded
(examples per operation) and seeded, so it takes the same path in every run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .harness import REPO, Server

ST = str(Path(sys.executable).with_name("st"))
CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = "20261130"
EXAMPLES = "25"


def test_live_server_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    with Server() as srv:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
        }
        run = subprocess.run(
            [
                ST,
                "--config-file",
                str(CONFIG),
                "run",
                srv.url + "/openapi.json",
                "--header",
                f"Authorization: Bearer {srv.key}",
                "--max-examples",
                EXAMPLES,
                "--seed",
                SEED,
                "--generation-database",
                "none",
                "--workers",
                "1",
                "--request-timeout",
                "30",
                "--continue-on-failure",
                "--no-color",
            ],
            cwd=tmp_path,  # its crash records and reports stay out of the checkout
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        out = run.stdout + run.stderr
        assert run.returncode == 0, out[-30000:]
        # It really ran: every operation, thousands of cases, every phase.
        operations = len(srv.client().get("/openapi.json").json()["paths"])
        assert re.search(r"Tested: (\d+)", out), out[-3000:]
        tested = int(re.search(r"Tested: (\d+)", out).group(1))  # type: ignore[union-attr]
        assert tested >= operations
        generated = re.search(r"(\d+) generated, (\d+) passed", out)
        assert generated, out[-3000:]
        assert int(generated.group(1)) > 1000 and generated.group(1) == generated.group(2)
        for phase in ("Coverage", "Fuzzing", "Stateful"):
            assert f"✅ {phase}" in out, out[-3000:]
        # And the server logged no unhandled error while it was at it.
        assert not [ln for ln in srv.log_lines() if ln.get("msg") == "unhandled error"]
