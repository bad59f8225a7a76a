"""`expertmesh serve` trains the default router when its artifact is missing, and only then."""

from __future__ import annotations

import io
import json

import expertmesh.cli.router_setup as routers
import pytest
from expertmesh.router.training import TrainSettings
from rich.console import Console

from expertmesh.config import load_config

pytestmark = pytest.mark.slow


def test_missing_artifact_is_trained_once_then_reused(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(routers.SETTINGS, "embed-linear", lambda **kw: TrainSettings(**{"per_domain": 30, **kw}))
    config = load_config()
    config = config.model_copy(update={"router": config.router.model_copy(update={"artifact": tmp_path / "r"})})
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
