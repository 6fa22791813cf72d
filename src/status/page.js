// gantry's status page: polls /status.json, renders each capability, and
// draws rates from the differences between snapshots (gantry keeps no
// history for the page; the page keeps the last HISTORY snapshots).
// Everything is written with textContent, never innerHTML: keys, holders and
// SQL text come from callers.
"use strict";
(() => {
  const INTERVAL_MS = 2000;
  const HISTORY = 150; // five minutes at one snapshot every two seconds
  const TOKEN_KEY = "gantry.status.token";
  const history = []; // {t (ms), allowed, denied, hits, lookups, spans}
  let updates = 0;
  let lastOk = 0;
  let askedForToken = false;

  const $ = (sel) => document.querySelector(sel);
  const field = (name, text, cls) => {
    for (const el of document.querySelectorAll(`[data-field="${name}"]`)) {
      el.textContent = text;
      if (cls !== undefined) el.className = cls;
    }
  };
  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  };

  // Durations arrive in protobuf's JSON mapping ("0.001500s").
  const seconds = (d) => (typeof d === "string" && d.endsWith("s") ? Number(d.slice(0, -1)) : 0);
  const ms = (d) => {
    const s = seconds(d);
    const unit = (big, bigName, small, smallName) =>
      (small ? `${big}${bigName} ${small}${smallName}` : `${big}${bigName}`);
    if (s >= 3600) return unit(Math.floor(s / 3600), "h", Math.floor((s % 3600) / 60), "m");
    if (s >= 60) return unit(Math.floor(s / 60), "m", Math.floor(s % 60), "s");
    if (s >= 1) return `${s.toFixed(2)} s`;
    if (s >= 0.001) return `${(s * 1000).toFixed(1)} ms`;
    return `${Math.round(s * 1e6)} µs`;
  };
  const num = (n) => Number(n || 0).toLocaleString("en-US");
  const bytes = (n) => {
    n = Number(n || 0);
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  };
  const uptime = (s) => {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
  };
  const pct = (x) => `${(x * 100).toFixed(1)}%`;

  // Rows a table shows: a server with hundreds of limits, namespaces or
  // endpoints lists the busiest (callers sort them first), then says how
  // many more there are.
  const MAX_ROWS = 20;

  // A table: columns are [header, cell(row) -> text | Node, class?].
  function table(all, columns, empty) {
    if (!all.length) return el("div", empty, "empty");
    const rows = all.slice(0, MAX_ROWS);
    const t = el("table");
    const head = t.createTHead().insertRow();
    for (const [h, , cls] of columns) head.appendChild(el("th", h, cls));
    const body = t.createTBody();
    for (const row of rows) {
      const tr = body.insertRow();
      for (const [h, cell, cls] of columns) {
        const td = tr.insertCell();
        if (cls) td.className = cls;
        td.dataset.col = h;
        const v = cell(row);
        if (v instanceof Node) td.appendChild(v); else td.textContent = v;
      }
    }
    if (all.length > rows.length) {
      const more = el("div", `… and ${num(all.length - rows.length)} more`, "empty");
      const wrap = el("div");
      wrap.append(t, more);
      return wrap;
    }
    return t;
  }
  // Busiest first (a sort that keeps the RPC's order among equals).
  const busiest = (rows, weight) => rows.map((r, i) => [weight(r), i, r]).sort((a, b) => b[0] - a[0] || a[1] - b[1]).map((x) => x[2]);
  const body = (name, node) => {
    const slot = document.querySelector(`[data-body="${name}"]`);
    slot.replaceChildren(node);
  };
  // A section that failed (e.g. UNAVAILABLE while Redis is down) says so.
  const failed = (value) => (value && value.error ? el("div", `${value.error.code}: ${value.error.message}`, "error") : null);

  function spark(name, values, color) {
    const svg = document.querySelector(`[data-chart="${name}"]`);
    const w = Number(svg.getAttribute("width")), h = Number(svg.getAttribute("height"));
    svg.replaceChildren();
    const finite = values.filter((v) => Number.isFinite(v));
    if (finite.length < 2) return;
    const max = Math.max(...finite, 1e-9);
    const step = w / (HISTORY - 1);
    const x0 = w - step * (values.length - 1);
    const points = values
      .map((v, i) => (Number.isFinite(v) ? `${(x0 + i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}` : null))
      .filter(Boolean)
      .join(" ");
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points);
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", color);
    line.setAttribute("stroke-width", "1.5");
    svg.appendChild(line);
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `max ${max.toFixed(2)}`;
    svg.appendChild(title);
  }
  // Per-second rates of a counter between consecutive snapshots.
  const rates = (key) =>
    history.map((p, i) => {
      if (!i) return NaN;
      const q = history[i - 1];
      const dt = (p.t - q.t) / 1000;
      const dv = p[key] - q[key];
      return dt > 0 && dv >= 0 ? dv / dt : NaN; // a restart resets counters
    });

  function server(s) {
    field("version", s.version);
    field("uptime", uptime(s.uptime_seconds));
    const store = s.store || {};
    const size = typeof store.size_bytes === "number" ? bytes(store.size_bytes) : String(store.size_bytes);
    field("store", `${s.backend}, ${size}${store.writable ? "" : ", NOT WRITABLE"}`, store.writable ? "" : "bad");
    field("connections", num(s.connections));
    field("inflight", num(s.inflight));
    field("transport", s.transport);
    field("config_source", s.config_source);
  }

  function ratelimit(r) {
    const err = failed(r) || failed(r.limits);
    if (err) {
      body("limits", err);
      body("denied_keys", el("div"));
      body("hot_keys", el("div"));
      return { allowed: NaN, denied: NaN };
    }
    const counters = r.counters || {};
    const rows = busiest(
      r.limits.limits.map((l) => ({ ...l, ...(counters[l.name] || {}) })),
      (l) => (l.denied || 0) * 1e6 + (l.allowed || 0) + (l.waiting || 0) * 1e12,
    );
    body("limits", table(rows, [
      ["limit", (l) => l.name],
      ["rate", (l) => `${num(l.rate)} / ${ms(l.period)}`],
      ["burst", (l) => num(l.burst)],
      ["scope", (l) => String(l.scope).replace("LIMIT_SCOPE_", "").toLowerCase()],
      ["allowed", (l) => num(l.allowed)],
      ["denied", (l) => el("span", num(l.denied), l.denied > 0 ? "bad" : "")],
      ["denied %", (l) => {
        const total = (l.allowed || 0) + (l.denied || 0);
        return total ? pct(l.denied / total) : "–";
      }],
      ["waiting", (l) => num(l.waiting)],
    ], "no limits configured"));
    const denied = [];
    for (const [limit, keys] of Object.entries(r.denied_keys || {})) {
      for (const k of keys) denied.push({ limit, ...k });
    }
    denied.sort((a, b) => b.denied - a.denied);
    body("denied_keys", table(denied.slice(0, 10), [
      ["limit", (k) => k.limit],
      ["key", (k) => k.key, "text"],
      ["denied", (k) => el("span", k.error ? `≤ ${num(k.denied)}` : num(k.denied), "bad")],
    ], "nothing denied yet"));
    const hot = [];
    for (const [limit, answer] of Object.entries(r.hot_keys || {})) {
      if (answer.error) { hot.push({ limit, key: `${answer.error.code}: ${answer.error.message}`, error: true }); continue; }
      // A bucket that refilled since HotKeys looked is not hot any more.
      for (const b of answer.buckets) if (b.tokens < b.burst) hot.push({ limit, ...b });
    }
    hot.sort((a, b) => (a.tokens / (a.burst || 1)) - (b.tokens / (b.burst || 1)));
    body("hot_keys", table(hot.slice(0, 15), [
      ["limit", (b) => b.limit],
      ["key", (b) => b.key, "text"],
      ["tokens", (b) => (b.error ? "" : el("span", `${num(b.tokens)} / ${num(b.burst)}`, b.tokens === 0 ? "bad" : ""))],
      ["full in", (b) => (b.error ? "" : ms(b.full_in))],
      ["waiters", (b) => (b.error ? "" : num(b.waiters))],
    ], "every bucket is full"));
    const sum = (k) => Object.values(counters).reduce((a, c) => a + (c[k] || 0), 0);
    return { allowed: sum("allowed"), denied: sum("denied") };
  }

  function leases(l) {
    const err = failed(l);
    if (err) { body("pools", err); return; }
    body("pools", table(l.pools, [
      ["pool", (p) => p.pool],
      ["capacity", (p) => (p.error ? "" : num(p.capacity))],
      ["in use", (p) => {
        if (p.error) return el("span", `${p.error.code}: ${p.error.message}`, "error");
        const wrap = el("span");
        const bar = el("span", null, "bar");
        const fill = el("i", null, p.in_use >= p.capacity ? "full" : "");
        fill.style.width = `${p.capacity ? Math.min(100, (100 * p.in_use) / p.capacity) : 0}%`;
        bar.appendChild(fill);
        wrap.append(bar, ` ${num(p.in_use)}`);
        return wrap;
      }],
      ["waiting", (p) => (p.error ? "" : el("span", num(p.waiting), p.waiting > 0 ? "warn" : ""))],
      ["holders", (p) => (p.error ? "" : p.holders.map((h) => `${h.holder} ×${h.count}`).join(", ") || "–"), "text"],
    ], "no pools configured"));
  }

  function cache(c) {
    const err = failed(c) || failed(c.stats);
    if (err) { body("namespaces", err); return { hits: NaN, lookups: NaN }; }
    field("watchers", `${num(c.watchers)} open watches`);
    const hits = (s) => (s.hot_hits || 0) + (s.store_hits || 0);
    const lookups = (s) => hits(s) + (s.store_misses || 0);
    body("namespaces", table(busiest(c.stats.namespaces, lookups), [
      ["namespace", (s) => s.namespace],
      ["entries", (s) => num(s.entries)],
      ["bytes", (s) => bytes(s.raw_bytes)],
      ["stored", (s) => bytes(s.stored_bytes)],
      ["hits", (s) => num(hits(s))],
      ["misses", (s) => num(s.store_misses)],
      ["hit ratio", (s) => (lookups(s) ? pct(hits(s) / lookups(s)) : "–")],
      ["evictions", (s) => num(s.evictions)],
      ["expirations", (s) => num(s.expirations)],
    ], "no namespaces yet"));
    const total = c.stats.total || {};
    return { hits: hits(total), lookups: lookups(total) };
  }

  function spans(s, window) {
    field("spans_window", `over the last ${window}`);
    const err = failed(s) || failed(s.endpoints);
    if (err) { body("endpoints", err); return NaN; }
    const c = s.counters || {};
    field("spans_counters", `${num(c.accepted_spans)} accepted, ${num(c.dropped_spans)} dropped, ${num(c.queue_spans)} queued, ${num(c.stored_traces)} traces kept`);
    body("endpoints", table(busiest(s.endpoints.endpoints, (e) => (e.errors || 0) * 1e9 + (e.calls || 0)), [
      ["service", (e) => e.service],
      ["endpoint", (e) => e.endpoint, "text"],
      ["calls", (e) => num(e.calls)],
      ["errors", (e) => el("span", num(e.errors), e.errors > 0 ? "bad" : "")],
      ["error %", (e) => (e.calls ? pct(e.errors / e.calls) : "–")],
      ["p50", (e) => ms(e.p50)],
      ["p99", (e) => ms(e.p99)],
      ["max", (e) => ms(e.max)],
    ], "no spans in the window"));
    return c.accepted_spans || 0;
  }

  function query(q) {
    const err = failed(q);
    if (err) { body("top", err); body("slow", el("div")); return; }
    body("top", failed(q.top) || table(q.top.queries, [
      ["fingerprint", (s) => s.sample || s.fingerprint, "text"],
      ["calls", (s) => num(s.calls)],
      ["total", (s) => ms(s.total)],
      ["p50", (s) => ms(s.p50)],
      ["p99", (s) => ms(s.p99)],
      ["N+1", (s) => (s.batching && s.batching.max_per_trace
        ? el("span", `${num(s.batching.max_per_trace)}/trace: ${s.batching.suggestion}`, "warn") : ""), "text"],
    ], "no queries recorded"));
    body("slow", failed(q.slow) || table(q.slow.queries, [
      ["when", (s) => (s.time ? new Date(s.time).toLocaleTimeString() : "")],
      ["took", (s) => ms(s.duration)],
      ["service", (s) => s.service],
      ["rows", (s) => num(s.rows)],
      ["statement", (s) => s.text, "text"],
    ], "no slow queries"));
  }

  function render(snap) {
    server(snap.server || {});
    const window = $("#window").value;
    const point = { t: snap.time_unix_ms };
    Object.assign(point, snap.ratelimit ? ratelimit(snap.ratelimit) : { allowed: NaN, denied: NaN });
    if (snap.leases) leases(snap.leases);
    Object.assign(point, snap.cache ? cache(snap.cache) : { hits: NaN, lookups: NaN });
    point.spans = snap.traces ? spans(snap.traces, window) : NaN;
    if (snap.query) query(snap.query);
    history.push(point);
    if (history.length > HISTORY) history.shift();
    spark("allowed", rates("allowed"), "#1a7f37");
    spark("denied", rates("denied"), "#cf222e");
    spark("spans", rates("spans"), "#0969da");
    const ratio = history.map((p, i) => {
      if (!i) return NaN;
      const q = history[i - 1];
      const lookups = p.lookups - q.lookups;
      return lookups > 0 ? (p.hits - q.hits) / lookups : NaN;
    });
    spark("hit_ratio", ratio, "#8250df");
    field("hit_ratio", point.lookups ? pct(point.hits / point.lookups) : "–");
  }

  async function poll() {
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    try {
      const resp = await fetch(`status.json?window=${$("#window").value}`, { headers, cache: "no-store" });
      if (resp.status === 401) {
        // The port wants telemetry.metrics_token_file's token; kept for this
        // tab only. Asked once per page load, not at every poll.
        sessionStorage.removeItem(TOKEN_KEY);
        if (!askedForToken) {
          askedForToken = true;
          const given = window.prompt("This gantry's metrics port needs its bearer token (telemetry.metrics_token_file):");
          if (given) sessionStorage.setItem(TOKEN_KEY, given.trim());
        }
        throw new Error("401: the metrics port needs its token (reload the page to enter it)");
      }
      if (!resp.ok) throw new Error(`${resp.status}: ${await resp.text()}`);
      render(await resp.json());
      updates++;
      lastOk = Date.now();
      field("updates", String(updates));
      $("#stale").className = "";
    } catch (e) {
      field("stale_reason", e.message);
      $("#stale").className = "on";
    }
    field("updated", lastOk ? new Date(lastOk).toLocaleTimeString() : "never");
  }

  $("#window").addEventListener("change", poll);
  poll();
  setInterval(poll, INTERVAL_MS);
})();
