// IIR operator console: polls GET /v1/console/summary with the key kept in this tab's
// sessionStorage and draws it. Rates and recent latency come from the difference of two
// summaries; sparklines from a short history kept here. Every value is put in the page as text
// (never as HTML), so a model or rule name cannot inject markup.
"use strict";

(() => {
  const STORE = "iir.console.key";
  const POLL_MS = 3000;
  const HISTORY = 60; // samples kept for sparklines (3 minutes)
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  let prev = null; // the previous summary
  let hist = null;
  let timer = null;

  function resetHistory() {
    hist = { rps: [], err: [], tok: [], gpus: new Map() };
  }
  resetHistory();

  // --- formatting ------------------------------------------------------------------------

  const dash = "–";
  const int = (n) => (n == null ? dash : Math.round(n).toLocaleString("en-US"));
  function rateText(r) {
    if (r == null) return dash;
    if (r === 0) return "0";
    if (r < 10) return r.toFixed(2);
    if (r < 100) return r.toFixed(1);
    return int(r);
  }
  function dur(s) {
    if (s == null) return dash;
    if (s < 0.001) return `${Math.round(s * 1e6)} µs`;
    if (s < 1) return `${(s * 1000).toPrecision(3)} ms`;
    return `${s.toFixed(2)} s`;
  }
  // Two durations in the unit of the larger: "1.75 / 2.49 ms".
  function durs(a, b) {
    if (a == null || b == null) return `${dur(a)} / ${dur(b)}`;
    const top = Math.max(a, b);
    const [k, unit] = top < 0.001 ? [1e6, "µs"] : top < 1 ? [1000, "ms"] : [1, "s"];
    const f = (v) => (v * k >= 100 ? Math.round(v * k).toString() : (v * k).toPrecision(3));
    return `${f(a)} / ${f(b)} ${unit}`;
  }
  const gib = (b) => (b == null ? dash : (b / 2 ** 30).toFixed(1));
  function ago(seconds) {
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }

  // --- DOM helpers -----------------------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  }

  function pill(text, cls, title) {
    const p = el("span", `pill ${cls}`, text);
    if (title) p.title = title;
    return p;
  }

  function bar(fraction, hot) {
    const b = el("div", hot ? "bar hot" : "bar");
    const fill = el("span");
    fill.style.width = `${Math.max(0, Math.min(1, fraction || 0)) * 100}%`;
    b.append(fill);
    return b;
  }

  // A line over its area, scaled to [0, max]; null values are gaps at the start.
  function sparkline(values, max) {
    const w = 120, h = 26;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    const pts = [];
    const n = Math.max(values.length, 2);
    const top = max > 0 ? max : Math.max(1e-9, ...values.filter((v) => v != null));
    values.forEach((v, i) => {
      if (v == null) return;
      const x = (w * i) / (n - 1);
      const y = h - 1 - (Math.min(v, top) / top) * (h - 2);
      pts.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    });
    if (pts.length >= 2) {
      const area = document.createElementNS(SVG, "polygon");
      const first = pts[0].split(",")[0], last = pts[pts.length - 1].split(",")[0];
      area.setAttribute("points", `${first},${h} ${pts.join(" ")} ${last},${h}`);
      area.setAttribute("class", "area");
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", pts.join(" "));
      line.setAttribute("class", "line");
      svg.append(area, line);
    }
    return svg;
  }

  function setSpark(id, values, max) {
    $(id).replaceChildren(sparkline(values, max));
  }

  // Rows of cells (text, or {text, cls, node}); numeric columns are given by index.
  function fill(id, rows, numeric, empty) {
    const body = $(id).tBodies[0];
    const cols = $(id).tHead.rows[0].cells.length;
    if (!rows.length) {
      const td = el("td", "empty", empty);
      td.colSpan = cols;
      const tr = el("tr");
      tr.append(td);
      body.replaceChildren(tr);
      return;
    }
    body.replaceChildren(
      ...rows.map((cells) => {
        const tr = el("tr");
        cells.forEach((c, i) => {
          const td = el("td", numeric.includes(i) ? "num" : "");
          if (c instanceof Node) td.append(c);
          else td.textContent = c == null ? dash : String(c);
          tr.append(td);
        });
        return tr;
      }),
    );
  }

  function push(list, value) {
    list.push(value);
    if (list.length > HISTORY) list.shift();
  }

  // --- numbers from two summaries -------------------------------------------------------

  // Like Prometheus' histogram_quantile: linear inside the bucket the rank falls in.
  function quantile(q, bounds, counts) {
    const total = counts.length ? counts[counts.length - 1] : 0;
    if (total <= 0 || !bounds.length) return null;
    const rank = q * total;
    let low = 0, below = 0;
    for (let i = 0; i < bounds.length; i++) {
      if (counts[i] >= rank) {
        if (counts[i] === below) return bounds[i];
        return low + ((bounds[i] - low) * (rank - below)) / (counts[i] - below);
      }
      low = bounds[i];
      below = counts[i];
    }
    return bounds[bounds.length - 1];
  }

  const minus = (a, b) => a.map((v, i) => Math.max(0, v - ((b && b[i]) || 0)));

  function sumCounts(routes, width) {
    const out = new Array(width).fill(0);
    for (const r of routes) r.bucket_counts.forEach((v, i) => { out[i] += v; });
    return out;
  }

  // --- drawing ---------------------------------------------------------------------------

  function render(s) {
    if (prev && (prev.started_at !== s.started_at || s.generated_at <= prev.generated_at)) {
      prev = null; // the server restarted: its counters did too
      resetHistory();
    }
    const dt = prev ? s.generated_at - prev.generated_at : 0;
    const rate = (cur, old) => (prev && dt > 0 ? Math.max(0, cur - old) / dt : null);
    const prevRoutes = new Map(prev ? prev.routes.map((r) => [r.route, r]) : []);
    const width = s.latency_bounds_seconds.length + 1;

    $("version").textContent = `v${s.version} · up ${ago(s.generated_at - s.started_at)}`;
    const health = $("health");
    health.hidden = false;
    health.className = `pill ${s.degraded.length ? "bad" : "ok"}`;
    health.textContent = s.degraded.length ? "degraded" : "healthy";
    health.title = s.degraded.join("\n");
    $("updated").textContent =
      `updated ${new Date(s.generated_at * 1000).toLocaleTimeString("en-GB")} · every ${POLL_MS / 1000} s`;
    banner(s.degraded.length ? `Degraded: ${s.degraded.join("; ")}` : null);

    // tiles
    const t = s.totals;
    const rps = rate(t.requests, prev && prev.totals.requests);
    const eps = rate(t.errors, prev && prev.totals.errors);
    const tokIn = s.tokens.reduce((a, m) => a + m.prompt, 0);
    const tokOut = s.tokens.reduce((a, m) => a + m.completion, 0);
    const prevIn = prev ? prev.tokens.reduce((a, m) => a + m.prompt, 0) : 0;
    const prevOut = prev ? prev.tokens.reduce((a, m) => a + m.completion, 0) : 0;
    const inRate = rate(tokIn, prevIn), outRate = rate(tokOut, prevOut);
    if (prev) {
      push(hist.rps, rps);
      push(hist.err, eps);
      push(hist.tok, inRate + outRate);
    }
    $("t-rps").textContent = rateText(rps);
    $("t-err").textContent = rateText(eps);
    $("t-err").className = eps ? "value bad" : "value";
    setSpark("s-rps", hist.rps, 0);
    setSpark("s-err", hist.err, 0);
    setSpark("s-tok", hist.tok, 0);
    $("t-inflight").textContent = int(t.inflight);
    $("t-total").textContent = `${int(t.requests)} answered · ${int(t.rate_limited)} rate-limited`;
    $("t-tok").textContent = `${rateText(inRate)} / ${rateText(outRate)}`;
    $("t-over").textContent = durs(t.overhead_p50_seconds, t.overhead_p99_seconds);

    // latency over the last interval when there was traffic, else since start
    const all = sumCounts(s.routes, width);
    const window = prev ? minus(all, sumCounts(prev.routes, width)) : null;
    const recent = window && window[width - 1] > 0;
    const counts = recent ? window : all;
    const bounds = s.latency_bounds_seconds;
    $("t-lat").textContent = durs(quantile(0.5, bounds, counts), quantile(0.99, bounds, counts));
    $("t-lat-sub").textContent = recent ? `last ${Math.round(dt)} s, all routes` : "since start, all routes";

    renderGpus(s);

    fill(
      "models",
      s.models.map((m) => {
        const cls = { ready: "ok", loading: "warn", failed: "bad" }[m.state] || "off";
        const cell = el("span");
        cell.append(pill(m.state, cls));
        if (m.reason) cell.append(el("span", "reason", m.reason));
        return [m.id, m.source, cell, m.running, m.waiting];
      }),
      [3, 4],
      "no model",
    );

    fill(
      "providers",
      s.providers.map((p) => {
        const cell = el("span");
        if (!p.configured) cell.append(pill("not configured", "off", p.reason || ""));
        else {
          const cls = { closed: "ok", half_open: "warn", open: "bad" }[p.circuit] || "off";
          cell.append(pill(p.circuit.replace("_", "-"), cls));
        }
        return [p.name, cell, p.configured ? p.models : null, int(p.requests), int(p.failures), dur(p.p50_seconds)];
      }),
      [2, 3, 4, 5],
      "no provider",
    );

    const routes = [...s.routes].sort((a, b) => b.requests - a.requests || (a.route < b.route ? -1 : 1));
    fill(
      "routes",
      routes.map((r) => {
        const old = prevRoutes.get(r.route);
        const w = old ? minus(r.bucket_counts, old.bucket_counts) : null;
        const c = w && w[width - 1] > 0 ? w : r.bucket_counts;
        const errs = el("span", r.errors ? "bad" : "", int(r.errors));
        return [
          r.route,
          rateText(rate(r.requests, old ? old.requests : 0)),
          int(r.requests),
          errs,
          int(r.client_errors),
          dur(quantile(0.5, s.latency_bounds_seconds, c)),
          dur(quantile(0.99, s.latency_bounds_seconds, c)),
        ];
      }),
      [1, 2, 3, 4, 5, 6],
      "no request yet",
    );

    fill(
      "routing",
      s.routing.map((d) => [d.category, d.target === "none" ? el("span", "bad", "none (503)") : d.target, d.strategy, int(d.count)]),
      [3],
      "no request for model \"auto\" yet",
    );
    fill(
      "tokens",
      s.tokens.map((m) => [m.model, int(m.prompt), int(m.completion)]),
      [1, 2],
      "no tokens yet",
    );
    fill(
      "redactions",
      s.redactions.map((r) => [r.rule, r.direction, int(r.count)]),
      [2],
      "nothing redacted yet",
    );
    fill(
      "jobs",
      [
        ...Object.entries(s.jobs.by_status).map(([k, v]) => [k, int(v)]),
        ["waiting for a worker", int(s.jobs.queue_depth)],
      ],
      [1],
      "no job",
    );
    prev = s;
  }

  function renderGpus(s) {
    const box = $("gpus");
    if (!s.gpus.length) {
      box.replaceChildren(el("p", "muted", s.gpu_reason || "No GPU reported."));
      return;
    }
    box.replaceChildren(
      ...s.gpus.map((g) => {
        let h = hist.gpus.get(g.index);
        if (!h) hist.gpus.set(g.index, (h = { mem: [], util: [], temp: [], power: [] }));
        push(h.mem, g.memory_used_bytes);
        push(h.util, g.utilization_gpu_percent);
        push(h.temp, g.temperature_celsius);
        push(h.power, g.power_usage_watts);

        const card = el("div", "gpu");
        card.dataset.index = String(g.index);
        const title = el("h3", null, `GPU ${g.index} · ${g.name || "unknown model"}`);
        if (g.uuid) title.title = g.uuid;
        card.append(title);
        const row = (name, text, fraction, spark, hot) => {
          const m = el("div", "metric");
          const val = el("div", "val", text);
          if (fraction != null) val.append(bar(fraction, hot));
          const sp = el("div", "spark");
          sp.append(spark);
          m.append(el("div", "name", name), val, sp);
          card.append(m);
        };
        const memFrac = g.memory_total_bytes ? g.memory_used_bytes / g.memory_total_bytes : null;
        row("Memory", `${gib(g.memory_used_bytes)} / ${gib(g.memory_total_bytes)} GiB`, memFrac, sparkline(h.mem, g.memory_total_bytes || 0), memFrac > 0.95);
        const util = g.utilization_gpu_percent;
        row("Utilisation", util == null ? dash : `${util} %`, util == null ? null : util / 100, sparkline(h.util, 100), false);
        const temp = g.temperature_celsius;
        row("Temperature", temp == null ? dash : `${temp} °C`, temp == null ? null : temp / 100, sparkline(h.temp, 100), temp >= 85);
        const p = g.power_usage_watts, lim = g.power_limit_watts;
        row(
          "Power",
          p == null ? dash : `${Math.round(p)} W${lim ? ` / ${Math.round(lim)} W` : ""}`,
          p != null && lim ? p / lim : null,
          sparkline(h.power, lim || 0),
          false,
        );
        return card;
      }),
    );
  }

  // --- the key and the polling loop ----------------------------------------------------------

  function banner(text) {
    const b = $("banner");
    b.hidden = !text;
    b.textContent = text || "";
  }

  function showLogin(message) {
    clearTimeout(timer);
    prev = null;
    resetHistory();
    $("dash").hidden = true;
    $("forget").hidden = true;
    $("health").hidden = true;
    $("updated").textContent = "";
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("key").focus();
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    const key = sessionStorage.getItem(STORE);
    if (!key) return showLogin();
    let res;
    try {
      res = await fetch("/v1/console/summary", {
        headers: { Authorization: `Bearer ${key}` },
        cache: "no-store",
        signal: AbortSignal.timeout(10000),
      });
    } catch (err) {
      banner(`Cannot reach IIR: ${err.message}`);
      return schedule();
    }
    if (res.status === 401 || res.status === 403) {
      sessionStorage.removeItem(STORE);
      return showLogin("The key was refused.");
    }
    let body = null;
    try {
      body = await res.json();
    } catch {
      body = null;
    }
    if (!res.ok || !body) {
      banner(`IIR answered ${res.status}${body && body.detail ? `: ${body.detail}` : ""}`);
      return schedule();
    }
    $("login").hidden = true;
    $("dash").hidden = false;
    $("forget").hidden = false;
    render(body);
    schedule();
  }

  function start() {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("key").value.trim();
      if (!key) return;
      sessionStorage.setItem(STORE, key);
      $("key").value = "";
      $("login-error").textContent = "";
      poll();
    });
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(STORE);
      showLogin();
    });
    poll();
  }

  start();
})();
