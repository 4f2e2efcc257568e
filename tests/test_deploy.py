"""The deployment files agree with the code: every manifest parses; ports, probes, selectors,
flags, environment variables, secret keys and metric names are the ones the broker has."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.cli import build_parser
from broker.metrics import Metrics
from broker.policy.loader import load_policy
from broker.registry import load_registry
from broker.transports.openapi import document

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
sys.path.insert(0, str(DEPLOY / "k8s"))
from make_policies_configmap import policy_files, render  # noqa: E402

POD_LABELS = {"app.kubernetes.io/name": "sv-broker"}


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def k8s() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in docs(path):
            out[doc["kind"]] = doc
    return out


def exported_metric_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        for suffix in ("_total", "_bucket", "_sum", "_count", "_created"):
            names.add(family.name + suffix)
    return names


def serve_args(args: list[str]) -> Any:
    return build_parser().parse_args(["serve", *args])


@pytest.mark.parametrize(
    "path", sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_every_manifest_parses(path: Path) -> None:
    assert docs(path), f"{path} holds no document"


def test_the_deployment_ports_probes_and_selectors_agree() -> None:
    objects = k8s()
    deployment = objects["Deployment"]
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"] == POD_LABELS
    assert deployment["spec"]["selector"]["matchLabels"] == POD_LABELS
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        selector = objects[kind]["spec"].get("selector") or objects[kind]["spec"]["podSelector"]
        assert selector["matchLabels"] == POD_LABELS, kind
    assert objects["Service"]["spec"]["selector"] == POD_LABELS
    [container] = template["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    args = serve_args(container["args"])  # every flag is one `serve` knows
    assert args.port == port
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    served = set(document()["paths"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in served
        assert container[probe]["httpGet"]["port"] == "http"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    allowed = {p["port"] for rule in objects["NetworkPolicy"]["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {port}
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] in served
    assert objects["PodDisruptionBudget"]["spec"]["minAvailable"] >= 1
    assert deployment["spec"]["replicas"] >= 2
    # the mounted paths are the ones the image's entrypoint and the args read
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(args.policy_dir) == mounts["policies"]
    assert str(args.broker_key).startswith(mounts["broker-key"] + "/")


def test_environment_and_secret_keys_are_the_ones_the_code_reads() -> None:
    objects = k8s()
    [container] = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    serve_source = (ROOT / "broker/commands/serve.py").read_text(encoding="utf-8")
    secret_keys = set(objects["Secret"]["stringData"])
    for env in container["env"]:
        assert f'os.environ.get("{env["name"]}")' in serve_source, env["name"]
        assert env["valueFrom"]["secretKeyRef"]["key"] in secret_keys
    for volume in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]:
        if "secret" in volume:
            assert volume["secret"]["secretName"] == objects["Secret"]["metadata"]["name"]
            assert {item["key"] for item in volume["secret"]["items"]} <= secret_keys
    assert all(value == "" for value in objects["Secret"]["stringData"].values()), "no secret in git"
    kustomization = docs(DEPLOY / "k8s/kustomization.yaml")[0]
    assert "secret.example.yaml" not in kustomization["resources"]


def test_the_policies_configmap_is_the_policies_and_loads(tmp_path: Path) -> None:
    path = DEPLOY / "k8s/policies-configmap.yaml"
    assert path.read_text(encoding="utf-8") == render(), "run python deploy/k8s/make_policies_configmap.py"
    data = docs(path)[0]["data"]
    volume = next(v for v in k8s()["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "policies")
    items = {item["key"]: item["path"] for item in volume["configMap"]["items"]}
    assert items == policy_files()
    for key, rel in items.items():  # what the pod sees, rebuilt from the ConfigMap
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(data[key], encoding="utf-8")
    registry = load_registry(tmp_path, ROOT / "policies/keys")
    secrets = {agreement: bytes(32) for agreement in (p.stem for p in (tmp_path / "agreements").glob("*.toml"))}
    policy = load_policy(tmp_path, registry, secrets)
    assert set(policy.agreements) == {p.stem for p in (ROOT / "policies/agreements").glob("*.toml")}


def test_compose_names_ports_and_nodes_agree() -> None:
    compose = docs(DEPLOY / "compose.yaml")[0]
    services = compose["services"]
    brokers = [name for name in services if name.startswith("broker-")]
    rabbits = sorted(name for name in services if name.startswith("rabbit-"))
    assert len(brokers) >= 2
    assert len(rabbits) == 3
    for name in brokers:
        service = services[name]
        args = serve_args(service["command"])
        assert [p.split(":")[1] for p in service["ports"]] == [str(args.port)]
        urls = service["environment"]["SV_BROKER_AMQP_URL"].split(",")
        assert sorted(re.search(r"@([^:/]+)", u).group(1) for u in urls) == rabbits  # type: ignore[union-attr]
        assert service["environment"]["SV_BROKER_STORE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in service["environment"]["SV_BROKER_STORE_URL"]
    conf = (DEPLOY / "compose/rabbitmq.conf").read_text(encoding="utf-8")
    assert sorted(re.findall(r"= rabbit@(\S+)", conf)) == rabbits
    assert "quorum_queue.initial_cluster_size = 3" in conf
    prometheus = docs(DEPLOY / "prometheus/prometheus.yml")[0]
    [job] = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert sorted(job["static_configs"][0]["targets"]) == sorted(f"{b}:8080" for b in brokers)
    entrypoint = (DEPLOY / "container/Containerfile").read_text(encoding="utf-8")
    line = next(x for x in entrypoint.splitlines() if x.startswith("ENTRYPOINT"))
    words = json.loads(line.removeprefix("ENTRYPOINT").strip())
    assert words[:2] == ["sv-broker", "serve"]
    serve_args(words[2:])
    assert "8080" in shlex.join(services[brokers[0]]["command"])


def _exprs() -> list[tuple[str, str]]:
    out = []
    for group in docs(DEPLOY / "prometheus/alerts.yml")[0]["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("page", "ticket")
            assert rule["annotations"]["summary"]
            out.append((rule["alert"], rule["expr"]))
    dashboard = json.loads((DEPLOY / "grafana/sv-broker-dashboard.json").read_text(encoding="utf-8"))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            out.append((panel["title"], target["expr"]))
    return out


def test_alerts_and_the_dashboard_use_only_exported_metrics() -> None:
    exported = exported_metric_names()
    exprs = _exprs()
    assert len(exprs) >= 10
    used = set()
    for name, expr in exprs:
        for metric in re.findall(r"\bsv_broker_[a-z_]+", expr):
            assert metric in exported, f"{name}: {metric} is not exported by broker/metrics.py"
            used.add(metric)
    families = {family.name for family in Metrics().registry.collect()}
    # every family the broker exports is on the dashboard or in an alert
    assert {m for m in families if not any(u.startswith(m) for u in used)} == set()
