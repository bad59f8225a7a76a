"""deploy/kubernetes: every overlay renders (kubectl's kustomize), validates against the API
schemas of Kubernetes 1.37 (kubernetes-validate, strict), refers only to objects it defines,
probes real endpoints, carries a gateway configuration that expertmesh accepts and that names
its Services, and runs the images and models of compose.yaml. `expertmesh deploy plan` on a
recorded decision log writes an overlay that renders and validates too."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from expertmesh.cli import app as cli
from expertmesh.config import load_config
from expertmesh.gateway.decision_log import DecisionLog, RequestRecord
from tests.conftest import REPO, fake_config

K8S_VERSION = "1.37.0"
OVERLAYS = ["single-node", "multi-node"]
CRDS = {"ServiceMonitor", "PodMonitor"}  # the Prometheus Operator's: not in the core API schemas
VLLM_ENDPOINTS = {"/health", "/metrics", "/v1/models"}  # vLLM's own (tests/test_vllm_e2e.py asks a real one)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of deploy/kubernetes with secrets.env made from its example (as a user would)."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is missing: run scripts/install-k8s-tools.sh (make install-test does)")
    copy = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(REPO / "deploy" / "kubernetes", copy, ignore=shutil.ignore_patterns("secrets.env", "planned"))
    shutil.copy(copy / "base" / "secrets.env.example", copy / "base" / "secrets.env")
    return copy


def render(folder: Path) -> list[dict]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(folder)], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_specs(objects: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o["spec"]["template"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")}


def validate(objects: list[dict]) -> None:
    import kubernetes_validate

    for item in objects:
        if item["kind"] not in CRDS:
            kubernetes_validate.validate(item, K8S_VERSION, strict=True)


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request, tree) -> list[dict]:
    return render(tree / "overlays" / request.param)


def test_each_overlay_validates_against_the_kubernetes_schemas(rendered):
    validate(rendered)
    kinds = {o["kind"] for o in rendered}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret",
            "StatefulSet", "PersistentVolumeClaim", "Namespace"} <= kinds  # fmt: skip


def test_strict_validation_catches_a_misspelt_field(rendered):
    import kubernetes_validate

    deployment = dict(by_kind(rendered, "Deployment")["gateway"])
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_every_referenced_object_exists(rendered):
    config_maps, secrets = set(by_kind(rendered, "ConfigMap")), set(by_kind(rendered, "Secret"))
    claims = set(by_kind(rendered, "PersistentVolumeClaim"))
    for name, template in pod_specs(rendered).items():
        spec = template["spec"]
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, (name, volume)
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, (name, volume)
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, (name, volume)
        for container in spec["containers"] + spec.get("initContainers", []):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert ref["name"] in secrets, (name, env["name"])
    labels = {name: template["metadata"]["labels"] for name, template in pod_specs(rendered).items()}
    for name, service in by_kind(rendered, "Service").items():
        selector = service["spec"]["selector"].items()
        assert any(selector <= pod.items() for pod in labels.values()), f"Service {name} selects no pods"
    for kind in ("HorizontalPodAutoscaler",):
        for name, hpa in by_kind(rendered, kind).items():
            assert hpa["spec"]["scaleTargetRef"]["name"] in pod_specs(rendered), name
    for name, budget in by_kind(rendered, "PodDisruptionBudget").items():
        selector = budget["spec"]["selector"]["matchLabels"].items()
        assert any(selector <= pod.items() for pod in labels.values()), name


def gateway_config(rendered, monkeypatch, tmp_path):
    (config_map,) = [
        o for o in rendered if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("expertmesh-config")
    ]
    path = tmp_path / "expertmesh.yaml"
    path.write_text(config_map["data"]["expertmesh.yaml"])
    secrets = {env["name"]: "from-the-secret" for env in pod_specs(rendered)["gateway"]["spec"]["containers"][0]["env"]}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value if name != "EXPERTMESH_WORKERS" else "4")
    return load_config(path)


def test_the_gateway_config_loads_and_names_the_clusters_services(rendered, monkeypatch, tmp_path):
    config = gateway_config(rendered, monkeypatch, tmp_path)
    services = {name: {p["port"] for p in s["spec"]["ports"]} for name, s in by_kind(rendered, "Service").items()}
    for expert in config.experts:
        host, port = str(expert.backend).split("//")[1].split("/")[0].split(":")
        assert int(port) in services.get(host, set()), f"{expert.name} points at {host}:{port}, not a Service"
    for url in (config.gateway.redis_url, config.log.url):
        host, port = url.split("@")[-1].split("//")[-1].split("/")[0].split(":")
        assert int(port) in services[host], url
    assert config.gateway.workers == 4 and config.gateway.api_keys == ["from-the-secret"]


def test_the_configmap_is_the_compose_deployments_config():
    assert (REPO / "deploy/kubernetes/base/expertmesh.yaml").read_text() == (
        REPO / "deploy/compose-gpu.yaml"
    ).read_text()


def test_probes_point_at_endpoints_that_exist(rendered):
    from expertmesh.experts.pool import ExpertPool
    from expertmesh.gateway.app import build_app

    config = fake_config("http://127.0.0.1:9/v1")
    gateway_paths = {route.path for route in build_app(config, None, ExpertPool(config)).routes}
    for name, template in pod_specs(rendered).items():
        for container in template["spec"]["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "httpGet" not in container.get(probe, {}):
                    continue
                get = container[probe]["httpGet"]
                known = gateway_paths if name == "gateway" else VLLM_ENDPOINTS
                assert get["path"] in known, (name, probe, get["path"])
                ports = {p["name"] for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}
                assert get["port"] in ports, (name, probe)
    gateway = pod_specs(rendered)["gateway"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_images_and_models_are_compose_yamls(rendered):
    services = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    deployments = by_kind(rendered, "Deployment")
    experts = {name: d for name, d in deployments.items() if name.startswith("vllm-")}
    assert set(experts) == {name for name in services if name.startswith("vllm-")}
    for name, deployment in experts.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        compose = services[name]
        assert container["image"] == compose["image"], name
        for flag in ("--model", "--served-model-name", "--max-model-len"):
            assert (
                container["args"][container["args"].index(flag) + 1]
                == compose["command"][compose["command"].index(flag) + 1]
            ), (name, flag)
    assert (
        by_kind(rendered, "Deployment")["redis"]["spec"]["template"]["spec"]["containers"][0]["image"]
        == services["redis"]["image"]
    )
    assert (
        by_kind(rendered, "StatefulSet")["postgres"]["spec"]["template"]["spec"]["containers"][0]["image"]
        == services["postgres"]["image"]
    )


def gpu_args(rendered) -> dict[str, tuple[float, int, int]]:
    """expert -> (GPU memory share, GPUs, tensor parallel size)."""
    result = {}
    for name, d in by_kind(rendered, "Deployment").items():
        if name.startswith("vllm-"):
            container = d["spec"]["template"]["spec"]["containers"][0]
            args = container["args"]
            tp = int(args[args.index("--tensor-parallel-size") + 1]) if "--tensor-parallel-size" in args else 1
            result[name] = (
                float(args[args.index("--gpu-memory-utilization") + 1]),
                container["resources"]["limits"]["nvidia.com/gpu"],
                tp,
            )
    return result


def test_single_node_mirrors_compose_and_multi_node_gives_each_replica_its_gpus(tree):
    single = gpu_args(render(tree / "overlays" / "single-node"))
    assert sum(share for share, _, _ in single.values()) <= 0.95 and all(g == 1 for _, g, _ in single.values())
    waits = {name: d["spec"]["template"]["spec"].get("initContainers") for name, d in
             by_kind(render(tree / "overlays" / "single-node"), "Deployment").items() if name.startswith("vllm-")}  # fmt: skip
    assert sum(w is None for w in waits.values()) == 1  # one starts; each other waits for the one before it
    multi = gpu_args(render(tree / "overlays" / "multi-node"))
    assert all(share == 0.9 for share, _, _ in multi.values())
    assert all(gpus == tp for _, gpus, tp in multi.values()) and multi["vllm-general"][2] == 2  # tensor parallel


def test_the_prometheus_operator_component_renders(tree, tmp_path):
    overlay = tree / "overlays" / "with-monitoring"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "resources: [../multi-node]\ncomponents: [../../components/prometheus-operator]\n"
    )
    objects = render(overlay)
    monitor = by_kind(objects, "ServiceMonitor")["gateway"]
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"]["name"] in by_kind(objects, "Secret")
    assert by_kind(objects, "PodMonitor")["vllm"]["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "vllm"
    }


# --- expertmesh deploy plan -----------------------------------------------------------------------


def recorded_log(path: Path) -> str:
    """A decision log as the gateway writes it: 100 answers, 60 medical (300 tokens each),
    20 legal, 10 code, 10 general; plus a failed request and a route-only one, which do not count."""
    url = f"sqlite:///{path}"
    log = DecisionLog(load_config().log.model_copy(update={"url": url}))
    log.start()
    now = time.time()
    mix = [("medical", 60, 300), ("legal", 20, 500), ("code", 10, 800), ("general", 10, 200)]
    for expert, count, tokens in mix:
        for i in range(count):
            record = RequestRecord(f"{expert}-{i}", "/v1/chat/completions", time=now - 60 * i, key_name="k")
            record.expert = record.answered_by = expert
            record.status, record.completion_tokens = 200, tokens
            log.add(record)
    failed = RequestRecord("failed", "/v1/chat/completions", time=now, key_name="k")
    failed.expert, failed.status = "math", 502
    route_only = RequestRecord("route", "/v1/route", time=now, key_name="k")
    route_only.expert, route_only.status = "finance", 200
    log.add(failed)
    log.add(route_only)
    log.stop()
    return url


def test_plan_from_a_recorded_log_writes_an_overlay_that_renders(tree, tmp_path):
    url = recorded_log(tmp_path / "decisions.db")
    out = tree / "overlays" / "planned"
    result = CliRunner().invoke(cli, ["deploy", "plan", "--traffic", url, "--rps", "50", "--out", str(out),
                                      "--base", str(tree / "overlays" / "multi-node"),
                                      "--config", str(tree / "base" / "expertmesh.yaml")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "100 logged answers" in result.output
    # medical: 50 req/s x 60% x 300 tokens = 9,000 tokens/s over 0.7 x 5,103 = 3,572 per replica -> 3
    # code: 5 req/s x 800 = 4,000 -> 2; legal 10 x 500 = 5,000 -> 2; general 5 x 200 = 1,000 over 2 GPUs -> 1
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in render(out) if d["kind"] == "Deployment"}
    assert replicas["vllm-medical"] == 3 and replicas["vllm-code"] == 2 and replicas["vllm-legal"] == 2
    assert replicas["vllm-general"] == 1 and replicas["vllm-math"] == 1 and replicas["vllm-finance"] == 1
    assert replicas["gateway"] == 2  # 50 req/s: one replica would do, two keep it available
    objects = render(out)
    validate(objects)
    hpa = by_kind(objects, "HorizontalPodAutoscaler")["vllm-medical"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 6)
    assert "9,000" in result.output and "3,572" in result.output  # the arithmetic is shown


def test_plan_from_shares_and_its_errors(tree, tmp_path):
    args = ["deploy", "plan", "--rps", "2000", "--out", str(tmp_path / "p"), "--base", str(tree / "overlays" / "multi-node"),
            "--config", str(tree / "base" / "expertmesh.yaml"), "--tokens-per-request", "100"]  # fmt: skip
    ok = CliRunner().invoke(cli, [*args, "--traffic", "medical=1,science=1"])  # science is the general expert's
    assert ok.exit_code == 0, ok.output
    text = (tmp_path / "p" / "kustomization.yaml").read_text()
    assert "{name: gateway, count: 2}" in text  # 2,000 / (600 x 4 x 0.7) = 1.19 -> 2
    assert "{name: vllm-medical, count: 28}" in text  # 1,000 x 100 / 3,572 = 27.99 -> 28
    bad = CliRunner().invoke(cli, [*args, "--traffic", "astrology=1"])
    assert bad.exit_code == 2 and "neither an expert nor a domain" in bad.output
    missing = CliRunner().invoke(cli, [*args, "--traffic", str(tmp_path / "nope.db")])
    assert missing.exit_code == 2 and "not a decision log" in missing.output
