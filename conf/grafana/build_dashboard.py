#!/usr/bin/env python3
"""Writes conf/grafana/okome.json, the okome Grafana dashboard. Edit this, run it, commit both.

    python3 conf/grafana/build_dashboard.py

Queries use the raw okome_* metrics (so the dashboard works without the recording rules);
threshold lines use the defaults of conf/prometheus/okome.rules.yml (okome-slo-thresholds).
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
_id = [0]
_y = [0]


def nid():
    _id[0] += 1
    return _id[0]


def row(title, repeat=None, collapsed=False):
    _y[0] += 1
    r = {"type": "row", "id": nid(), "title": title, "collapsed": collapsed,
         "gridPos": {"h": 1, "w": 24, "x": 0, "y": _y[0]}, "panels": []}
    if repeat:
        r["repeat"] = repeat
    _y[0] += 1
    return r


def target(expr, legend, ref):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def ts(title, exprs, unit="s", x=0, w=12, h=8, threshold=None, desc="", max_=None, stack=False):
    """A time series panel. exprs: [(expr, legend)]."""
    steps = [{"color": "green", "value": None}]
    if threshold is not None:
        steps.append({"color": "red", "value": threshold})
    defaults = {
        "unit": unit,
        "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                   "spanNulls": True,
                   "thresholdsStyle": {"mode": "dashed" if threshold is not None else "off"},
                   "stacking": {"mode": "normal" if stack else "none", "group": "A"}},
        "thresholds": {"mode": "absolute", "steps": steps},
        "min": 0,
    }
    if max_ is not None:
        defaults["max"] = max_
    return {
        "type": "timeseries", "id": nid(), "title": title, "description": desc, "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": _y[0]},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom",
                               "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [target(e, l, chr(65 + i)) for i, (e, l) in enumerate(exprs)],
    }


def stat(title, expr, unit="none", x=0, w=6, h=4, steps=None, desc="", legend=""):
    return {
        "type": "stat", "id": nid(), "title": title, "description": desc, "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": _y[0]},
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps or [
            {"color": "green", "value": None}]}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "area", "textMode": "auto"},
        "targets": [target(expr, legend, "A")],
    }


def advance(h=8):
    _y[0] += h


J = '{job=~"$job"}'
F = 'job=~"$job", route=~"$route", pool=~"$pool"'
P = 'job=~"$job", pool=~"$pool"'

panels = []

# ---------------------------------------------------------------------------------------------
panels.append(row("Overview"))
panels += [
    stat("Requests/s", f'sum(rate(okome_requests_total{J}[$__rate_interval]))', "reqps", 0),
    stat("Active streams (in flight)", f'sum(okome_backend_inflight{J})', "none", 6),
    stat("Backends down", f'sum(1 - max by (pool, backend) (okome_backend_healthy{J}))', "none", 12,
         steps=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
    stat("Tokens/s", f'sum(rate(okome_tokens_total{J}[$__rate_interval]))', "none", 18),
]
advance(4)
panels += [
    ts("Requests by status", [(f'sum by (status) (rate(okome_requests_total{J}[$__rate_interval]))', "{{status}}")],
       "reqps", 0, stack=True),
    ts("Streams by outcome", [(f'sum by (outcome) (rate(okome_streams_total{{{F}}}[$__rate_interval]))', "{{outcome}}")],
       "ops", 12, stack=True),
]
advance()
panels += [
    ts("Request duration p95 by route / pool (every request, e.g. TF Serving predict)",
       [(f'histogram_quantile(0.95, sum by (route, pool, le) (rate(okome_request_duration_seconds_bucket{{{F}}}[$__rate_interval])))',
         "{{route}} / {{pool}}")], "s", 0, w=8),
    ts("Response bytes/s by route",
       [(f'sum by (route) (rate(okome_response_bytes_total{{{F}}}[$__rate_interval]))', "{{route}}")],
       "Bps", 8, w=8, stack=True),
    ts("Edge processes: RSS and CPU",
       [(f'max by (instance) (process_resident_memory_bytes{J})', "RSS {{instance}}"),
        (f'sum by (instance) (rate(process_cpu_seconds_total{J}[$__rate_interval]))', "CPU cores {{instance}}")],
       "bytes", 16, w=8,
       desc="process_* from the edges' /metrics (the control plane and the arbiter export them too)."),
]
advance()

# ---------------------------------------------------------------------------------------------
panels.append(row("SLO: time to first token (p50 ≤ 0.5 s, p95 ≤ 2 s)"))
panels += [
    ts("TTFT p50 by route / pool",
       [(f'histogram_quantile(0.50, sum by (route, pool, le) (rate(okome_ttft_seconds_bucket{{{F}}}[$__rate_interval])))',
         "{{route}} / {{pool}}")], "s", 0, threshold=0.5,
       desc="Request accepted to first token written to the client. Threshold: okome:slo_threshold:ttft_p50_seconds."),
    ts("TTFT p95 by route / pool",
       [(f'histogram_quantile(0.95, sum by (route, pool, le) (rate(okome_ttft_seconds_bucket{{{F}}}[$__rate_interval])))',
         "{{route}} / {{pool}}")], "s", 12, threshold=2,
       desc="Threshold: okome:slo_threshold:ttft_p95_seconds."),
]
advance()

panels.append(row("SLO: jitter (gap p95 ≤ 100 ms, p99 ≤ 250 ms, per-stream σ p95 ≤ 50 ms)"))
panels += [
    ts("Inter-token gap p95 / p99",
       [(f'histogram_quantile(0.95, sum by (route, pool, le) (rate(okome_inter_token_seconds_bucket{{{F}}}[$__rate_interval])))',
         "p95 {{route}} / {{pool}}"),
        (f'histogram_quantile(0.99, sum by (route, pool, le) (rate(okome_inter_token_seconds_bucket{{{F}}}[$__rate_interval])))',
         "p99 {{route}} / {{pool}}")], "s", 0, w=12, threshold=0.25),
    ts("Per-stream gap standard deviation (p95, mean)",
       [(f'histogram_quantile(0.95, sum by (route, pool, le) (rate(okome_stream_jitter_seconds_bucket{{{F}}}[$__rate_interval])))',
         "p95 {{route}} / {{pool}}"),
        (f'sum by (route, pool) (rate(okome_stream_jitter_seconds_sum{{{F}}}[$__rate_interval])) / sum by (route, pool) (rate(okome_stream_jitter_seconds_count{{{F}}}[$__rate_interval]))',
         "mean {{route}} / {{pool}}")], "s", 12, threshold=0.05),
]
advance()

panels.append(row("SLO: stream disconnects (all ≤ 5 %, upstream ≤ 1 %)"))
panels += [
    ts("Disconnect ratio (client + upstream) by route / pool",
       [(f'sum by (route, pool) (rate(okome_streams_total{{{F}, outcome=~"client_disconnect|upstream_error|timeout"}}[$__rate_interval])) / sum by (route, pool) (rate(okome_streams_total{{{F}}}[$__rate_interval]))',
         "{{route}} / {{pool}}")], "percentunit", 0, threshold=0.05),
    ts("Stream outcomes (share)",
       [(f'sum by (outcome) (rate(okome_streams_total{{{F}, outcome!="completed"}}[$__rate_interval])) / ignoring (outcome) group_left sum(rate(okome_streams_total{{{F}}}[$__rate_interval]))',
         "{{outcome}}")], "percentunit", 12, threshold=0.01),
]
advance()

panels.append(row("SLO: queues (in flight ≤ 256 per backend, engine queue ≤ 32)"))
panels += [
    ts("Edge in flight per backend (all edges)",
       [(f'sum by (pool, backend) (okome_backend_inflight{{{P}}})', "{{pool}} {{backend}}")],
       "none", 0, threshold=256),
    ts("Engine waiting queue per backend",
       [(f'max by (pool, backend) (okome_backend_queue_depth{{{P}}})', "{{pool}} {{backend}}")],
       "none", 12, threshold=32,
       desc="The engine's own queue (vLLM vllm:num_requests_waiting), scraped by the edges."),
]
advance()

panels.append(row("SLO: caches (policy hit ≥ 90 %, prefix hit ≥ 20 %)"))
panels += [
    ts("Policy cache: hit ratio and lookups",
       [(f'sum(rate(okome_policy_cache_requests_total{{job=~"$job", result=~"hit|stale|negative_hit"}}[$__rate_interval])) / sum(rate(okome_policy_cache_requests_total{J}[$__rate_interval]))',
         "hit ratio")], "percentunit", 0, threshold=None, max_=1),
    # Prefix cache: lands with the edge's re-export of vLLM's counters.
    ts("Engine prefix cache hit ratio (vLLM)",
       [(f'sum by (pool, backend) (rate(okome_backend_prefix_cache_hits_total{{{P}}}[$__rate_interval])) / sum by (pool, backend) (rate(okome_backend_prefix_cache_queries_total{{{P}}}[$__rate_interval]))',
         "{{pool}} {{backend}}")], "percentunit", 12, max_=1,
       desc="vLLM's prefix_cache_hits / prefix_cache_queries, re-exported by the edge per backend."),
]
advance()
panels += [
    ts("Prefix-affinity picks by result",
       [(f'sum by (pool, result) (rate(okome_prefix_affinity_picks_total{{{P}}}[$__rate_interval]))',
         "{{pool}} {{result}}")], "ops", 0, stack=True,
       desc="Pools with pick: prefix_affinity. hit: the backend that served the longest prefix of the prompt; "
            "miss: none served enough of it (least loaded); overloaded: the best match was over the load bound; "
            "none: no whole block of prompt. Compare with the engines' hit ratio above."),
    ts("Prompt prefix matched by the edge",
       [(f'sum by (pool) (rate(okome_prefix_affinity_bytes_total{{kind="matched", {P}}}[$__rate_interval])) / sum by (pool) (rate(okome_prefix_affinity_bytes_total{{kind="looked_up", {P}}}[$__rate_interval]))',
         "{{pool}}")], "percentunit", 12, max_=1,
       desc="Share of the hashed prompt prefix (prefix_affinity.bytes at most) that the picked backend had served: "
            "the edge's estimate of the engines' hit ratio."),
]
advance()
panels += [
    ts("Policy cache lookups by result",
       [(f'sum by (result) (rate(okome_policy_cache_requests_total{J}[$__rate_interval]))', "{{result}}")],
       "ops", 0, stack=True),
    ts("Control plane calls from the edges (p95)",
       [(f'histogram_quantile(0.95, sum by (endpoint, le) (rate(okome_control_request_seconds_bucket{J}[$__rate_interval])))',
         "{{endpoint}}")], "s", 12),
]
advance()

panels.append(row("SLO: shedding, retries, backends (shed ≤ 2 %, retries ≤ 5 %, none down)"))
panels += [
    ts("Shed rate by reason (arbiter)",
       [(f'sum by (reason, priority) (rate(okome_shed_total{J}[$__rate_interval]))', "{{reason}} ({{priority}})")],
       "reqps", 0, w=8, stack=True,
       desc="503s because every eligible backend was shedding. Lands with the arbiter."),
    ts("Upstream retries by reason",
       [(f'sum by (route, reason) (rate(okome_upstream_retries_total{{job=~"$job", route=~"$route"}}[$__rate_interval]))',
         "{{route}} {{reason}}")], "ops", 8, w=8, stack=True),
    ts("Backends down / ejections",
       [(f'sum by (pool) (1 - max by (pool, backend) (okome_backend_healthy{{{P}}}))', "down: {{pool}}"),
        (f'sum by (pool) (increase(okome_backend_ejections_total{{{P}}}[$__rate_interval]))', "ejections: {{pool}}")],
       "none", 16, w=8, threshold=1),
]
advance()

# ---------------------------------------------------------------------------------------------
panels.append(row("Streams that survive: mid-stream failover and resumable streams"))
R = 'job=~"$job", route=~"$route"'
panels += [
    ts("Mid-stream failovers by outcome",
       [(f'sum by (route, reason, outcome) (rate(okome_failover_total{{{R}}}[$__rate_interval]))',
         "{{route}} {{reason}}: {{outcome}}")], "ops", 0, w=6, stack=True,
       desc="Engines that died mid-stream on routes with mid_stream_failover: continued on another "
            "backend, failed, or not eligible (tools, structured output, n > 1, logprobs)."),
    ts("Failover gap p50 / p99",
       [(f'histogram_quantile(0.5, sum by (le) (rate(okome_failover_gap_seconds_bucket{{{R}}}[$__rate_interval])))', "p50"),
        (f'histogram_quantile(0.99, sum by (le) (rate(okome_failover_gap_seconds_bucket{{{R}}}[$__rate_interval])))', "p99")],
       "s", 6, w=6, desc="Engine death noticed → the first continued token written to the client."),
    ts("Resumable streams held / detached",
       [(f'sum(okome_resumable_streams{J})', "held (live or within keep)"),
        (f'sum(okome_resumable_streams_detached{J})', "detached (engine running, no client)"),
        (f'sum(okome_resumable_buffer_bytes{J}) / 1048576', "buffered MiB")],
       "none", 12, w=6,
       desc="Streams a client can resume; detached ones keep their engine for the route's grace window."),
    ts("Resumes, cancels, grace expiries, refusals",
       [(f'sum by (result) (rate(okome_stream_resumes_total{J}[$__rate_interval]))', "resume: {{result}}"),
        (f'sum(rate(okome_stream_cancels_total{J}[$__rate_interval]))', "cancelled"),
        (f'sum(rate(okome_stream_grace_expired_total{J}[$__rate_interval]))', "grace expired (engine stopped)"),
        (f'sum(rate(okome_resumable_refused_total{J}[$__rate_interval]))', "served without an id (node budget)")],
       "ops", 18, w=6),
]
advance()

# ---------------------------------------------------------------------------------------------
panels.append(row("Pool: $pool", repeat="pool"))
BP = 'job=~"$job", pool=~"$pool"'
panels += [
    ts("$pool: TTFT p50 / p95 per backend",
       [(f'histogram_quantile(0.50, sum by (backend, le) (rate(okome_ttft_seconds_bucket{{{BP}}}[$__rate_interval])))', "p50 {{backend}}"),
        (f'histogram_quantile(0.95, sum by (backend, le) (rate(okome_ttft_seconds_bucket{{{BP}}}[$__rate_interval])))', "p95 {{backend}}")],
       "s", 0, w=8, threshold=2),
    ts("$pool: gap p99 per backend",
       [(f'histogram_quantile(0.99, sum by (backend, le) (rate(okome_inter_token_seconds_bucket{{{BP}}}[$__rate_interval])))', "{{backend}}")],
       "s", 8, w=8, threshold=0.25),
    ts("$pool: in flight, engine queue, health",
       [(f'sum by (backend) (okome_backend_inflight{{{BP}}})', "in flight {{backend}}"),
        (f'max by (backend) (okome_backend_queue_depth{{{BP}}})', "queued {{backend}}"),
        (f'max by (backend) (okome_backend_healthy{{{BP}}})', "healthy {{backend}}")],
       "none", 16, w=8),
]
advance()
panels += [
    ts("$pool: tokens/s by model",
       [(f'sum by (model) (rate(okome_tokens_total{{{BP}}}[$__rate_interval]))', "{{model}}")], "none", 0, w=12),
    ts("$pool: streams by outcome",
       [(f'sum by (outcome) (rate(okome_streams_total{{{BP}}}[$__rate_interval]))', "{{outcome}}")], "ops", 12, w=12,
       stack=True),
]
advance()

# ---------------------------------------------------------------------------------------------
panels.append(row("Arbiter"))
state_map = [{"type": "value", "options": {
    "0": {"text": "ok", "color": "green", "index": 0},
    "1": {"text": "pressured", "color": "yellow", "index": 1},
    "2": {"text": "shedding", "color": "orange", "index": 2},
    "3": {"text": "down", "color": "red", "index": 3}}}]
panels.append({
    "type": "state-timeline", "id": nid(), "title": "Backend state (arbiter)", "datasource": DS,
    "description": "0 ok, 1 pressured, 2 shedding, 3 down, with hysteresis.",
    "gridPos": {"h": 8, "w": 24, "x": 0, "y": _y[0]},
    "fieldConfig": {"defaults": {"mappings": state_map, "thresholds": {"mode": "absolute", "steps": [
        {"color": "green", "value": None}, {"color": "yellow", "value": 1}, {"color": "orange", "value": 2},
        {"color": "red", "value": 3}]}, "color": {"mode": "thresholds"}}, "overrides": []},
    "options": {"showValue": "auto", "mergeValues": True, "rowHeight": 0.9,
                "legend": {"displayMode": "list", "placement": "bottom"}},
    "targets": [target('max by (engine, backend) (okome_arbiter_backend_state{job=~"$arbiter_job"})',
                       "{{engine}} {{backend}}", "A")],
})
advance()
panels += [
    ts("GPU memory by device",
       [('max by (uuid) (okome_arbiter_gpu_memory_bytes{job=~"$arbiter_job", kind="used"})', "used {{uuid}}"),
        ('max by (uuid) (okome_arbiter_gpu_memory_bytes{job=~"$arbiter_job", kind="total"})', "total {{uuid}}")],
       "bytes", 0, w=12),
    ts("GPU memory used ratio",
       [('max by (uuid) (okome_arbiter_gpu_memory_bytes{job=~"$arbiter_job", kind="used"}) / max by (uuid) (okome_arbiter_gpu_memory_bytes{job=~"$arbiter_job", kind="total"})',
         "{{uuid}}")], "percentunit", 12, w=12, threshold=0.95, max_=1),
]
advance()
panels += [
    ts("Arbiter decisions by engine, state and rule",
       [('sum by (engine, state, rule) (rate(okome_arbiter_decisions_total{job=~"$arbiter_job"}[$__rate_interval]))',
         "{{engine}} → {{state}} ({{rule}})")], "ops", 0, w=24, stack=True),
]
advance()

# ---------------------------------------------------------------------------------------------
panels.append(row("Control plane"))
panels += [
    ts("Control API requests by endpoint and status",
       [('sum by (endpoint, status) (rate(okome_control_requests_total{job=~"$control_job"}[$__rate_interval]))',
         "{{endpoint}} {{status}}")], "reqps", 0, w=8, stack=True),
    ts("Snapshot version: served vs in use on edges",
       [('max(okome_control_snapshot_version{job=~"$control_job"})', "control plane"),
        (f'min by (instance) (okome_policy_snapshot_version{J})', "edge {{instance}}")], "none", 8, w=8),
    ts("Policy reloads and snapshot age on edges",
       [('sum by (result) (increase(okome_control_reloads_total{job=~"$control_job"}[$__rate_interval]))', "reload {{result}}"),
        (f'max(okome_policy_snapshot_age_seconds{J})', "max snapshot age (s)")], "none", 16, w=8),
]
advance()


def var_query(name, label, query, multi=True, include_all=True, hide=0):
    return {"type": "query", "name": name, "label": label, "datasource": DS,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "definition": query, "refresh": 2, "multi": multi, "includeAll": include_all,
            "allValue": ".*", "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1, "hide": hide, "options": []}


def var_const_job(name, label, default):
    return {"type": "custom", "name": name, "label": label, "query": default,
            "current": {"selected": True, "text": default, "value": default},
            "options": [{"selected": True, "text": default, "value": default}], "hide": 0}


dashboard = {
    "__inputs": [],
    "__requires": [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
        {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
        {"type": "panel", "id": "state-timeline", "name": "State timeline", "version": ""},
    ],
    "uid": "okome-edge",
    "title": "okome",
    "description": "okome: SLOs of the stream plane (TTFT, jitter, disconnects, queues, caches, shedding), "
                   "one row per backend pool, the arbiter and the control plane. Thresholds drawn are the "
                   "defaults of conf/prometheus/okome.rules.yml.",
    "tags": ["okome", "llm", "inference"],
    "editable": True,
    "graphTooltip": 1,
    "refresh": "10s",
    "schemaVersion": 39,
    "version": 1,
    "time": {"from": "now-1h", "to": "now"},
    "timepicker": {},
    "timezone": "",
    "links": [],
    "annotations": {"list": []},
    "templating": {"list": [
        {"type": "datasource", "name": "datasource", "label": "Prometheus", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
        var_query("job", "edge job", "label_values(okome_requests_total, job)"),
        var_query("route", "route", 'label_values(okome_ttft_seconds_count{job=~"$job"}, route)'),
        var_query("pool", "pool", 'label_values(okome_backend_healthy{job=~"$job"}, pool)'),
        var_const_job("control_job", "control plane job", "okome-control"),
        var_const_job("arbiter_job", "arbiter job", "okome-arbiter"),
    ]},
    "panels": panels,
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "okome.json")
with open(out, "w", encoding="utf-8") as f:
    json.dump(dashboard, f, indent=2, ensure_ascii=False)
    f.write("\n")
print(f"wrote {out}: {len(panels)} panels")
