"""`experts serve` without vLLM: which servers a config needs, their command lines, config
errors, and the child-process handling (ready on /health, nothing left behind on stop)."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest
import yaml

from expertmesh.config import ConfigError, load_config
from expertmesh.experts.process import ServerProcess, ServerStartError
from expertmesh.experts.vllm import VllmFleet, plan_servers, vllm_python
from tests.conftest import REPO, free_port

SERVE = {"base_model": "org/base-7b", "args": ["--gpu-memory-utilization", "0.4"]}


def write_config(tmp_path, experts, **extra):
    path = tmp_path / "experts.yaml"
    router = {"fallback_expert": experts[0]["name"]}
    path.write_text(yaml.safe_dump({"domains": ["medical", "general"], "experts": experts, "router": router, **extra}))
    return path


def expert(name, domains, url, serve=SERVE, model=None):
    return {"name": name, "domains": domains, "backend": url, "model": model or name, "serve": serve}


def test_experts_on_one_address_share_a_server_under_several_names(tmp_path):
    url = "http://127.0.0.1:8101/v1"
    config = load_config(write_config(tmp_path, [expert("medical", ["medical"], url), expert("general", ["general"], url)]))
    [server] = plan_servers(config)
    assert server.served_names == ("medical", "general")
    command = server.command(vllm_python(config.vllm), "/models/base")
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--served-model-name") + 1 :][:2] == ["medical", "general"]
    assert command[command.index("--port") + 1] == "8101"
    assert command[-2:] == ["--gpu-memory-utilization", "0.4"]


def test_lora_experts_become_adapters_and_other_addresses_other_servers(tmp_path):
    shared = "http://127.0.0.1:8101/v1"
    experts = [
        expert("general", ["general"], shared),
        expert("medical", ["medical"], shared, serve={**SERVE, "lora": "/adapters/medical"}, model="med-lora"),
        {**expert("extra", [], "http://127.0.0.1:8102/v1"), "serve": {"base_model": "org/other"}},
    ]
    first, second = plan_servers(load_config(write_config(tmp_path, experts)))
    assert first.served_names == ("general",) and first.loras == (("med-lora", "/adapters/medical"),)
    command = first.command(sys.executable, "/m")
    assert "--enable-lora" in command and "med-lora=/adapters/medical" in command
    assert (second.port, second.base_model, second.served_names) == (8102, "org/other", ("extra",))


def test_experts_sharing_a_server_must_share_its_base_model(tmp_path):
    url = "http://127.0.0.1:8101/v1"
    experts = [expert("medical", ["medical"], url), expert("general", ["general"], url, serve={"base_model": "x"})]
    with pytest.raises(ConfigError, match=r"(?s)experts\.yaml.*experts\[1\]\.serve\.base_model.*shares the server"):
        load_config(write_config(tmp_path, experts))


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"backend": "embedded"}, "an 'embedded' expert has no vLLM server"),
        ({"backend": "http://127.0.0.1:8101"}, r"base URL is http://host:port/v1"),
        ({"serve": {"base_model": "packaged:llama-70b"}}, "unknown packaged model"),
    ],
)
def test_bad_serve_sections_are_named(tmp_path, broken, message):
    experts = [{**expert("medical", ["medical", "general"], "http://127.0.0.1:8101/v1"), **broken}]
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, experts))


def test_the_cpu_config_serves_every_expert_from_one_packaged_model():
    config = load_config(REPO / "deploy" / "vllm-cpu.yaml")
    [server] = plan_servers(config)
    assert server.is_packaged and set(server.served_names) == {e.model for e in config.experts}
    assert "--dtype" in server.args


def test_a_missing_vllm_python_is_a_config_error(tmp_path):
    url = "http://127.0.0.1:8101/v1"
    path = write_config(tmp_path, [expert("medical", ["medical", "general"], url)], vllm={"python": "/nope/python"})
    with pytest.raises(ConfigError, match="vllm.python: /nope/python does not exist"):
        VllmFleet(load_config(path), plan_servers(load_config(path)))


# A stand-in server: spawns a grandchild (as vLLM spawns its engine) and answers /health.
FAKE_SERVER = textwrap.dedent(
    """
    import http.server, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("grandchild", child.pid, flush=True)
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404); self.end_headers()
        def log_message(self, *args): pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_a_server_process_is_ready_on_health_and_leaves_nothing_behind(tmp_path):
    port, log = free_port(), tmp_path / "server.log"
    server = ServerProcess("fake", [sys.executable, "-c", FAKE_SERVER, str(port)], f"http://127.0.0.1:{port}/health", 30, log_file=log)
    with server:
        leader = server.pid
        grandchild = int(log.read_text().split()[1])
        assert alive(leader) and alive(grandchild)
    deadline = time.monotonic() + 5
    while (alive(leader) or alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(leader) and not alive(grandchild)


def test_a_server_that_dies_at_start_reports_its_log(tmp_path):
    command = [sys.executable, "-c", "import sys; print('CUDA out of memory'); sys.exit(3)"]
    server = ServerProcess("broken", command, "http://127.0.0.1:9/health", 30, log_file=tmp_path / "log")
    with pytest.raises(ServerStartError, match=r"(?s)exited with code 3.*CUDA out of memory"):
        with server:
            pass
