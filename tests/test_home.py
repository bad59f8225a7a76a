"""$EXPERTMESH_HOME moves every cache expertmesh makes; nothing lands in the user's home."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from expertmesh import paths
from expertmesh.config import load_config


def test_every_default_path_follows_expertmesh_home(tmp_path, monkeypatch):
    from expertmesh.experts.vllm import VllmServer, server_env

    monkeypatch.setenv("EXPERTMESH_HOME", str(tmp_path))
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    config = load_config()
    for path in (paths.router_artifacts(), config.embedded.cache_dir, config.vllm.log_dir):
        assert path.is_relative_to(tmp_path), path
    assert config.router.artifact == paths.packaged_router()  # read-only, shipped in the package
    server = VllmServer("127.0.0.1", 8101, "packaged:smollm2-135m-instruct", ("m",), (), (), ("e",))
    env = server_env(config.vllm, server)
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "vllm" / "torchinductor")


def test_unset_home_is_the_user_cache(monkeypatch):
    monkeypatch.delenv("EXPERTMESH_HOME", raising=False)
    assert str(paths.router_artifacts()) == os.path.expanduser("~/.cache/expertmesh/routers")


@pytest.mark.slow
def test_a_real_routing_run_writes_only_under_expertmesh_home(trained_router, tmp_path):
    """`expertmesh route` with an empty home: the ONNX export (the 90 MB that used to land in
    ~/.cache) goes under $EXPERTMESH_HOME, and the user's home stays empty."""
    user_home, em_home = tmp_path / "home", tmp_path / "em"
    user_home.mkdir()
    env = {**os.environ, "HOME": str(user_home), "EXPERTMESH_HOME": str(em_home)}
    env.pop("MPLCONFIGDIR", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "expertmesh.cli",
            "route",
            "What dose of ibuprofen is safe?",
            "--router",
            str(trained_router),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert '"domain"' in result.stdout
    assert list(user_home.rglob("*")) == []
    assert list((em_home / "onnx").glob("minilm-*.onnx"))
