"""Metric names used by the monitoring files (recording and alert rules, dashboard), for the
tests that hold them to the real output.

python -m deploy.monitoring.names     # print raw and recorded names used by rules + dashboard
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "recording_rules.yml"
ALERTS = HERE / "alert_rules.yml"
DASHBOARD = HERE / "grafana" / "agent-kv-router.json"
PROMETHEUS = HERE / "prometheus.yml"

# Every series of ours or of Dynamo starts with one of these prefixes; recorded series use the
# level:metric:operation convention with an "akr:" level. Label names, label values and PromQL
# functions never match.
_NAME = re.compile(r"(?<![A-Za-z0-9_:\"])((?:akr|dynamo)_[a-z0-9_]+|akr:[a-z0-9_:]+)")


def names_in(expr: str) -> set[str]:
    """Series names referenced by a PromQL expression (quoted label values are skipped)."""
    return set(_NAME.findall(re.sub(r'"[^"]*"', '""', expr)))


def rule_exprs() -> dict[str, str]:
    """record name -> expression, over every group of recording_rules.yml."""
    doc = yaml.safe_load(RULES.read_text())
    return {r["record"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def alert_exprs() -> dict[str, str]:
    """alert name -> expression, over every group of alert_rules.yml."""
    doc = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def used_names() -> tuple[set[str], set[str]]:
    """(raw series names the files need from the components, recorded names they define)."""
    rules = rule_exprs()
    recorded = set(rules)
    used: set[str] = set()
    for expr in [*rules.values(), *alert_exprs().values(), *dashboard_exprs()]:
        used |= names_in(expr)
    return used - recorded, recorded


if __name__ == "__main__":
    raw, recorded = used_names()
    print("raw:", *sorted(raw), sep="\n  ")
    print("recorded:", *sorted(recorded), sep="\n  ")
