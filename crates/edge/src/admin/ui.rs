//! The live status page: one self-contained HTML document (inline CSS and JS, no external
//! assets, so it works on an air-gapped cluster) that polls `/status` every second and redraws
//! the pools and backends in place.

use axum::http::header;
use axum::response::IntoResponse;

/// `GET /` and `GET /ui`.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}

/// The page. Element ids used by tests and scripts: `requests-total`, `tokens-total`, `polls`,
/// `ready`, `pools`; each pool is a `<section class="pool" data-pool="NAME">`.
pub const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>okome edge status</title>
<style>
  :root { --bg:#0f1318; --panel:#171c23; --line:#28303a; --text:#d8dee6; --dim:#8893a0;
          --ok:#3fb950; --warn:#d29922; --bad:#f85149; --accent:#58a6ff; }
  * { box-sizing: border-box; }
  body { margin:0; background:var(--bg); color:var(--text);
         font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  header { display:flex; align-items:baseline; gap:24px; padding:14px 20px;
           border-bottom:1px solid var(--line); flex-wrap:wrap; }
  header h1 { font-size:18px; margin:0; font-weight:600; }
  .kpi { display:flex; flex-direction:column; }
  .kpi b { font-size:20px; font-variant-numeric:tabular-nums; }
  .kpi span { color:var(--dim); font-size:12px; }
  main { padding:16px 20px; display:grid; gap:16px; }
  section.pool { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
  section.pool h2 { margin:0 0 6px; font-size:16px; display:flex; gap:12px; align-items:baseline; flex-wrap:wrap; }
  section.pool h2 small { color:var(--dim); font-weight:400; font-size:12px; }
  table { width:100%; border-collapse:collapse; font-variant-numeric:tabular-nums; }
  th, td { text-align:right; padding:4px 8px; border-top:1px solid var(--line); white-space:nowrap; }
  th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align:left; }
  th { color:var(--dim); font-weight:500; font-size:12px; }
  .state { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; }
  .s-ok { background:rgba(63,185,80,.15); color:var(--ok); }
  .s-ejected { background:rgba(210,153,34,.15); color:var(--warn); }
  .s-busy { background:rgba(88,166,255,.15); color:var(--accent, #58a6ff); }
  .s-down { background:rgba(248,81,73,.15); color:var(--bad); }
  .s-pressured { background:rgba(210,153,34,.15); color:var(--warn); }
  .s-shedding { background:rgba(248,81,73,.15); color:var(--bad); }
  .dim { color:var(--dim); }
  #err { color:var(--bad); }
  svg.spark { vertical-align:middle; }
  footer { padding:8px 20px 16px; color:var(--dim); font-size:12px; }
</style>
</head>
<body>
<header>
  <h1>okome edge</h1>
  <div class="kpi"><b id="ready">…</b><span>readiness</span></div>
  <div class="kpi"><b id="requests-total">0</b><span>requests</span></div>
  <div class="kpi"><b id="req-rate">–</b><span>req/s</span></div>
  <div class="kpi"><b id="tokens-total">0</b><span>tokens</span></div>
  <div class="kpi"><b id="edge-ttft">–</b><span>TTFT p50 / p95 (last min)</span></div>
  <div class="kpi"><b id="edge-gap">–</b><span>gap p95 / p99 (1 min)</span></div>
  <div class="kpi"><b id="edge-jitter">–</b><span>jitter p50 (1 min)</span></div>
  <div class="kpi"><svg class="spark" id="spark" width="160" height="32" viewBox="0 0 160 32"></svg><span>requests/s, last 2 min</span></div>
</header>
<main id="pools"><p class="dim">loading /status …</p></main>
<footer>refreshed every second from <code>/status</code> · polls: <span id="polls">0</span> ·
  up <span id="uptime">–</span> · config <span id="config">–</span> <span id="err"></span>
  · metrics at <a href="metrics" style="color:var(--accent)">/metrics</a></footer>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const history = [];
let polls = 0;
let last = null;

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;","'":"&#39;"}[c]));
}
function ms(v) {
  if (v === null || v === undefined) return "–";
  const m = v * 1000;
  if (m >= 1000) return (m / 1000).toFixed(2) + " s";
  if (m >= 100) return m.toFixed(0) + " ms";
  if (m >= 10) return m.toFixed(1) + " ms";
  return m.toFixed(2) + " ms";
}
function pair(a, b) { return ms(a) + " / " + ms(b); }
function dur(s) {
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + r + "s";
}
function spark(points) {
  const svg = $("spark");
  if (points.length < 2) { svg.innerHTML = ""; return; }
  const max = Math.max(1, ...points);
  const step = 160 / (points.length - 1);
  const d = points.map((p, i) => (i ? "L" : "M") + (i * step).toFixed(1) + "," + (31 - (p / max) * 29).toFixed(1)).join(" ");
  svg.innerHTML = '<path d="' + d + '" fill="none" stroke="#58a6ff" stroke-width="1.5"/>';
}
function backendRow(b) {
  const l = b.live || {};
  return "<tr data-backend=\"" + esc(b.address) + "\"><td>" + esc(b.address) +
    (b.name ? " <span class=dim>" + esc(b.name) + "</span>" : "") + "</td>" +
    "<td><span class=\"state s-" + esc(b.state) + "\">" + esc(b.state) + "</span>" +
    (b.ejected_for_seconds > 0 ? " <span class=dim>" + b.ejected_for_seconds.toFixed(1) + " s</span>" : "") +
    (b.arbiter && b.arbiter.state !== "ok" ? " <span class=\"state s-" + esc(b.arbiter.state) + "\" title=\"arbiter: " +
      esc(b.arbiter.reason) + (b.arbiter.obeyed ? "" : " (stale, ignored)") + "\">arbiter: " + esc(b.arbiter.state) + "</span>" : "") + "</td>" +
    "<td class=inflight>" + b.inflight + "</td><td class=queue>" + b.queue_depth + "</td>" +
    "<td>" + pair(l.ttft_p50, l.ttft_p95) + "</td><td>" + pair(l.gap_p95, l.gap_p99) + "</td>" +
    "<td>" + ms(l.jitter_p50) + "</td><td class=streams>" + (l.streams || 0) + " <span class=dim>/ " + (l.streams_total || 0) + "</span></td></tr>";
}
function nameLine(n) {
  return esc(n.name) + " → " + (n.addresses.length ? n.addresses.map(esc).join(", ") : "nothing yet") +
    (n.failing ? " <span style=\"color:var(--bad)\">(lookup failing: " + esc(n.last_error || "") + ")</span>" : "");
}
function poolSection(p) {
  const l = p.live || {};
  return "<section class=\"pool\" data-pool=\"" + esc(p.name) + "\"><h2>" + esc(p.name) +
    " <small>" + esc(p.kind) + " · " + p.healthy_backends + "/" + p.backends.length + " healthy · in flight " +
    p.inflight + " · queued " + p.queue_depth + " · TTFT p50/p95 " + pair(l.ttft_p50, l.ttft_p95) +
    " · gap p99 " + ms(l.gap_p99) + "</small></h2>" +
    (p.models.length ? "<div class=dim>models: " + p.models.map(esc).join(", ") + "</div>" : "") +
    ((p.names || []).length ? "<div class=dim>names: " + p.names.map(nameLine).join(" · ") + "</div>" : "") +
    "<table><thead><tr><th>backend</th><th>state</th><th>in flight</th><th>queue</th>" +
    "<th>TTFT p50 / p95</th><th>gap p95 / p99</th><th>jitter p50</th><th>streams 1 min / total</th></tr></thead><tbody>" +
    p.backends.map(backendRow).join("") + "</tbody></table></section>";
}
function render(s) {
  $("ready").textContent = s.ready ? "ready" : "not ready";
  $("ready").style.color = s.ready ? "var(--ok)" : "var(--bad)";
  $("requests-total").textContent = s.requests_total;
  $("tokens-total").textContent = s.tokens_total;
  $("uptime").textContent = dur(s.uptime_seconds);
  const c = s.config || {};
  $("config").textContent = "v" + c.version +
    (c.last_result ? " (last reload " + c.last_result + ": " + c.last_message + ")" : "");
  $("config").style.color = c.last_result && c.last_result !== "applied" ? "var(--bad)" : "";
  const l = s.live || {};
  $("edge-ttft").textContent = pair(l.ttft_p50, l.ttft_p95);
  $("edge-gap").textContent = pair(l.gap_p95, l.gap_p99);
  $("edge-jitter").textContent = ms(l.jitter_p50);
  if (last && s.uptime_seconds > last.uptime_seconds) {
    const rate = (s.requests_total - last.requests_total) / (s.uptime_seconds - last.uptime_seconds);
    history.push(Math.max(0, rate));
    if (history.length > 120) history.shift();
    $("req-rate").textContent = rate.toFixed(1);
    spark(history);
  }
  last = s;
  $("pools").innerHTML = s.pools.length ? s.pools.map(poolSection).join("") : "<p class=dim>no pools configured</p>";
}
async function poll() {
  try {
    const r = await fetch("status", { cache: "no-store" });
    if (!r.ok) throw new Error("/status answered " + r.status);
    render(await r.json());
    polls += 1;
    $("polls").textContent = polls;
    $("err").textContent = "";
  } catch (e) {
    $("err").textContent = String(e);
  }
}
poll();
setInterval(poll, 1000);
</script>
</body>
</html>
"##;
