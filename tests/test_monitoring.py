"""docker-compose.dev.yml, the Prometheus scrape config and the Grafana dashboard, validated.

No Docker engine runs on our machines, so the files are checked instead of
started: the compose file parses and mounts files that exist, Prometheus
scrapes the gateway's /metrics, Grafana's provisioning points at the
dashboard and the data source it uses, and every metric a panel queries is
one a live gateway exposes (with the labels the query groups or filters by).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import yaml  # type: ignore[import-untyped]

from agentcore.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
PROMQL_WORDS = {
    "sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "le", "avg",
    "max", "min", "count", "topk", "offset", "and", "or", "unless", "on", "ignoring",
}  # fmt: skip


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(ROOT / "docker-compose.dev.yml")
    return data


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (ROOT / "deploy/grafana/dashboards/agentcore.json").read_text()
    )
    return data


def expressions() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def test_compose_has_the_seed_services_and_mounts_existing_files() -> None:
    services = compose()["services"]
    assert {"gateway", "postgres", "redis", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    gateway = services["gateway"]
    assert "agentcore serve" in gateway["command"] and "--port 8001" in gateway["command"]
    assert gateway["ports"] == ["127.0.0.1:8001:8001"]  # --insecure: loopback only
    for dependency in gateway["depends_on"]:
        assert "healthcheck" in services[dependency]


def test_prometheus_scrapes_the_gateway() -> None:
    mount = next(v for v in compose()["services"]["prometheus"]["volumes"] if "prometheus.yml" in v)
    config = load_yaml(ROOT / mount.split(":")[0])
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8001"]


def test_grafana_provisioning_points_at_the_dashboard_and_its_data_source() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    provisioning = ROOT / next(s for s, t in mounts.items() if t == "/etc/grafana/provisioning")
    providers = load_yaml(provisioning / "dashboards" / "agentcore.yml")["providers"]
    dashboards_dir = providers[0]["options"]["path"]
    source = next(s for s, t in mounts.items() if t == dashboards_dir)
    assert (ROOT / source / "agentcore.json").exists()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/agentcore.json"
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    uids = {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]}


def test_dashboard_covers_the_gateway_topics() -> None:
    titles = " ".join(p["title"] for p in dashboard()["panels"]).lower()
    for topic in (
        "throughput",
        "latency",
        "errors",
        "rate limiting",
        "websocket",
        "webhook",
        "llm",
    ):
        assert topic in titles, topic
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


async def test_every_queried_metric_is_exposed_by_a_live_gateway(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics")).text
    exposed = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M))
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)", text, re.M):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        exposed.add(name)  # counters: with _total or without, by client version
        exposed.update(name.removesuffix("_total") + s for s in suffixes.get(kind, [""]))
    queried = set()
    for expr in expressions():
        bare = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", expr)  # grouping labels
        bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)  # matchers, ranges
        for token in re.findall(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", bare):
            if token not in PROMQL_WORDS:
                queried.add(token)
    assert queried, "no metric found in the dashboard"
    assert queried <= exposed, f"not exposed by the gateway: {sorted(queried - exposed)}"


def _label_names() -> dict[str, set[str]]:
    """Label names of every agentcore metric, from its definition (Metrics)."""
    out: dict[str, set[str]] = {}
    metrics = Metrics()
    # The request series (RequestStats) exist once a request was observed: from their samples.
    metrics.observe("/api/v1/health", "GET", 200, 0.001)
    for family in metrics.registry.collect():
        if family.name.startswith("agentcore_http_request"):
            for sample in family.samples:
                out.setdefault(sample.name, set()).update(sample.labels)
    for collector in vars(metrics).values():
        name = getattr(collector, "_name", None)
        if isinstance(name, str):
            labels = set(getattr(collector, "_labelnames", ()))
            kind = getattr(collector, "_type", "")
            for suffix in {"counter": ["_total"], "histogram": ["_bucket"]}.get(kind, [""]):
                out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    out["agentcore_agents"] = out["agentcore_tasks"] = {"status"}
    return out


def test_every_label_a_query_uses_exists_on_its_metric() -> None:
    labels = _label_names()
    for expr in expressions():
        metrics = [m for m in re.findall(r"\bagentcore_[a-z0-9_]+", expr)]
        used = set(re.findall(r"by \(([^)]*)\)", expr))
        used_names = {n.strip() for group in used for n in group.split(",")}
        used_names |= set(re.findall(r"\{(\w+)=", expr))
        for metric in metrics:
            assert metric in labels, metric
            assert used_names <= labels[metric], (expr, used_names - labels[metric])
