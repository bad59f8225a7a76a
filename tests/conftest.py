from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import uvicorn

from expertmesh.config import Config
from expertmesh.experts.pool import ExpertPool
from expertmesh.gateway.app import build_app
from expertmesh.router.policy import RoutingPolicy
from tests.fake_expert import build_fake_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_TEST_HOME = pytest.StashKey[Path]()
DOMAINS = ["medical", "legal", "finance", "code", "math", "science", "general"]
REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Everything the suite writes goes to one temporary folder, removed at the end: expertmesh's
    caches ($EXPERTMESH_HOME: models, routers, ONNX exports, logs, vLLM's caches), matplotlib's
    font cache, and the child processes' temporary files; pytest's own tmp_path folders aside.
    Subprocesses (gateways, expert servers) inherit it."""
    home = Path(tempfile.mkdtemp(prefix="expertmesh-tests-"))
    config.stash[_TEST_HOME] = home
    os.environ["EXPERTMESH_HOME"] = str(home / "expertmesh")
    os.environ["MPLCONFIGDIR"] = str(home / "matplotlib")
    # Child processes (vLLM servers above all) put their temporary files here too.
    (home / "tmp").mkdir()
    os.environ["TMPDIR"] = str(home / "tmp")


def pytest_unconfigure(config: pytest.Config) -> None:
    home = config.stash.get(_TEST_HOME, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "No tests ran" (exit 5) must fail CI loudly instead of being mistaken for success.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class KeywordClassifier:
    """A deterministic stand-in for the trained router in gateway unit tests."""

    kind = "keyword"
    labels = DOMAINS
    threshold = None
    KEYWORDS = {"medical": "symptom", "legal": "contract", "finance": "tax", "code": "python", "math": "integral"}

    def predict_proba(self, texts: Sequence[str], contexts: Sequence[str] | None = None) -> np.ndarray:
        rows = []
        for text in texts:
            hits = [d for d, word in self.KEYWORDS.items() if word in text.lower()]
            row = np.full(len(self.labels), 0.02 if hits else 0.7 / 6)
            row[self.labels.index(hits[0] if hits else "general")] = 0.88 if hits else 0.30
            rows.append(row)
        return np.array(rows)


def fake_config(fake_base_url: str, **gateway: object) -> Config:
    experts = [
        {"name": name, "domains": domains, "backend": f"{fake_base_url}/v1", "model": f"{name}-model",
         "system_prompt": f"You are the {name} expert.", "user_template": f"[{name}] {{query}}", "timeout_s": 2}
        for name, domains in [("medical", ["medical"]), ("legal", ["legal"]), ("finance", ["finance"]),
                              ("code", ["code"]), ("math", ["math"]), ("general", ["general", "science"])]
    ]  # fmt: skip
    return Config.model_validate(
        {"experts": experts, "router": {"artifact": "/nonexistent", "confidence_threshold": 0.5}, "gateway": gateway}
    )


@pytest.fixture(scope="session")
def fake_expert() -> Iterator[tuple[str, object]]:
    """A fake expert server serving every test expert's model; yields (base URL, app)."""
    models = [f"{name}-model" for name in ("medical", "legal", "finance", "code", "math", "general")]
    app = build_fake_app(models)
    with serve_in_thread(app) as url:
        yield url, app


@contextmanager
def running_gateway(config: Config, with_router: bool = True) -> Iterator[str]:
    policy = RoutingPolicy(KeywordClassifier(), config) if with_router else None
    with serve_in_thread(build_app(config, policy, ExpertPool(config))) as url:
        yield url


@pytest.fixture()
def gateway_url(fake_expert) -> Iterator[str]:
    with running_gateway(fake_config(fake_expert[0])) as url:
        yield url


@pytest.fixture(scope="session")
def trained_router(tmp_path_factory) -> Path:
    """A real embed-linear router trained through the CLI on a small sample (~1.3k texts)."""
    from typer.testing import CliRunner

    from expertmesh.cli import app

    folder = tmp_path_factory.mktemp("router") / "embed-linear"
    result = CliRunner().invoke(app, ["router", "train", "--kind", "embed-linear", "--out", str(folder), "--per-domain", "120"])
    assert result.exit_code == 0, result.output
    assert "Held-out sources" in result.output and "Random split" in result.output
    return folder


@pytest.fixture(scope="session")
def embedded_model():
    """The real SmolLM2-135M-Instruct (converted once per test session, into the suite's temporary home)."""
    from expertmesh.config import load_config
    from expertmesh.experts.embedded.model import EmbeddedChatModel, prepare_model

    return EmbeddedChatModel(prepare_model(load_config().embedded.cache_dir))
