"""Write deploy/monitoring/grafana/agent-kv-router.json (run from the repository root):

python -m deploy.monitoring.make_dashboard
"""

import json

DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []


def ts(title, targets, unit="short", w=12, h=8, desc="", max_=None):
    i = len(panels)
    p = {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": (i % 2) * 12 if w == 12 else 0, "y": (i // 2) * h, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi"},
        },
        "targets": [
            {"refId": chr(65 + j), "datasource": DS, "expr": e, "legendFormat": legend}
            for j, (e, legend) in enumerate(targets)
        ],
    }
    if max_ is not None:
        p["fieldConfig"]["defaults"]["max"] = max_
        p["fieldConfig"]["defaults"]["min"] = 0
    panels.append(p)


ts(
    "TTFT quantiles (processor)",
    [
        ("akr:processor_ttft_seconds:p50", "p50"),
        ("akr:processor_ttft_seconds:p90", "p90"),
        ("akr:processor_ttft_seconds:p99", "p99"),
        ("akr:frontend_ttft_seconds:p90", "p90 at the stock frontend"),
    ],
    "s",
    desc=(
        "Time to first token measured by the processor; the frontend line adds tokenization and "
        "templating."
    ),
)
ts(
    "ITL quantiles",
    [
        ("akr:processor_itl_seconds:p50", "p50"),
        ("akr:processor_itl_seconds:p90", "p90"),
        ("akr:processor_itl_seconds:p99", "p99"),
        ("akr:frontend_itl_seconds:p90", "p90 at the stock frontend"),
    ],
    "s",
    desc="Mean inter-token latency per request (processor) and per token (frontend).",
)
ts(
    "KV hit ratio",
    [
        ("akr:kv_hit_ratio:rate1m", "cached / prompt tokens (1m)"),
        ("akr_processor_kv_hit_ratio", "since start ({{instance}})"),
    ],
    "percentunit",
    max_=1,
    desc="Prompt tokens served from the workers' KV cache: rate(cached)/rate(prompt).",
)
ts(
    "Requests by outcome",
    [
        ("akr:requests:rate1m", "{{outcome}}"),
        ("sum(akr_processor_active_requests)", "in flight"),
        # min, not sum: every processor counts the same fleet (the fewest any one sees)
        ("min(akr_processor_workers)", "routable workers (fewest a processor sees)"),
    ],
    "reqps",
)
ts(
    "Decisions per worker",
    [("sum by (worker) (akr:decisions:rate1m)", "{{worker}}")],
    "reqps",
    desc="Routing decisions per second by chosen worker.",
)
ts(
    "Learned prefill time per worker",
    [
        ("akr_processor_worker_prefill_ratio", "{{worker}} ({{instance}})"),
        ("akr_router_worker_prefill_ratio", "{{worker}} (shared router)"),
    ],
    "short",
    desc=(
        "Each worker's prefill time as the learner measures it, over the router's model: 1 = as "
        "predicted, 2 = twice as slow. A worker far above the rest is slow (older GPU, noisy "
        "neighbour) and gets less traffic."
    ),
)
ts(
    "Decisions by reason",
    [("sum by (reason) (akr:decisions:rate1m)", "{{reason}}")],
    "reqps",
    desc=(
        "sticky: reuse budget kept the home worker; pin: a live cache pin did; overlap / load: the "
        "cost model; exploration: the posterior sample changed the choice."
    ),
)
ts(
    "Stickiness and exploration",
    [
        ("akr:stickiness:ratio1m", "stickiness (sticky + pin share)"),
        ("akr:exploration:ratio1m", "exploration rate"),
    ],
    "percentunit",
    max_=1,
)
ts(
    "Claims and tracked prefixes",
    [
        ("sum(akr_processor_claims)", "claims (pins + expected returns)"),
        ("sum(akr_processor_tracked_prefixes)", "tracked prefixes"),
    ],
    "short",
)
ts(
    "Errors and retries",
    [
        ("akr:worker_errors:rate1m", "worker errors {{worker}}"),
        ("akr:retries:rate1m", "retries"),
        ("akr:gateway_upstream_errors:rate1m", "gateway upstream {{kind}}"),
        ("akr:gateway_requests_5xx:rate1m", "gateway 5xx"),
        ("akr:gateway_rejects:rate1m", "rejected requests ({{field}})"),
        ("sum(rate(akr_processor_feedback_timeouts_total[1m]))", "feedback timeouts"),
        (
            'sum(rate(akr_router_feedback_total{kind="timeout"}[1m]))',
            "feedback timeouts (shared router)",
        ),
        (
            "sum(rate(akr_processor_router_feedback_dropped_total[1m]))",
            "feedback not delivered to the shared router",
        ),
    ],
    "reqps",
)
ts(
    "Dropped trace records",
    [
        ("sum(rate(akr_processor_trace_records_dropped_total[1m]))", "processor (per s)"),
        ("sum(rate(akr_gateway_trace_records_dropped_total[1m]))", "gateway (per s)"),
    ],
    "short",
    desc="Trace records that never reached the trace file (queue full, unwritable path, "
    "disk full, ...), all reasons.",
)
ts(
    "Routing and gateway overhead",
    [
        ("akr:processor_decision_seconds:p99", "decision p99"),
        ("akr:gateway_upstream_latency_seconds:p99", "gateway upstream p99"),
        ("akr:processor_e2e_seconds:p90", "e2e p90"),
    ],
    "s",
)
ts(
    "Event-loop lag p99",
    [
        ("akr:processor_event_loop_lag_seconds:p99", "processor"),
        ("akr:gateway_event_loop_lag_seconds:p99", "gateway"),
    ],
    "s",
    desc=(
        "How long ready work waits for the Python event loop of each component (uvloop timers: ~1 "
        "ms steps). Rising lag at flat CPU means one loop is the bottleneck: add processor or "
        "gateway instances."
    ),
)
ts(
    "Shared router (python -m router)",
    [
        ("sum by (reason) (rate(akr_router_decisions_total[1m]))", "decisions: {{reason}}"),
        ("sum(akr_router_requests_in_flight)", "in flight"),
        ("sum(akr_router_pending_feedback)", "pending feedback"),
        ("sum(akr_router_claiming_prefixes)", "claims (pins + expected returns)"),
        ("sum(akr_router_prefixes)", "tracked prefixes"),
        ("sum by (kind) (rate(akr_router_feedback_total[1m]))", "feedback by kind: {{kind}}"),
    ],
    "short",
    desc=(
        "Only with AKR_PROCESSOR_ROUTER_ENDPOINT set: the shared router's own state (the "
        "processors' pin and prefix gauges read 0 then)."
    ),
)
ts(
    "Hints seen by the gateway",
    [
        ("sum by (field) (rate(akr_gateway_hints_total[1m]))", "{{field}}"),
        ("sum(rate(akr_gateway_requests_total[1m]))", "requests"),
    ],
    "reqps",
)
dash = {
    "title": "agent-kv-router",
    "uid": "agent-kv-router",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "refresh": "5s",
    "time": {"from": "now-30m", "to": "now"},
    "tags": ["dynamo", "agent-kv-router"],
    "description": (
        "Gateway, processor and router of agent-kv-router (recording rules: "
        "deploy/monitoring/recording_rules.yml)."
    ),
    "templating": {
        "list": [
            {
                "name": "datasource",
                "type": "datasource",
                "query": "prometheus",
                "label": "Prometheus",
                "current": {},
                "hide": 0,
            }
        ]
    },
    "annotations": {"list": []},
    "panels": panels,
}
json.dump(dash, open("deploy/monitoring/grafana/agent-kv-router.json", "w"), indent=2)
print(len(panels))
