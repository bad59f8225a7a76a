"""The deployment files agree with the code: compose's gateway config loads and names real services."""

from __future__ import annotations

import json

import yaml

from expertmesh.config import load_config
from tests.conftest import REPO


def test_compose_gateway_config_points_at_compose_services(monkeypatch):
    monkeypatch.setenv("EXPERTMESH_API_KEY", "sk-test")
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    command = compose["services"]["gateway"]["command"]
    config_path = command[command.index("--config") + 1].removeprefix("/app/")
    config = load_config(REPO / config_path)
    hosts = {str(expert.backend).split("//")[1].split(":")[0] for expert in config.experts}
    assert hosts <= set(compose["services"]), f"experts point at undeclared services {hosts}"
    assert config.gateway.api_keys == ["sk-test"]
    # the limits' Redis and the decision log's PostgreSQL are compose services too
    assert config.gateway.redis_url.split("//")[1].split(":")[0] in compose["services"]
    assert config.log.url.split("@")[1].split(":")[0] in compose["services"]


def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def test_compose_file_is_valid_compose_spec():
    """Parsed by compose_spec (a spec-complete Compose parser): types, durations, unknown keys.
    It does not expand YAML merge keys (<<), which Docker Compose does: PyYAML expands them first."""
    from compose_spec import PyCompose

    parsed = PyCompose.from_json(json.dumps(compose()))
    assert set(parsed.service_names()) == set(compose()["services"])


def test_compose_references_resolve_and_the_experts_fit_on_one_gpu():
    services, volumes = compose()["services"], set(compose()["volumes"])
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on undeclared {dependency}"
        for mount in service.get("volumes", []):
            assert mount.split(":")[0] in volumes, f"{name} mounts undeclared volume {mount}"
    vllm = {name: s["command"] for name, s in services.items() if name.startswith("vllm-")}
    shares = [float(command[command.index("--gpu-memory-utilization") + 1]) for command in vllm.values()]
    assert len(vllm) == 6 and sum(shares) <= 0.95
    # One start-up at a time: each vLLM service but the first waits for the previous one.
    assert sum("depends_on" not in services[name] for name in vllm) == 1


def test_each_gpu_expert_points_at_a_service_that_serves_its_model(monkeypatch):
    monkeypatch.setenv("EXPERTMESH_API_KEY", "sk-test")
    services = compose()["services"]
    for expert in load_config(REPO / "deploy" / "compose-gpu.yaml").experts:
        host = str(expert.backend).split("//")[1].split(":")[0]
        command = services[host]["command"]
        assert command[command.index("--served-model-name") + 1] == expert.model, expert.name


def test_the_benchmark_config_serves_fake_model(monkeypatch):
    monkeypatch.setenv("UPSTREAM_BASE_URL", "http://127.0.0.1:9000/v1")
    config = load_config(REPO / "benchmarks" / "gateway.yaml")
    assert [e.name for e in config.experts] == ["fake-model"]
    assert str(config.experts[0].backend) == "http://127.0.0.1:9000/v1"
