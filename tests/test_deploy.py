"""The deployment files agree with the code: compose's gateway config loads and names real services."""

from __future__ import annotations

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


def test_the_benchmark_config_serves_fake_model(monkeypatch):
    monkeypatch.setenv("UPSTREAM_BASE_URL", "http://127.0.0.1:9000/v1")
    config = load_config(REPO / "benchmarks" / "gateway.yaml")
    assert [e.name for e in config.experts] == ["fake-model"]
    assert str(config.experts[0].backend) == "http://127.0.0.1:9000/v1"
