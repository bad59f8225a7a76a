"""`expertmesh serve` trains the default router when its artifact is missing, and only then."""

from __future__ import annotations

import io
import json
import os
import subprocess

import pytest
from rich.console import Console

import expertmesh.cli.router_setup as routers
from expertmesh.config import load_config
from expertmesh.router.training import TrainSettings
from tests.conftest import REPO


@pytest.mark.slow
def test_missing_artifact_is_trained_once_then_reused(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(routers.SETTINGS, "embed-linear", lambda **kw: TrainSettings(**{"per_domain": 30, **kw}))
    config = load_config()
    config = config.model_copy(update={"router": config.router.model_copy(update={"artifact": tmp_path / "r", "kind": "embed-linear"})})
    output = io.StringIO()
    policy = routers.load_or_train_policy(config, Console(file=output, width=400))
    assert "training the default router" in output.getvalue()
    assert "held-out sources" in output.getvalue()
    created = json.loads((tmp_path / "r" / "manifest.json").read_text())["created"]
    assert policy.route("chest pain when breathing").expert in {e.name for e in config.experts}

    output = io.StringIO()
    routers.load_or_train_policy(config, Console(file=output, width=400))
    assert output.getvalue() == ""  # loaded, not retrained
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["created"] == created
    assert "trained on other data" not in caplog.text


@pytest.mark.parametrize(
    ("variables", "arguments"),
    [
        ([], []),
        (["HOST=0.0.0.0", "PORT=9000"], ["--host", "0.0.0.0", "--port", "9000"]),
        (["CONFIG=deploy/vllm-cpu.yaml", "WORKERS=2"], ["--config", "deploy/vllm-cpu.yaml", "--workers", "2"]),
    ],
)
def test_make_serve_passes_what_the_readme_says(variables, arguments):
    """`make serve HOST=... PORT=...` (dry run: the commands make would run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under `make test`
    planned = subprocess.run(["make", "-n", "--no-print-directory", "serve", *variables], cwd=REPO, env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
    commands = planned.stdout.replace("\\\n", " ").splitlines()
    (serve,) = [line for line in commands if line.startswith(".venv/bin/expertmesh serve")]
    assert serve.split()[2:] == arguments
