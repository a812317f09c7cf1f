"""Kubernetes and monitoring files parse and name only images, ports and variables that exist."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import get_args

import pytest
import yaml

from deploy.local_stack import REPO_ROOT
from deploy.monitoring import names
from deploy.vllm import envfile
from deploy.vllm.launch import build_plan, parse_args, read_env_file
from frontend.config import GatewayConfig
from processor.config import ProcessorConfig
from router.config import RouterConfig
from router.policy import Reason

K8S = REPO_ROOT / "deploy" / "k8s"
MONITORING = REPO_ROOT / "deploy" / "monitoring"
DGD_TYPES = {"frontend", "worker", "prefill", "decode", "planner", "epp"}  # v1beta1 enum


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.fixture(scope="module")
def dgd() -> dict:
    docs = load_all(K8S / "dynamo-graph.yaml")
    (graph,) = [d for d in docs if d["kind"] == "DynamoGraphDeployment"]
    return graph


@pytest.fixture(scope="module")
def components(dgd: dict) -> dict[str, dict]:
    """component name -> its main container."""
    out = {}
    for comp in dgd["spec"]["components"]:
        (main,) = [c for c in comp["podTemplate"]["spec"]["containers"] if c["name"] == "main"]
        out[comp["name"]] = main
    return out


@pytest.fixture(scope="module")
def plan():
    """The single-node launcher's defaults (no env file): the ports everything else must match."""
    return build_plan(
        parse_args(["--workers", "8", "--model", "m", "--workdir", "/tmp/x"]), read_env_file(None)
    )


def test_every_yaml_and_json_file_parses() -> None:
    files = [*K8S.glob("*.yaml"), *MONITORING.glob("*.yml"), *MONITORING.rglob("*.json")]
    assert len(files) >= 4
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert load_all(path), path


def test_graph_schema(dgd: dict) -> None:
    assert dgd["apiVersion"] == "nvidia.com/v1beta1"
    assert dgd["spec"]["backendFramework"] == "vllm"
    comps = dgd["spec"]["components"]
    names_ = [c["name"] for c in comps]
    assert sorted(names_) == ["frontend", "gateway", "processor", "worker"]
    for comp in comps:
        assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?", comp["name"])
        assert comp.get("type") in DGD_TYPES | {None}
        assert isinstance(comp["replicas"], int)
    assert {c["name"]: c.get("type") for c in comps}["worker"] == "worker"


def dockerfile_version() -> str:
    """The Dynamo version the image installs; its base image's tag defaults to the same one
    (``BASE_TAG``, overridable when NGC lacks the patch release's image)."""
    text = (K8S / "Dockerfile").read_text()
    m = re.search(r"^ARG DYNAMO_VERSION=(\S+)$", text, re.M)
    base = re.search(r"^ARG BASE_TAG=(\S+)$", text, re.M)
    assert m and base and base.group(1) == m.group(1)
    assert re.search(r"^FROM nvcr\.io/nvidia/ai-dynamo/vllm-runtime:\$\{BASE_TAG\}$", text, re.M)
    assert '"ai-dynamo-runtime==${DYNAMO_VERSION}" "ai-dynamo==${DYNAMO_VERSION}"' in text
    return m.group(1)


def test_image_tags_agree_with_dockerfile_and_installed_dynamo(components: dict[str, dict]) -> None:
    tag = dockerfile_version()
    assert tag == version("ai-dynamo-runtime") == version("ai-dynamo")
    for name, main in components.items():
        image, _, image_tag = main["image"].rpartition(":")
        assert image.endswith("/agent-kv-router"), (name, main["image"])
        assert image_tag == tag, (name, main["image"])


def test_dockerfile_copies_only_what_exists() -> None:
    for line in (K8S / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO_ROOT / src).exists(), src


def _env(main: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in main.get("env", [])}


def test_env_names_exist_and_values_validate(components: dict[str, dict]) -> None:
    known = set(envfile.model_variables())
    for name, main in components.items():
        env = _env(main)
        # The processor also exports its endpoints in its shell command.
        env_cmd = (
            " ".join(main.get("args", [])) if main.get("command", [None])[0] == "/bin/sh" else ""
        )
        exported = dict(re.findall(r"(AKR_[A-Z0-9_]+)=\"([^\"]*)\"", env_cmd))
        for var in [*env, *exported]:
            if var.startswith("AKR_"):
                assert var in known, f"{name}: {var} is not a configuration variable"
        for prefix, model in (
            ("AKR_GATEWAY_", GatewayConfig),
            ("AKR_PROCESSOR_", ProcessorConfig),
            ("AKR_ROUTER_", RouterConfig),
        ):
            model(**{k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)})


def _ports(main: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in main.get("ports", [])}


def test_ports_match_launcher_and_config_defaults(components: dict[str, dict], plan) -> None:
    gw, proc, fe, worker = (components[n] for n in ("gateway", "processor", "frontend", "worker"))
    gateway_port = GatewayConfig.model_fields["port"].default
    assert (
        _ports(gw)["http"] == int(_env(gw)["AKR_GATEWAY_PORT"]) == gateway_port == plan.gateway_port
    )
    assert gw["readinessProbe"]["httpGet"]["port"] == gateway_port
    assert (
        _ports(proc)["metrics"]
        == int(_env(proc)["AKR_PROCESSOR_METRICS_PORT"])
        == plan.processor_metrics_port
    )
    fe_port = int(fe["args"][fe["args"].index("--http-port") + 1])
    assert fe_port == _ports(fe)["http"] == plan.frontend_port
    assert _env(gw)["AKR_GATEWAY_UPSTREAM_URL"].endswith(f":{fe_port}")
    assert GatewayConfig.model_fields["upstream_url"].default.endswith(f":{fe_port}")
    kv = json.loads(worker["args"][worker["args"].index("--kv-events-config") + 1])
    assert kv["enable_kv_cache_events"] is True
    assert int(kv["endpoint"].rsplit(":", 1)[1]) == int(
        read_env_file(None)["LAUNCH_KV_EVENTS_PORT_BASE"]
    )
    block = worker["args"][worker["args"].index("--block-size") + 1]
    assert block == _env(proc)["AKR_PROCESSOR_BLOCK_SIZE"]


def test_worker_flags_match_the_launcher(components: dict[str, dict], plan) -> None:
    """The k8s worker uses the launcher's worker flags, minus what the operator provides."""
    launcher = next(p for p in plan.processes if p.name == "worker0").argv
    k8s = components["worker"]["args"]
    operator_side = {"--discovery-backend", "--request-plane", "--event-plane"}
    launcher_flags = (
        {w for w in launcher if w.startswith("--")} - operator_side - {"--gpu-memory-utilization"}
    )
    assert {w for w in k8s if w.startswith("--")} == launcher_flags
    assert components["worker"]["command"] == ["python3", "-m", "dynamo.vllm"]


def test_gateway_service_and_pod_monitor_select_real_ports(components: dict[str, dict]) -> None:
    all_docs = list(load_all(K8S / "dynamo-graph.yaml"))
    docs = {d["kind"]: d for d in all_docs}
    services = {d["metadata"]["name"]: d for d in all_docs if d["kind"] == "Service"}
    graph = docs["DynamoGraphDeployment"]
    for name, port in (("gateway", "http"), ("processor", "metrics")):
        svc = services[service_selecting(name, graph)]
        assert svc["spec"]["ports"][0]["targetPort"] == _ports(components[name])[port]
        labels = next(c for c in graph["spec"]["components"] if c["name"] == name)["podTemplate"][
            "metadata"
        ]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
    all_port_names = {n for main in components.values() for n in _ports(main)}
    for ep in docs["PodMonitor"]["spec"]["podMetricsEndpoints"]:
        assert ep["port"] in all_port_names


def test_prometheus_targets_are_the_launcher_ports(plan) -> None:
    doc = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    for rule_file in doc["rule_files"]:
        assert (MONITORING / rule_file).exists()
    jobs = {
        j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]]
        for j in doc["scrape_configs"]
    }
    assert jobs["akr-gateway"] == [f"127.0.0.1:{plan.gateway_port}"]
    assert jobs["akr-processor"] == [f"127.0.0.1:{plan.processor_metrics_port}"]
    assert jobs["dynamo-frontend"] == [f"127.0.0.1:{plan.frontend_port}"]
    assert jobs["dynamo-workers"] == [f"127.0.0.1:{p}" for p in plan.worker_system_ports]


def test_dashboard_uses_only_recorded_or_raw_names_and_real_reasons() -> None:
    raw, recorded = names.used_names()
    for expr in names.dashboard_exprs():
        for name in names.names_in(expr):
            assert name in recorded or not name.startswith("akr:"), f"{name} is not recorded"
    reasons = set(get_args(Reason))
    for expr in [*names.rule_exprs().values(), *names.dashboard_exprs()]:
        for values in re.findall(r'reason=~?"([^"]*)"', expr):
            assert set(values.split("|")) <= reasons, expr
    assert raw, "no raw metric found: the name pattern is broken"


def test_recording_rule_names_follow_the_convention() -> None:
    for record, expr in names.rule_exprs().items():
        assert re.fullmatch(r"akr:[a-z0-9_]+:[a-z0-9_]+", record), record
        assert names.names_in(expr), record


def test_name_extraction() -> None:
    expr = (
        'sum(rate(akr_processor_decisions_total{reason=~"sticky|pin",worker="akr_x"}[1m]))'
        " / akr:foo:bar"
    )
    assert names.names_in(expr) == {"akr_processor_decisions_total", "akr:foo:bar"}


def test_alert_rules_are_loaded_and_name_real_series() -> None:
    doc = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert "alert_rules.yml" in doc["rule_files"]
    alerts = names.alert_exprs()
    assert {"AkrTraceRecordsDropped", "AkrWorkersLost", "AkrNoWorkers"} <= set(alerts)
    raw, _ = names.used_names()
    assert {
        "akr_processor_trace_records_dropped_total",
        "akr_processor_workers",
        "akr_processor_expected_workers",
    } <= raw


def our_services() -> dict[str, dict]:
    """The Services the manifest itself defines, by name."""
    docs = load_all(K8S / "dynamo-graph.yaml")
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}


def service_selecting(component: str, dgd: dict) -> str:
    """The name of our Service whose selector matches ``component``'s pod labels."""
    comp = next(c for c in dgd["spec"]["components"] if c["name"] == component)
    labels = comp["podTemplate"]["metadata"]["labels"]
    (name,) = [
        n for n, svc in our_services().items() if svc["spec"]["selector"].items() <= labels.items()
    ]
    return name


def test_gateway_probes_liveness_and_readiness(components: dict[str, dict], dgd: dict) -> None:
    """Liveness on /live (restart a stuck gateway), readiness on /ready (which asks the
    processor's /health through its Service)."""
    gw = components["gateway"]
    assert gw["livenessProbe"]["httpGet"]["path"] == "/live"
    assert gw["readinessProbe"]["httpGet"]["path"] == "/ready"
    env = {e["name"]: e.get("value") for e in gw["env"]}
    port = _ports(components["processor"])["metrics"]
    service = service_selecting("processor", dgd)
    assert env["AKR_GATEWAY_PROCESSOR_HEALTH_URL"] == f"http://{service}:{port}/health"


def test_the_processor_has_a_liveness_probe(components: dict[str, dict]) -> None:
    """Before: none, so a processor whose event loop was stuck stayed for good (the gateway
    only turned not ready). /live on its metrics port, answered from start-up on."""
    proc = components["processor"]
    assert proc["livenessProbe"]["httpGet"]["path"] == "/live"
    assert proc["livenessProbe"]["httpGet"]["port"] == _ports(proc)["metrics"]


def test_our_services_are_not_named_like_the_operators(dgd: dict) -> None:
    """Before: Services akr-gateway and akr-processor. With Kubernetes discovery (the
    operator's default) the operator creates a Service for every component, named
    <graph>-<component> (the rule AKR_GATEWAY_UPSTREAM_URL relies on for akr-frontend), on the
    Dynamo system port: same names, other selector and port, fought over by kubectl and the
    operator's reconcile."""
    graph = dgd["metadata"]["name"]
    operator_names = {f"{graph}-{c['name']}".lower() for c in dgd["spec"]["components"]}
    assert not operator_names & set(our_services())


def test_the_k8s_frontend_has_the_launchers_body_limit(components: dict[str, dict]) -> None:
    from deploy.local_stack import FRONTEND_BODY_LIMIT_MB

    env = {e["name"]: e["value"] for e in components["frontend"].get("env", [])}
    assert env["DYN_HTTP_BODY_LIMIT_MB"] == str(FRONTEND_BODY_LIMIT_MB)


# What the Dynamo operator gives a worker of a Deployment-backed graph: its graph's Dynamo
# namespace plus a hash of the workers' spec (DYN_NAMESPACE_WORKER_SUFFIX), which
# dynamo.common.utils.namespace.get_worker_namespace appends to the default endpoint's
# namespace (rolling updates put each worker generation in a namespace of its own). The
# processor, a component without a type, gets DYN_NAMESPACE only.
OPERATOR_ENV = {"DYN_NAMESPACE": "default-akr"}
WORKER_OPERATOR_ENV = {**OPERATOR_ENV, "DYN_NAMESPACE_WORKER_SUFFIX": "5f3c2a1b"}


def kubelet_expand(word: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of a container's command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), word)


def shell_expand(word: str, env: Mapping[str, str]) -> str:
    """``${VAR}`` and ``${VAR:-default}``, as the processor's ``sh -c`` expands them."""
    return re.sub(
        r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}",
        lambda m: env.get(m[1]) or (m[2] or ""),
        word,
    )


def worker_registers_at(args: list[str], env: Mapping[str, str], monkeypatch) -> str:
    """The endpoint dynamo.vllm registers under (dynamo/vllm/args.py: ``--endpoint`` when
    given, else ``<worker namespace>.backend.generate``)."""
    from dynamo.common.utils.namespace import get_worker_namespace

    if "--endpoint" in args:
        return kubelet_expand(args[args.index("--endpoint") + 1], env).removeprefix("dyn://")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return f"{get_worker_namespace()}.backend.generate"


def test_the_processor_finds_the_workers_under_the_operators_namespaces(
    components: dict[str, dict], monkeypatch
) -> None:
    """Before: the workers registered under their default endpoint, whose namespace the
    operator suffixes with the workers' spec hash, while the processor looked for
    ``$DYN_NAMESPACE.backend.generate``: it waited for workers for ever."""
    worker = worker_registers_at(components["worker"]["args"], WORKER_OPERATOR_ENV, monkeypatch)
    script = " ".join(components["processor"]["args"])
    (wanted,) = re.findall(r'AKR_PROCESSOR_WORKER_ENDPOINT="([^"]*)"', script)
    assert shell_expand(wanted, OPERATOR_ENV) == worker == "default-akr.backend.generate"


def drain_grace_s(main: dict) -> float:
    """How long a component waits on SIGTERM before its drain (Dynamo's variable, or its
    default as the installed wheel defines it)."""
    from dynamo.common.utils import graceful_shutdown

    env = _env(main)
    return float(
        env.get(graceful_shutdown._GRACE_PERIOD_ENV, graceful_shutdown._DEFAULT_GRACE_PERIOD_SECS)
    )


def test_draining_components_get_time_to_finish_their_answers(
    dgd: dict, components: dict[str, dict]
) -> None:
    """The gateway and the processor both finish the answers in flight after the grace
    (docs/DEPLOY.md, section 6). Before: the processor had no terminationGracePeriodSeconds
    (Kubernetes' 30 s, or the operator's default), so a processor rollout cut answers the
    gateway, given 120 s for them, was still relaying."""
    pods = {c["name"]: c["podTemplate"]["spec"] for c in dgd["spec"]["components"]}
    gateway = pods["gateway"]["terminationGracePeriodSeconds"]
    for name in ("gateway", "processor"):
        period = pods[name].get("terminationGracePeriodSeconds")
        assert period is not None, f"{name}: no terminationGracePeriodSeconds"
        assert period > drain_grace_s(components[name]), name
        assert period >= gateway, f"{name}: cut before the gateway's answers end"


def test_every_container_asks_for_what_it_needs(components: dict[str, dict]) -> None:
    """Before: only the workers named resources (a GPU); the gateway, processor and stock
    frontend ran as BestEffort pods, the first to be starved of CPU or evicted on a busy node,
    and every token passes through all three."""
    for name in ("gateway", "processor", "frontend"):
        requests = components[name].get("resources", {}).get("requests", {})
        assert {"cpu", "memory"} <= requests.keys(), name
    assert components["worker"]["resources"]["limits"]["nvidia.com/gpu"] == "1"


PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def served_paths(component: str) -> set[str]:
    """The GET paths a component of ours answers (a probe elsewhere gets 404)."""
    from frontend.gateway import GET_ROUTES
    from processor.health import GET_PATHS

    return {"gateway": set(GET_ROUTES), "processor": set(GET_PATHS)}[component]


def test_probes_point_at_paths_and_ports_the_component_serves(
    components: dict[str, dict],
) -> None:
    for name, main in components.items():
        ports = _ports(main)
        for kind in PROBES:
            probe = main.get(kind)
            if probe is None:
                continue
            port = probe["httpGet"]["port"]
            assert port in ports or port in ports.values(), (name, kind, port)
            assert probe["httpGet"]["path"] in served_paths(name), (name, kind)


def test_no_machine_paths_in_the_kubernetes_files() -> None:
    """Paths in the image and manifest are the container's, never a build machine's."""
    for path in K8S.iterdir():
        text = path.read_text()
        for machine in ("/home/", "/work/", "/tmp/", "/Users/", "/root/", str(REPO_ROOT)):
            assert machine not in text, (path.name, machine)
