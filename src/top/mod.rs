//! `gantry top`: the status page's picture in a terminal, refreshed like
//! `top`, from the same `/status.json`. Rendering is a pure function of two
//! snapshots (rates come from their difference), so it is tested without a
//! server or a terminal.

pub mod fetch;

use std::fmt::Write as _;

use serde_json::Value;

/// Rows per table, so a frame fits a terminal.
const ROWS: usize = 8;

/// A frame: `now`, with rates since `before` when there is one.
pub fn render(now: &Value, before: Option<&Value>, width: usize) -> String {
    let mut out = String::new();
    let width = width.max(60);
    let s = &now["server"];
    let store = &s["store"];
    let size = match &store["size_bytes"] {
        Value::Number(n) => bytes(n.as_u64().unwrap_or(0)),
        other => text(other),
    };
    let writable = if store["writable"].as_bool() == Some(false) {
        ", NOT WRITABLE"
    } else {
        ""
    };
    line(
        &mut out,
        width,
        &format!(
            "gantry {}  up {}  {} store {}{}  connections {}  in flight {}  window {}",
            text(&s["version"]),
            uptime(s["uptime_seconds"].as_f64().unwrap_or(0.0)),
            text(&s["backend"]),
            size,
            writable,
            count(&s["connections"]),
            count(&s["inflight"]),
            window(now),
        ),
    );
    let elapsed = before.and_then(|b| {
        let dt = now["time_unix_ms"].as_u64()? as f64 - b["time_unix_ms"].as_u64()? as f64;
        (dt > 0.0).then_some(dt / 1000.0)
    });
    let rate = |now: &Value, before: Option<&Value>| -> String {
        match (elapsed, now.as_u64(), before.and_then(Value::as_u64)) {
            (Some(dt), Some(n), Some(b)) if n >= b => format!("{:.1}/s", (n - b) as f64 / dt),
            _ => "–".into(),
        }
    };

    ratelimit(&mut out, width, now, before, &rate);
    leases(&mut out, width, &now["leases"]);
    cache(&mut out, width, &now["cache"]);
    spans(&mut out, width, now);
    queries(&mut out, width, &now["query"]);
    out
}

type Rate<'a> = &'a dyn Fn(&Value, Option<&Value>) -> String;

fn ratelimit(out: &mut String, width: usize, now: &Value, before: Option<&Value>, rate: Rate) {
    let r = &now["ratelimit"];
    heading(out, "RATE LIMITS");
    if let Some(e) = error(r).or_else(|| error(&r["limits"])) {
        line(out, width, &e);
        return;
    }
    let mut rows = vec![cells(&[
        "limit",
        "rate",
        "burst",
        "allowed",
        "allowed/s",
        "denied",
        "denied/s",
        "waiting",
    ])];
    let mut limits = list(&r["limits"]["limits"]);
    // Busiest first: callers waiting, then denials, then grants.
    let weight = |l: &Value| {
        let c = &r["counters"][text(&l["name"])];
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        (n("waiting"), n("denied"), n("allowed"))
    };
    limits.sort_by_key(|l| std::cmp::Reverse(weight(l)));
    for limit in limits {
        let name = text(&limit["name"]);
        let c = &r["counters"][&name];
        let was = before.map(|b| &b["ratelimit"]["counters"][&name]);
        rows.push(vec![
            name.clone(),
            format!("{}/{}", count(&limit["rate"]), duration(&limit["period"])),
            count(&limit["burst"]),
            count(&c["allowed"]),
            rate(&c["allowed"], was.map(|w| &w["allowed"])),
            count(&c["denied"]),
            rate(&c["denied"], was.map(|w| &w["denied"])),
            count(&c["waiting"]),
        ]);
    }
    table(out, width, rows, "no limits configured");
    let mut denied = vec![cells(&["most denied key", "limit", "denied"])];
    if let Value::Object(limits) = &r["denied_keys"] {
        for (limit, keys) in limits {
            for k in list(keys) {
                denied.push(vec![text(&k["key"]), limit.clone(), count(&k["denied"])]);
            }
        }
    }
    if denied.len() > 1 {
        table(out, width, denied, "");
    }
    let mut hot = vec![cells(&["hot key", "limit", "tokens", "full in", "waiters"])];
    if let Value::Object(limits) = &r["hot_keys"] {
        for (limit, answer) in limits {
            for b in list(&answer["buckets"]) {
                hot.push(vec![
                    text(&b["key"]),
                    limit.clone(),
                    format!("{}/{}", count(&b["tokens"]), count(&b["burst"])),
                    duration(&b["full_in"]),
                    count(&b["waiters"]),
                ]);
            }
        }
    }
    if hot.len() > 1 {
        table(out, width, hot, "");
    }
}

fn leases(out: &mut String, width: usize, l: &Value) {
    heading(out, "LEASE POOLS");
    if let Some(e) = error(l) {
        line(out, width, &e);
        return;
    }
    let mut rows = vec![cells(&["pool", "capacity", "in use", "waiting", "holders"])];
    for p in list(&l["pools"]) {
        if let Some(e) = error(p) {
            rows.push(vec![
                text(&p["pool"]),
                e,
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        let holders: Vec<String> = list(&p["holders"])
            .iter()
            .map(|h| format!("{}×{}", text(&h["holder"]), count(&h["count"])))
            .collect();
        rows.push(vec![
            text(&p["pool"]),
            count(&p["capacity"]),
            count(&p["in_use"]),
            count(&p["waiting"]),
            holders.join(", "),
        ]);
    }
    table(out, width, rows, "no pools configured");
}

fn cache(out: &mut String, width: usize, c: &Value) {
    heading(out, "CACHE");
    if let Some(e) = error(c).or_else(|| error(&c["stats"])) {
        line(out, width, &e);
        return;
    }
    let hits =
        |s: &Value| s["hot_hits"].as_u64().unwrap_or(0) + s["store_hits"].as_u64().unwrap_or(0);
    let ratio = |s: &Value| {
        let lookups = hits(s) + s["store_misses"].as_u64().unwrap_or(0);
        if lookups == 0 {
            "–".to_string()
        } else {
            format!("{:.1}%", 100.0 * hits(s) as f64 / lookups as f64)
        }
    };
    let mut rows = vec![cells(&[
        "namespace",
        "entries",
        "bytes",
        "stored",
        "hits",
        "misses",
        "hit ratio",
        "evictions",
    ])];
    let mut namespaces = list(&c["stats"]["namespaces"]);
    namespaces
        .sort_by_key(|s| std::cmp::Reverse(hits(s) + s["store_misses"].as_u64().unwrap_or(0)));
    for s in namespaces {
        rows.push(vec![
            text(&s["namespace"]),
            count(&s["entries"]),
            bytes(s["raw_bytes"].as_u64().unwrap_or(0)),
            bytes(s["stored_bytes"].as_u64().unwrap_or(0)),
            hits(s).to_string(),
            count(&s["store_misses"]),
            ratio(s),
            count(&s["evictions"]),
        ]);
    }
    table(out, width, rows, "no namespaces yet");
    line(
        out,
        width,
        &format!(
            "total hit ratio {}  watchers {}",
            ratio(&c["stats"]["total"]),
            count(&c["watchers"])
        ),
    );
}

fn spans(out: &mut String, width: usize, now: &Value) {
    let t = &now["traces"];
    heading(out, &format!("ENDPOINTS (last {})", window(now)));
    if let Some(e) = error(t).or_else(|| error(&t["endpoints"])) {
        line(out, width, &e);
        return;
    }
    let mut rows = vec![cells(&[
        "service", "endpoint", "calls", "errors", "error %", "p50", "p99",
    ])];
    let mut endpoints = list(&t["endpoints"]["endpoints"]);
    // Failing first, then the busiest.
    endpoints.sort_by_key(|e| {
        std::cmp::Reverse((
            e["errors"].as_u64().unwrap_or(0),
            e["calls"].as_u64().unwrap_or(0),
        ))
    });
    for e in endpoints {
        let calls = e["calls"].as_u64().unwrap_or(0);
        let errors = e["errors"].as_u64().unwrap_or(0);
        let share = if calls == 0 {
            "–".to_string()
        } else {
            format!("{:.1}%", 100.0 * errors as f64 / calls as f64)
        };
        rows.push(vec![
            text(&e["service"]),
            text(&e["endpoint"]),
            calls.to_string(),
            errors.to_string(),
            share,
            duration(&e["p50"]),
            duration(&e["p99"]),
        ]);
    }
    table(out, width, rows, "no spans in the window");
    let c = &t["counters"];
    line(
        out,
        width,
        &format!(
            "spans accepted {}  dropped {}  queued {}",
            count(&c["accepted_spans"]),
            count(&c["dropped_spans"]),
            count(&c["queue_spans"])
        ),
    );
}

fn queries(out: &mut String, width: usize, q: &Value) {
    heading(out, "QUERIES (by total time)");
    if let Some(e) = error(q).or_else(|| error(&q["top"])) {
        line(out, width, &e);
        return;
    }
    let mut rows = vec![cells(&["calls", "total", "p50", "p99", "N+1", "statement"])];
    for s in list(&q["top"]["queries"]) {
        let per_trace = s["batching"]["max_per_trace"].as_u64().unwrap_or(0);
        let sample = match text(&s["sample"]) {
            t if t.is_empty() => text(&s["fingerprint"]),
            t => t,
        };
        rows.push(vec![
            count(&s["calls"]),
            duration(&s["total"]),
            duration(&s["p50"]),
            duration(&s["p99"]),
            if per_trace > 0 {
                format!("{per_trace}/trace")
            } else {
                String::new()
            },
            one_line(&sample),
        ]);
    }
    table(out, width, rows, "no queries recorded");
    let slow = list(&q["slow"]["queries"]);
    if !slow.is_empty() {
        let mut rows = vec![cells(&["slow", "service", "statement"])];
        for s in slow {
            rows.push(vec![
                duration(&s["duration"]),
                text(&s["service"]),
                one_line(&text(&s["text"])),
            ]);
        }
        table(out, width, rows, "");
    }
}

fn heading(out: &mut String, title: &str) {
    let _ = write!(out, "\n{title}\n");
}

/// Writes a line cut to the terminal's width (on a character boundary).
fn line(out: &mut String, width: usize, text: &str) {
    let cut: String = text.chars().take(width).collect();
    out.push_str(cut.trim_end());
    out.push('\n');
}

/// Columns padded to their widest cell; the last column takes what is left.
fn table(out: &mut String, width: usize, rows: Vec<Vec<String>>, empty: &str) {
    if rows.len() <= 1 {
        if !empty.is_empty() {
            line(out, width, &format!("  ({empty})"));
        }
        return;
    }
    let shown: Vec<&Vec<String>> = rows.iter().take(ROWS + 1).collect();
    let columns = shown[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            shown
                .iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
                .min(40)
        })
        .collect();
    for row in shown {
        let mut text = String::from(" ");
        for (c, cell) in row.iter().enumerate() {
            let cell: String = cell.chars().take(widths[c].max(1)).collect();
            if c + 1 == columns {
                text.push_str(&cell);
            } else {
                let _ = write!(text, " {cell:<w$}", w = widths[c]);
                text.push(' ');
            }
        }
        line(out, width, &text);
    }
    if rows.len() > ROWS + 1 {
        line(out, width, &format!("  … {} more", rows.len() - ROWS - 1));
    }
}

fn cells(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_uppercase()).collect()
}

fn list(v: &Value) -> Vec<&Value> {
    v.as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

fn error(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    Some(format!("  {}: {}", text(&e["code"]), text(&e["message"])))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn count(v: &Value) -> String {
    v.as_u64().map(|n| n.to_string()).unwrap_or_else(|| text(v))
}

fn window(now: &Value) -> String {
    match now["window_seconds"].as_u64() {
        Some(3600) => "1h".into(),
        Some(s) if s % 60 == 0 => format!("{}m", s / 60),
        Some(s) => format!("{s}s"),
        None => "?".into(),
    }
}

/// A duration of protobuf's JSON mapping (`"0.001500s"`), made readable.
fn duration(v: &Value) -> String {
    let Some(seconds) = v
        .as_str()
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse::<f64>().ok())
    else {
        return "–".into();
    };
    let whole = seconds as u64;
    if seconds >= 3600.0 {
        format!("{}h{}m", whole / 3600, (whole % 3600) / 60)
    } else if seconds >= 60.0 {
        format!("{}m{}s", whole / 60, whole % 60)
    } else if seconds >= 1.0 {
        format!("{seconds:.2}s")
    } else if seconds >= 0.001 {
        format!("{:.1}ms", seconds * 1e3)
    } else {
        format!("{:.0}µs", seconds * 1e6)
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn uptime(seconds: f64) -> String {
    let s = seconds as u64;
    match (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m{}s", s % 60),
        (0, h, m) => format!("{h}h{m}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snapshot(t: u64, allowed: u64, denied: u64) -> Value {
        json!({
            "time_unix_ms": t,
            "window_seconds": 300,
            "server": {"version": "9.9.9", "uptime_seconds": 3725.0, "backend": "sled",
                       "connections": 3, "inflight": 1,
                       "store": {"backend": "sled", "size_bytes": 3_145_728, "writable": true}},
            "ratelimit": {
                "limits": {"limits": [{"name": "api", "rate": 100, "period": "1s", "burst": 200}]},
                "counters": {"api": {"allowed": allowed, "denied": denied, "waiting": 2}},
                "denied_keys": {"api": [{"key": "scraper-9", "denied": 40, "error": 0}]},
                "hot_keys": {"api": {"buckets": [{"key": "customer-7", "tokens": 0, "burst": 200,
                                                  "full_in": "2s", "waiters": 2}]}}
            },
            "leases": {"pools": [
                {"pool": "db", "capacity": 10, "in_use": 10, "waiting": 4,
                 "holders": [{"holder": "worker-1", "count": 10}]},
                {"pool": "gone", "error": {"code": "Unavailable", "message": "redis is down"}}
            ]},
            "cache": {"stats": {"namespaces": [{"namespace": "pages", "entries": 42, "raw_bytes": 2048,
                      "stored_bytes": 1024, "hot_hits": 6, "store_hits": 3, "store_misses": 1}],
                      "total": {"hot_hits": 6, "store_hits": 3, "store_misses": 1}}, "watchers": 2},
            "traces": {"endpoints": {"endpoints": [{"service": "checkout", "endpoint": "POST /pay",
                        "calls": 50, "errors": 5, "p50": "0.012s", "p99": "0.250s"}]},
                       "counters": {"accepted_spans": 120, "dropped_spans": 0, "queue_spans": 0}},
            "query": {"top": {"queries": [{"calls": 7, "total": "0.070s", "p50": "0.010s", "p99": "0.020s",
                       "sample": "SELECT *\n FROM users WHERE id = $1",
                       "batching": {"max_per_trace": 7, "occurrences": 1, "suggestion": "IN list"}}]},
                      "slow": {"queries": []}}
        })
    }

    #[test]
    fn a_frame_shows_every_capability_with_rates_from_the_previous_snapshot() {
        let before = snapshot(10_000, 100, 10);
        let now = snapshot(12_000, 300, 50);
        let frame = render(&now, Some(&before), 160);
        for expected in [
            "gantry 9.9.9",
            "up 1h2m",
            "sled store 3.0 MiB",
            "connections 3",
            "window 5m",
            "100.0/s", // 200 allowed in 2 s
            "20.0/s",  // 40 denied in 2 s
            "customer-7",
            "0/200",
            "scraper-9",
            "worker-1×10",
            "Unavailable: redis is down",
            "pages",
            "90.0%",
            "ENDPOINTS (last 5m)",
            "POST /pay",
            "10.0%",
            "250.0ms",
            "7/trace",
            "SELECT * FROM users WHERE id = $1",
        ] {
            assert!(
                frame.contains(expected),
                "{expected:?} missing from\n{frame}"
            );
        }
    }

    #[test]
    fn the_busiest_limits_come_first_and_a_long_list_is_cut() {
        let names: Vec<Value> = (0..12)
            .map(
                |i| json!({"name": format!("quiet-{i:02}"), "rate": 1, "period": "1s", "burst": 1}),
            )
            .chain([json!({"name": "zz-busy", "rate": 1, "period": "1s", "burst": 1})])
            .collect();
        let now = json!({
            "ratelimit": {"limits": {"limits": names},
                          "counters": {"zz-busy": {"allowed": 1, "denied": 9, "waiting": 0}}}
        });
        let frame = render(&now, None, 120);
        let busy = frame.find("zz-busy").expect("listed");
        let quiet = frame.find("quiet-00").expect("listed");
        assert!(busy < quiet, "{frame}");
        assert!(frame.contains("… 5 more"), "{frame}");
    }

    #[test]
    fn the_first_frame_has_no_rates_and_no_line_is_wider_than_the_terminal() {
        let frame = render(&snapshot(1, 5, 5), None, 60);
        assert!(frame.contains('–'));
        assert!(!frame.contains("/s "), "{frame}");
        for l in frame.lines() {
            assert!(l.chars().count() <= 60, "{l:?}");
        }
    }

    #[test]
    fn a_failed_section_and_an_unexpected_shape_render_without_panicking() {
        let broken = json!({
            "server": {},
            "ratelimit": {"error": {"code": "Unavailable", "message": "redis is down"}},
            "cache": "not an object",
            "query": {"top": {"queries": [{"calls": "x"}]}}
        });
        let frame = render(&broken, Some(&json!({})), 100);
        assert!(frame.contains("Unavailable: redis is down"), "{frame}");
        assert!(frame.contains("CACHE"));
    }
}
