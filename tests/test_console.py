"""The operator console: ``GET /v1/console/summary`` (auth, schema, the same numbers as
``/metrics``) and the page at ``/console``, driven in a real headless Chromium (the distribution's
package, through Playwright) against a real server with a stand-in NVML and the local engine's
stand-in.

``python -m tests.test_console docs/console.png`` takes the screenshot the README shows.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from iir.api.console.serving import quantile

from .harness import REPO, Server
from .providers.fakes import FakeProvider
from .secret_samples import make
from .test_vllm_backend import FACTORY, wait_ready

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STANDIN_NVML = REPO / "tests" / "nvml_standin"
LOCAL = "llama-3.1-8b-instruct"
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (packaging/ci-deps.sh installs it)"
)


def console_env(openai: FakeProvider) -> dict[str, str]:
    return {
        # the stand-in pynvml first, then the repository (for the engine's stand-in)
        "PYTHONPATH": os.pathsep.join([str(STANDIN_NVML), str(REPO)]),
        "IIR_LOCAL_MODELS": f"{LOCAL}=/models/{LOCAL}",
        "IIR_VLLM_ENGINE_FACTORY": FACTORY,
        "IIR_ROUTING_LAST_RESORT": "iir/echo",
        "OPENAI_API_KEY": openai.key or "",
        "IIR_OPENAI_BASE_URL": openai.url,
        "IIR_UPSTREAM_RETRIES": "0",
    }


@pytest.fixture(scope="module")
def openai() -> Iterator[FakeProvider]:
    fake = FakeProvider("openai", key="sk-openai-CONSOLE-0123456789")
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def srv(openai: FakeProvider) -> Iterator[Server]:
    with Server(env=console_env(openai)) as s:
        wait_ready(s, LOCAL)
        yield s


def chat(srv: Server, text: str, model: str = "auto") -> httpx.Response:
    return httpx.post(
        srv.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": text}]},
        headers=srv.auth,
        timeout=30,
    )


def traffic(srv: Server) -> None:
    """A bit of everything the console shows: local and remote routes, a redaction, a job, a 4xx."""
    assert chat(srv, "Hello there, how are you today?").headers["x-iir-route-model"] == LOCAL
    math = chat(srv, "Solve the equation 3x + 7 = 22")
    assert math.status_code == 200 and math.headers["x-iir-route-model"].startswith("openai/")
    leaked = chat(srv, f"my key is {make('github_token', 3)} keep it", model="iir/echo")
    assert leaked.status_code == 200 and "REDACTED" in leaked.text
    job = httpx.post(
        srv.url + "/v1/async/chat/completions",
        json={"model": "iir/echo", "messages": [{"role": "user", "content": "later"}]},
        headers=srv.auth,
        timeout=30,
    )
    assert job.status_code == 202
    done = httpx.get(
        srv.url + f"/v1/async/chat/completions/{job.json()['job_id']}?wait=20",
        headers=srv.auth,
        timeout=30,
    )
    assert done.headers["x-iir-job-status"] == "succeeded"
    bad = httpx.post(srv.url + "/v1/chat/completions", json={}, headers=srv.auth, timeout=30)
    assert bad.status_code == 400


def summary(srv: Server) -> dict[str, Any]:
    r = httpx.get(srv.url + "/v1/console/summary", headers=srv.auth, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


# --- the summary -------------------------------------------------------------------------------


def test_summary_needs_a_key(srv: Server) -> None:
    assert httpx.get(srv.url + "/v1/console/summary").status_code == 401
    wrong = {"Authorization": "Bearer not-a-key-0123456789abcdef"}
    r = httpx.get(srv.url + "/v1/console/summary", headers=wrong)
    assert r.status_code == 403 and r.json()["error"]["code"]


def test_summary_is_in_the_openapi_document_and_matches_it(srv: Server) -> None:
    doc = httpx.get(srv.url + "/openapi.json").json()
    op = doc["paths"]["/v1/console/summary"]["get"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ConsoleSummary"
    }
    assert op.get("security") != []  # authenticated, unlike /console itself
    assert doc["paths"]["/console"]["get"].get("security") == []
    traffic(srv)
    schema = {"$ref": "#/components/schemas/ConsoleSummary", "components": doc["components"]}
    jsonschema.validate(summary(srv), schema)


def test_summary_shows_gpus_models_and_providers(srv: Server) -> None:
    s = summary(srv)
    assert [g["index"] for g in s["gpus"]] == [0, 1] and s["gpu_reason"] is None
    g = s["gpus"][0]
    assert g["name"] == "NVIDIA H100 80GB HBM3" and g["memory_total_bytes"] == 85_520_809_984
    assert 0 <= g["utilization_gpu_percent"] <= 100 and g["power_limit_watts"] == 700.0
    models = {m["id"]: m for m in s["models"]}
    assert models[LOCAL]["state"] == "ready" and models[LOCAL]["source"] == "local"
    assert models["iir/echo"]["state"] == "ready"
    assert not any(m.startswith("openai/") for m in models)  # providers' models are counted there
    providers = {p["name"]: p for p in s["providers"]}
    assert providers["openai"]["configured"] and providers["openai"]["circuit"] == "closed"
    assert providers["openai"]["models"] == 2  # the fake lists two
    assert not providers["anthropic"]["configured"]
    assert s["degraded"] == [] and s["started_at"] <= s["generated_at"]


def _scrape(srv: Server) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> labels -> value, from /metrics."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(httpx.get(srv.url + "/metrics").text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_summary_has_the_numbers_of_metrics(srv: Server) -> None:
    traffic(srv)
    s = summary(srv)
    m = _scrape(srv)  # taken after: only request counts moved in between (these two requests)
    tokens = m["iir_tokens_total"]
    assert s["tokens"] and all(
        t["prompt"] == tokens[(("kind", "prompt"), ("model", t["model"]))]
        and t["completion"] == tokens[(("kind", "completion"), ("model", t["model"]))]
        for t in s["tokens"]
    )
    assert {t["model"] for t in s["tokens"]} >= {LOCAL, "iir/echo"}
    decisions = {(d["strategy"], d["category"], d["target"]): d["count"] for d in s["routing"]}
    assert decisions == {
        (dict(k)["strategy"], dict(k)["category"], dict(k)["target"]): v
        for k, v in m["iir_route_decisions_total"].items()
    }
    assert decisions[("local-first", "chat", LOCAL)] >= 1
    assert any(cat == "math" and t.startswith("openai/") for _, cat, t in decisions)
    redactions = {(r["direction"], r["rule"]): r["count"] for r in s["redactions"]}
    # The rule table names GitHub's token kinds apart (github_pat, github_oauth, ...).
    assert sum(v for (d, r), v in redactions.items() if d == "request" and r.startswith("github_"))
    assert redactions == {
        (dict(k)["direction"], dict(k)["rule"]): v
        for k, v in m["iir_secrets_redacted_total"].items()
    }
    assert s["jobs"]["by_status"]["succeeded"] >= 1
    assert s["jobs"]["by_status"] == {dict(k)["status"]: v for k, v in m["iir_jobs"].items()}
    openai = next(p for p in s["providers"] if p["name"] == "openai")
    upstream = m["iir_upstream_requests_total"]
    assert openai["requests"] == sum(v for k, v in upstream.items() if ("provider", "openai") in k)
    assert openai["requests"] >= 1 and openai["p50_seconds"] is not None
    routes = {r["route"]: r for r in s["routes"]}
    chat_route = routes["/v1/chat/completions"]
    assert chat_route["client_errors"] >= 1 and chat_route["errors"] == 0
    assert chat_route["p50_seconds"] is not None
    assert chat_route["p50_seconds"] <= chat_route["p99_seconds"]
    assert len(chat_route["bucket_counts"]) == len(s["latency_bounds_seconds"]) + 1
    counted = m["iir_request_duration_seconds_count"][(("route", "/v1/chat/completions"),)]
    assert chat_route["bucket_counts"][-1] == chat_route["requests"] == counted
    assert s["totals"]["overhead_p50_seconds"] is not None


def test_counters_grow_with_traffic(srv: Server) -> None:
    before = summary(srv)
    assert chat(srv, "Good morning!", model="iir/echo").status_code == 200
    after = summary(srv)

    def chat_requests(s: dict[str, Any]) -> int:
        return next((r["requests"] for r in s["routes"] if r["route"] == "/v1/chat/completions"), 0)

    def echo_prompt(s: dict[str, Any]) -> int:
        return next((t["prompt"] for t in s["tokens"] if t["model"] == "iir/echo"), 0)

    assert chat_requests(after) == chat_requests(before) + 1
    assert echo_prompt(after) > echo_prompt(before)
    assert after["totals"]["requests"] > before["totals"]["requests"]
    assert after["generated_at"] >= before["generated_at"]


def test_quantiles_from_buckets() -> None:
    bounds = [1.0, 2.0, 4.0]
    assert quantile(0.5, bounds, [0, 10, 10, 10]) == 1.5  # halfway into (1, 2]
    assert quantile(0.5, bounds, [4, 4, 4, 4]) == 0.5  # the first bucket starts at 0
    assert quantile(0.99, bounds, [0, 0, 0, 5]) == 4.0  # +Inf: the highest finite bound
    assert quantile(1.0, bounds, [1, 2, 3, 3]) == 4.0
    assert quantile(0.5, bounds, [0, 0, 0, 0]) is None
    assert quantile(0.5, [], []) is None


# --- the page ---------------------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


def test_page_and_assets_are_served_with_a_strict_policy(srv: Server) -> None:
    page = httpx.get(srv.url + "/console")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    parsed = _Tags()
    parsed.feed(page.text)
    # no inline script, inline style or event handler: the policy would block them anyway
    assert parsed.script_text.strip() == ""
    assert all(a.get("src") for t, a in parsed.tags if t == "script")
    assert not any("style" in a or any(k.startswith("on") for k in a) for _, a in parsed.tags)
    links = [a.get("src") or a.get("href") for _, a in parsed.tags if "src" in a or "href" in a]
    assert links and all(str(u).startswith("/console/") for u in links)
    kinds = {
        "console.js": "text/javascript; charset=utf-8",
        "console.css": "text/css; charset=utf-8",
        "icon.svg": "image/svg+xml",
    }
    total = len(page.content)
    for name, kind in kinds.items():
        r = httpx.get(srv.url + "/console/" + name)
        assert r.status_code == 200 and r.headers["content-type"] == kind
        assert r.headers["content-security-policy"] == csp
        total += len(r.content)
        # nothing from elsewhere: the only absolute URL is SVG's namespace name
        text = r.text.replace("http://www.w3.org/2000/svg", "")
        assert "http://" not in text and "https://" not in text
    assert total < 40_000  # a few KB of its own, no framework
    for missing in ("index.html", "app.js", "..%2Fapi_router.py", "static"):
        r = httpx.get(srv.url + "/console/" + missing)
        assert r.status_code == 404, missing
    assert httpx.head(srv.url + "/console").status_code == 200


# --- in a real browser -------------------------------------------------------------------------


def _number(text: str) -> int:
    return int(text.replace(",", "").strip() or 0)


class Console:
    """The page in headless Chromium, with every console message and page error recorded."""

    def __init__(self, srv: Server, width: int = 1360, height: int = 900) -> None:
        from playwright.sync_api import sync_playwright

        self.srv = srv
        self.errors: list[str] = []
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM)
        self.page = self.browser.new_page(viewport={"width": width, "height": height})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, key: str | None = None) -> None:
        self.page.goto(self.srv.url + "/console")
        self.page.wait_for_selector("#login:not([hidden])")
        if key is not None:
            self.page.fill("#key", key)
            self.page.click("#login-form button[type=submit]")

    def route_requests(self, route: str) -> int:
        for row in self.page.query_selector_all("#routes tbody tr"):
            cells = [c.inner_text() for c in row.query_selector_all("td")]
            if cells and cells[0] == route:
                return _number(cells[2])
        return 0

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()


@pytest.fixture
def console(srv: Server) -> Iterator[Console]:
    c = Console(srv)
    yield c
    c.close()


@needs_chromium
def test_console_in_headless_chromium(srv: Server, console: Console, tmp_path: Path) -> None:
    page = console.page
    console.open(srv.key)
    page.wait_for_selector("#gpus .gpu")
    assert page.locator("#gpus .gpu").count() == 2
    assert "NVIDIA H100 80GB HBM3" in page.inner_text("#gpus")
    assert "GiB" in page.inner_text("#gpus") and "°C" in page.inner_text("#gpus")
    models = page.inner_text("#models")
    assert LOCAL in models and "ready" in models and "iir/echo" in models
    assert "closed" in page.inner_text("#providers")
    assert page.evaluate("sessionStorage.getItem('iir.console.key')") == srv.key

    # traffic shows up at the next refresh
    before = console.route_requests("/v1/chat/completions")
    for _ in range(3):
        assert chat(srv, "Hello there, how are you today?").status_code == 200
    page.wait_for_function(
        """(n) => [...document.querySelectorAll('#routes tbody tr')].some((r) =>
              r.cells[0].textContent === '/v1/chat/completions' &&
              Number(r.cells[2].textContent.replace(/,/g, '')) >= n)""",
        arg=before + 3,
        timeout=20_000,
    )
    assert console.route_requests("/v1/chat/completions") >= before + 3
    # two summaries make a rate and the first points of every sparkline
    page.wait_for_function(
        "document.querySelectorAll('#gpus svg polyline').length >= 2", timeout=20_000
    )
    assert page.inner_text("#t-rps") != "\u2013"  # the placeholder until two summaries
    assert LOCAL in page.inner_text("#routing")

    # the key survives a reload of the tab, and forgetting it asks again
    page.reload()
    page.wait_for_selector("#gpus .gpu")
    page.click("#forget")
    page.wait_for_selector("#login:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('iir.console.key')") is None

    shot = tmp_path / "console.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert console.errors == []


@needs_chromium
def test_a_refused_key_asks_again(srv: Server, console: Console) -> None:
    console.open("not-the-key-0123456789abcdef")
    console.page.wait_for_function(
        "document.getElementById('login-error').textContent.includes('refused')", timeout=10_000
    )
    assert console.page.is_hidden("#dash")
    assert console.page.evaluate("sessionStorage.getItem('iir.console.key')") is None
    # the browser reports the refusal (403) itself; nothing else went wrong
    assert console.errors and all("403" in e for e in console.errors)


# --- the README's screenshot ----------------------------------------------------------------


def screenshot(out: Path, seconds: float = 45.0) -> None:
    """Serves with steady traffic for a while (so rates and sparklines have a history), then
    saves the console as a PNG while the traffic still runs."""
    texts = [
        "Hello there, how are you today?",
        "Write a short poem about the sea",
        "Summarize this: the meeting moved to Thursday at 10.",
        "Translate 'good morning' into German",
        "Solve the equation 3x + 7 = 22",
        "def add(a, b): fix the bug in this Python function",
    ]
    stop = threading.Event()

    def load(s: Server) -> None:
        i = 0
        while not stop.is_set():
            chat(s, texts[i % len(texts)])
            i += 1
            # between about 3 and 12 requests a second, slowly changing
            stop.wait(0.05 + 0.25 * (0.5 + 0.5 * math.sin(i / 40)))

    fake = FakeProvider("openai", key="sk-openai-CONSOLE-0123456789")
    fake.start()
    try:
        with Server(env=console_env(fake)) as s:
            wait_ready(s, LOCAL)
            traffic(s)
            worker = threading.Thread(target=load, args=(s,), daemon=True)
            worker.start()
            c = Console(s, width=1360, height=900)
            try:
                c.open(s.key)
                c.page.wait_for_selector("#gpus .gpu")
                c.page.wait_for_timeout(seconds * 1000)
                c.page.screenshot(path=str(out), full_page=True)
                if c.errors:
                    raise SystemExit(f"console errors: {c.errors}")
            finally:
                stop.set()
                worker.join()
                c.close()
    finally:
        fake.stop()


if __name__ == "__main__":
    screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/console.png"))
