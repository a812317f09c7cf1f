"""The monitoring files (recording rules, alert rules, dashboard) hold to the metrics our code
registers: names, types and labels, read from each component's registry in-process.

Why here as well as tests/integration/test_monitoring_metrics.py: that test needs a real stack
and checks names only. A rule can name a real series and still be wrong: rate() over a gauge,
a counter compared raw (it only grows, and restarts at 0), a bucket read without
histogram_quantile or without ``le``, a ``by`` label or a legend label the series never
carries (the panel shows an empty legend, the alert's text an empty value). promtool checks
none of that. Dynamo's own series (``dynamo_*``) are held to real output by the integration
test only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import get_args

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from deploy.monitoring import names
from frontend.gateway import GET_ROUTES, POST_ROUTES
from frontend.metrics import UNAVAILABLE_REASONS as GATEWAY_UNAVAILABLE_REASONS
from frontend.metrics import UPSTREAM_ERROR_KINDS, GatewayMetrics
from processor.metrics import OUTCOMES, ProcessorMetrics
from router.metrics import _FEEDBACK_KINDS, RouterCollector
from router.policy import Reason
from router.service import RouterService
from router.unavailable import REASONS as PROCESSOR_UNAVAILABLE_REASONS

TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every scraped series
RANGE_FUNCTIONS = {"rate", "irate", "increase"}
_SELECTOR = re.compile(
    r"(?<![\w:\"])((?:akr|dynamo)_[a-z0-9_]+|akr:[a-z0-9_:]+)(?:\{([^}]*)\})?(\[[^\]]+\])?"
)
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"[^\"]*\"")
_VALUE_MATCHER = re.compile(r"(\w+)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_IGNORING = re.compile(r"\bignoring\s*\(([^)]*)\)")
_COMPARISON = re.compile(r"\s(?:<|>|==|!=|<=|>=)\s")


@dataclass(frozen=True)
class Series:
    """One series name as Prometheus stores it: counter, gauge, bucket, sum or count."""

    kind: str
    labels: frozenset[str]


# Every value the code gives the labels our files match on, so that a matcher that selects
# nothing (a misspelt route or reason: the rule is then silently dead) is caught. A label not
# listed here is not checked.
LABEL_VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("akr_processor_decisions_total", "reason"): frozenset(get_args(Reason)),
    ("akr_processor_requests_total", "outcome"): frozenset(OUTCOMES),
    ("akr_processor_unavailable_total", "reason"): frozenset(PROCESSOR_UNAVAILABLE_REASONS),
    ("akr_gateway_requests_total", "route"): frozenset((*POST_ROUTES, *GET_ROUTES, "other")),
    ("akr_gateway_unavailable_total", "reason"): frozenset(
        (*GATEWAY_UNAVAILABLE_REASONS, *PROCESSOR_UNAVAILABLE_REASONS)
    ),
    ("akr_gateway_upstream_errors_total", "kind"): frozenset(UPSTREAM_ERROR_KINDS),
    ("akr_router_feedback_total", "kind"): frozenset(_FEEDBACK_KINDS),
}


def _registries() -> Iterator[CollectorRegistry]:
    """Each component's registry, with every labelled family counted once (a family without
    children shows no labels)."""
    p = ProcessorMetrics()
    p.requests.labels(outcome="ok").inc()
    p.decisions.labels(worker="a", reason="load").inc()
    p.worker_errors.labels(worker="a").inc()
    p.observe_engine({0xA: 16}, {0xA: 0})
    p.observe_learner({0xA: 1.0})
    yield p.registry
    g = GatewayMetrics()
    g.count_request("/v1/chat/completions", 200)
    g.count_hint("prefix_id")
    g.reject("model")
    g.upstream_error("read")
    g.count_unavailable("no_worker")
    g.observe_upstream("/v1/chat/completions", 0.01)
    g.trace_lost = {"queue_full": 0}
    g.ready = True
    yield g.registry
    service = RouterService(block_size=64)
    service.router.bandit.prefill_ratios = lambda: {0xA: 1.0}  # type: ignore[method-assign]
    r = CollectorRegistry(auto_describe=False)
    r.register(RouterCollector(service))
    yield r


def exposed() -> dict[str, Series]:
    """Every series name our components expose, with its kind and label names."""
    out: dict[str, Series] = {}
    for registry in _registries():
        for fam in text_string_to_metric_families(generate_latest(registry).decode()):
            labels = frozenset(k for s in fam.samples for k in s.labels) - {"le"}
            if fam.type == "counter":
                out[f"{fam.name}_total"] = Series("counter", labels)
            elif fam.type == "histogram":
                out[f"{fam.name}_bucket"] = Series("bucket", labels | {"le"})
                out[f"{fam.name}_sum"] = Series("sum", labels)
                out[f"{fam.name}_count"] = Series("count", labels)
            elif not fam.name.endswith("_created"):
                out[fam.name] = Series(fam.type, labels)
    return out


def recorded() -> dict[str, frozenset[str]]:
    """Recorded series and the labels each keeps."""
    return {name: result_labels(expr, {}) for name, expr in names.rule_exprs().items()}


def result_labels(expr: str, series: dict[str, frozenset[str]]) -> frozenset[str]:
    """Label names of an expression's result (the forms our files use): its outer ``by``,
    none after an aggregation without one, else the labels of the series it reads."""
    left = _COMPARISON.split(expr.strip(), maxsplit=1)[0].strip()
    quantile = left.startswith("histogram_quantile(")
    if quantile or left.startswith("sum"):
        by = _BY.search(left)
        return frozenset() if by is None else _label_list(by.group(1)) - {"le"}
    picked = [series[m.group(1)] for m in _SELECTOR.finditer(left) if m.group(1) in series]
    return frozenset().union(*picked) if picked else frozenset()


def _label_list(text: str) -> frozenset[str]:
    return frozenset(x.strip() for x in text.split(",") if x.strip())


def problems(expr: str, ours: dict[str, Series], rules: dict[str, frozenset[str]]) -> list[str]:
    """What is wrong with one expression against the exposed and recorded series."""
    found: list[str] = []
    available: set[str] = set(TARGET_LABELS)
    foreign = False  # a Dynamo series: its labels are unknown here
    for m in _SELECTOR.finditer(expr):
        name, matchers, window = m.group(1), m.group(2) or "", m.group(3)
        if name.startswith("dynamo_"):
            foreign = True
            continue
        if name in rules:
            labels = rules[name]
        elif name in ours:
            s = ours[name]
            labels = s.labels | TARGET_LABELS
            fn = re.search(r"(\w+)\(\s*$", expr[: m.start()])
            in_range_fn = window is not None and fn is not None and fn.group(1) in RANGE_FUNCTIONS
            if s.kind == "gauge" and window is not None:
                found.append(f"{name} is a gauge, read over a range ({fn and fn.group(1)})")
            if s.kind in ("counter", "bucket", "sum", "count") and not in_range_fn:
                found.append(f"{name} ({s.kind}) is not read through rate/irate/increase")
            if s.kind == "bucket" and not _quantile_keeps_le(expr):
                found.append(f"{name} is not read by histogram_quantile keeping le")
        else:
            found.append(f"{name} is neither exposed by our components nor recorded")
            continue
        available |= labels
        missing = {label for label in _MATCHER.findall(matchers) if label not in labels}
        if missing:
            found.append(f"{name} has no label {sorted(missing)}")
        for label, op, value in _VALUE_MATCHER.findall(matchers):
            known = LABEL_VALUES.get((name, label))
            if known is None or op in ("!=", "!~"):
                continue
            hit = value in known if op == "=" else any(re.fullmatch(value, v) for v in known)
            if not hit:
                found.append(f'{name}{{{label}{op}"{value}"}} matches no value the code gives it')
    for by in [] if foreign else _BY.findall(expr):
        missing = _label_list(by) - available
        if missing:
            found.append(f"by ({by}): no series here has {sorted(missing)}")
    found += _ratio_problems(expr)
    return found


def _ratio_problems(expr: str) -> list[str]:
    """A ratio joined with ``ignoring (x) group_left`` (a per-reason share of all requests):
    its sides must carry the same labels but x, or Prometheus matches no pair (or too many)."""
    ignoring = _IGNORING.search(expr)
    if ignoring is None:
        return []
    sides = [_label_list(by) for by in _BY.findall(expr)]
    if len(sides) != 2:
        return [f"a ratio with ignoring ({ignoring.group(1)}) needs sum by (...) on both sides"]
    left, right = sides
    if left - _label_list(ignoring.group(1)) != right:
        return [
            f"ratio sides do not match: by {sorted(left)} ignoring its {ignoring.group(1)}"
            f" vs by {sorted(right)}"
        ]
    return []


def _quantile_keeps_le(expr: str) -> bool:
    return "histogram_quantile(" in expr and all("le" in _label_list(b) for b in _BY.findall(expr))


def _series_labels(
    ours: dict[str, Series], rules: dict[str, frozenset[str]]
) -> dict[str, frozenset[str]]:
    """Labels of every series a query can name: ours as scraped, and the recorded ones."""
    return {**{n: s.labels | TARGET_LABELS for n, s in ours.items()}, **rules}


def test_every_expression_reads_real_series_the_right_way() -> None:
    ours, rules = exposed(), recorded()
    exprs = {
        **{f"record {n}": e for n, e in names.rule_exprs().items()},
        **{f"alert {n}": e for n, e in names.alert_exprs().items()},
        **{f"panel expr {e}": e for e in names.dashboard_exprs()},
    }
    wrong = {where: p for where, e in exprs.items() if (p := problems(e, ours, rules))}
    assert not wrong, wrong


def test_legends_and_alert_texts_name_labels_their_series_carry() -> None:
    labels = _series_labels(exposed(), recorded())
    wrong = []
    for panel in json.loads(names.DASHBOARD.read_text())["panels"]:
        for t in panel.get("targets", []):
            used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")))
            missing = used - result_labels(t["expr"], labels)
            if missing:
                wrong.append(f"panel {panel['title']!r}: {t['expr']} has no {sorted(missing)}")
    doc = yaml.safe_load(names.ALERTS.read_text())
    for rule in (r for g in doc["groups"] for r in g["rules"]):
        text = " ".join(map(str, [*rule.get("annotations", {}).values()]))
        missing = set(re.findall(r"\$labels\.(\w+)", text)) - result_labels(rule["expr"], labels)
        if missing:
            wrong.append(f"alert {rule['alert']}: its text uses {sorted(missing)}")
    assert not wrong, wrong


@pytest.mark.parametrize(
    ("expr", "complaint"),
    [
        ("rate(akr_processor_workers[1m])", "is a gauge"),
        ("akr_processor_retries_total > 0", "not read through rate"),
        ("sum(rate(akr_processor_ttft_seconds_bucket[1m]))", "histogram_quantile"),
        ("sum by (worker) (rate(akr_processor_retries_total[1m]))", "no series here has"),
        ('rate(akr_processor_requests_total{reason="x"}[1m])', "has no label"),
        ("rate(akr_processor_requests[1m])", "neither exposed"),
        ('rate(akr_gateway_requests_total{route="/v1/chat/completion"}[1m])', "matches no value"),
        ('rate(akr_processor_unavailable_total{reason=~"admission"}[1m])', "matches no value"),
        (
            "sum by (job, reason) (rate(akr_gateway_unavailable_total[5m])) / ignoring (reason) "
            "group_left sum by (job, route) (rate(akr_gateway_requests_total[5m]))",
            "ratio sides do not match",
        ),
    ],
)
def test_the_checker_catches_each_mistake(expr: str, complaint: str) -> None:
    found = problems(expr, exposed(), recorded())
    assert any(complaint in p for p in found), found


def test_result_labels_follow_the_outer_aggregation() -> None:
    labels = _series_labels(exposed(), recorded())
    assert result_labels("sum(akr_processor_workers)", labels) == frozenset()
    assert result_labels("sum by (job, reason) (increase(x[5m])) > 0", labels) == {"job", "reason"}
    assert result_labels("akr_processor_workers < akr_processor_expected_workers", labels) == {
        "job",
        "instance",
    }
    assert result_labels("akr:decisions:rate1m", labels) == {"worker", "reason"}


# Gauges in which every processor reports its own view of the one worker fleet: with N
# processors (replicas behind the stock frontend, docs/DEPLOY.md) a sum counts each worker N
# times.
FLEET_VIEWS = ("akr_processor_workers", "akr_processor_expected_workers")


def test_no_expression_adds_up_the_processors_views_of_one_fleet() -> None:
    exprs = [*names.rule_exprs().values(), *names.alert_exprs().values()]
    exprs += names.dashboard_exprs()
    summed = [
        e
        for e in exprs
        for name in FLEET_VIEWS
        if re.search(rf"\bsum\s*(?:by\s*\([^)]*\)\s*)?\(\s*{name}\b", e)
    ]
    assert not summed, summed


DEPLOY = names.HERE.parent.parent / "docs" / "DEPLOY.md"
_ROW = re.compile(r"^\| `(akr_[a-z0-9_]+)` \| (counter|gauge|histogram) \| ([^|]*) \|", re.M)


def _documented() -> dict[str, tuple[str, frozenset[str]]]:
    """The metric reference table of docs/DEPLOY.md: name -> (type, label names)."""
    rows = _ROW.findall(DEPLOY.read_text())
    return {n: (kind, _label_list(labels.replace("-", ""))) for n, kind, labels in rows}


def _registered() -> dict[str, tuple[str, frozenset[str]]]:
    """Every family our components register, named as the table names it."""
    out = {}
    for name, s in exposed().items():
        if s.kind == "bucket":
            out[name.removesuffix("_bucket")] = ("histogram", s.labels - {"le"})
        elif s.kind in ("counter", "gauge"):
            out[name] = (s.kind, s.labels)
    return out


def test_the_metric_reference_is_what_the_code_registers() -> None:
    """Both ways: every documented metric exists with that type and those labels, and every
    registered one is documented."""
    documented, registered = _documented(), _registered()
    assert len(documented) == len(_ROW.findall(DEPLOY.read_text())), "a metric listed twice"
    assert documented == registered, {
        "documented, not registered (or other type/labels)": {
            n: v for n, v in documented.items() if registered.get(n) != v
        },
        "registered, not documented (or other type/labels)": {
            n: v for n, v in registered.items() if documented.get(n) != v
        },
    }


def test_down_alerts_match_the_job_names_of_both_scrape_setups() -> None:
    """The 'cannot be scraped' alerts match on job: the job names of prometheus.yml, and in
    Kubernetes the PodMonitor's relabeling of job to the pod's app.kubernetes.io/name, which
    the graph gives the gateway and processor pods (their names must be those jobs)."""
    jobs = {c["job_name"] for c in yaml.safe_load(names.PROMETHEUS.read_text())["scrape_configs"]}
    matched = {
        job
        for expr in names.alert_exprs().values()
        for job in re.findall(r'\bup\{job="([^"]+)"\}', expr)
    }
    assert matched == {"akr-gateway", "akr-processor"} and matched <= jobs
    graph = names.HERE.parent / "k8s" / "dynamo-graph.yaml"
    docs = [d for d in yaml.safe_load_all(graph.read_text()) if d]
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert {
            "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
            "targetLabel": "job",
        } in endpoint["relabelings"]
    pod_names = {
        s["podTemplate"]["metadata"]["labels"].get("app.kubernetes.io/name")
        for d in docs
        if d["kind"] == "DynamoGraphDeployment"
        for s in d["spec"]["components"]
        if "metadata" in s.get("podTemplate", {})
    }
    assert matched <= pod_names
