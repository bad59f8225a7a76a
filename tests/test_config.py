"""Configuration: the default loads; every kind of mistake names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from expertmesh.config import ConfigError, default_config_path, load_config


def write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "expertmesh.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def default_data() -> dict:
    return yaml.safe_load(default_config_path().read_text())


def test_default_config_maps_every_domain_and_science_to_general():
    config = load_config()
    mapping = config.expert_for_domain()
    assert sorted(mapping) == sorted(config.domains)
    assert mapping["science"] == "general" and mapping["medical"] == "medical"
    assert all(expert.is_embedded for expert in config.experts)
    assert config.router.fallback_expert == "general"


def test_environment_variables_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTMESH_PORT", "9999")
    monkeypatch.setenv("MY_KEY", "sk-secret")
    data = default_data()
    data["gateway"]["api_keys"] = ["${MY_KEY}"]
    config = load_config(write(tmp_path, data))
    assert config.gateway.port == 9999 and config.gateway.api_keys == ["sk-secret"]


def mutate(data: dict, change) -> dict:
    change(data)
    return data


BAD = [
    (lambda d: d["experts"][0].update(backend="ftp://nowhere"), "experts[0].backend"),
    (lambda d: d["experts"][1].update(domains=["astrology"]), "experts[1].domains: unknown domain 'astrology'"),
    (lambda d: d["experts"][2].update(user_template="{question}"), "experts[2].user_template: must contain {query}"),
    (lambda d: d["experts"][2].update(user_template="{query} {lang}"), "unknown variable(s) ['lang']"),
    (lambda d: d["experts"][0].update(timeout_s=-1), "experts[0].timeout_s"),
    (lambda d: d["experts"][0].pop("model"), "experts[0].model: Field required"),
    (lambda d: d["experts"][0].update(temprature=1), "experts[0].temprature: Extra inputs are not permitted"),
    (lambda d: d["experts"][1].update(domains=["medical"]), "domain 'medical' is already served by expert 'medical'"),
    (lambda d: d["experts"][5].update(domains=["general"]), "no expert serves domain(s) ['science']"),
    (lambda d: d["experts"][1].update(name="medical"), "duplicate expert name(s) ['medical']"),
    (lambda d: d["router"].update(fallback_expert="oracle"), "router.fallback_expert: unknown expert 'oracle'"),
    (lambda d: d["router"].update(confidence_threshold=1.5), "router.confidence_threshold"),
    (lambda d: d["gateway"].update(port="eighty"), "gateway.port"),
    (lambda d: d["gateway"].update(api_keys=["${UNSET_KEY_FOR_TEST}"]), "gateway.api_keys: an API key is empty"),
]


@pytest.mark.parametrize(("change", "expected"), BAD)
def test_bad_config_names_file_and_key(tmp_path, change, expected):
    path = write(tmp_path, mutate(default_data(), change))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"(?s)invalid YAML in .*expertmesh.yaml\", line 2"):
        load_config(write(tmp_path, "experts: [\n  - name: a\n bad"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"))


def test_cli_reports_config_errors_without_a_traceback(tmp_path):
    from typer.testing import CliRunner

    from expertmesh.cli import app

    path = write(tmp_path, mutate(default_data(), lambda d: d["router"].update(fallback_expert="oracle")))
    result = CliRunner().invoke(app, ["route", "hello", "--config", str(path)])
    assert result.exit_code == 2
    assert "router.fallback_expert" in result.output and "Traceback" not in result.output


def test_cli_reports_a_missing_router_artifact(tmp_path):
    from typer.testing import CliRunner

    from expertmesh.cli import app

    result = CliRunner().invoke(app, ["route", "hello", "--router", str(tmp_path)])
    assert result.exit_code == 2
    assert "expertmesh router train" in result.output and "Traceback" not in result.output


def test_default_paths_are_expanded_too():
    """A default "~/..." that skipped its validator would create a directory named "~" in the cwd."""
    from expertmesh.config import EmbeddedConfig, RouterConfig, VllmConfig

    for path in (RouterConfig().artifact, EmbeddedConfig().cache_dir, VllmConfig().log_dir):
        assert "~" not in str(path) and path.is_absolute()
