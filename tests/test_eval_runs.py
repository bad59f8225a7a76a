"""`expertmesh eval run` end to end against a fake expert server on 127.0.0.1: the systems, the
report, and resumption after kill -9 (nothing received is lost or asked again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import yaml
from typer.testing import CliRunner

from expertmesh.cli import app
from expertmesh.eval.bench_report import bootstrap_interval, summarize
from tests.conftest import REPO, fake_config, running_gateway, serve_in_thread
from tests.fake_expert import build_fake_app

EXPERTS = [("medical", ["medical"]), ("legal", ["legal"]), ("finance", ["finance"]), ("code", ["code"]),
           ("math", ["math"]), ("general", ["general", "science"])]  # fmt: skip


@pytest.fixture()
def fake_run_config(trained_router, tmp_path):
    """A config whose experts are one fake server (answers "[model] prompt" after 0.15 s)."""
    with serve_in_thread(build_fake_app([f"{n}-model" for n, _ in EXPERTS], delay_s=0.15)) as url:
        config = {
            "experts": [{"name": n, "domains": d, "backend": f"{url}/v1", "model": f"{n}-model"} for n, d in EXPERTS],
            "router": {"artifact": str(trained_router)},
        }
        path = tmp_path / "expertmesh.yaml"
        path.write_text(yaml.safe_dump(config))
        yield path


def run_args(config, out, *more):
    return ["eval", "run", "--suite", "smoke", "--limit", "2", "--config", str(config), "--out", str(out),
            "--systems", "routed,oracle,general,random,expert:code,top-p", "--scoring", "generate", *more]  # fmt: skip


def lines(path):
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_a_run_writes_a_report_with_every_system_and_domain(fake_run_config, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, run_args(fake_run_config, out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    systems = {v["system"] for v in report["systems"].values()}
    assert systems == {"routed", "oracle", "general", "random", "expert:code", "top-p"}
    domains = {"medical", "legal", "finance", "code", "math", "science", "general"}
    for name in ("routed", "oracle", "general", "random"):
        summary = report["systems"][f"{name}/generate"]
        assert set(summary["domains"]) == domains
        for cell in summary["domains"].values():
            low, high = cell["ci95"]
            assert cell["n"] >= 2 and 0 <= low <= cell["accuracy"] <= high <= 1
    assert report["routing"]["accuracy"] is not None and len(report["routing"]["confusion"]) >= 7
    markdown = (out / "report.md").read_text()
    assert "| routed |" in markdown and "| oracle |" in markdown and "[" in markdown  # intervals in the cells
    assert (out / "generate_domains.png").stat().st_size > 1000 and (out / "routing_confusion.png").is_file()
    # The report re-renders from the folder alone.
    assert CliRunner().invoke(app, ["eval", "report", str(out)]).exit_code == 0


@pytest.mark.slow
def test_a_killed_run_resumes_without_losing_or_repeating_answers(fake_run_config, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "expertmesh.cli", *run_args(fake_run_config, out, "--concurrency", "1")]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(lines(out / "answers.jsonl")) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    kept = lines(out / "answers.jsonl")
    assert len(kept) >= 5
    with (out / "answers.jsonl").open("a") as handle:
        handle.write('{"key": "medmcqa|cut-off-by-the-kill')  # a torn last line

    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    final = [json.loads(line) for line in lines(out / "answers.jsonl") if line.startswith("{") and line.endswith("}")]
    keys = [record["key"] for record in final]
    assert len(keys) == len(set(keys)), "an answer was asked twice"
    assert [json.loads(line) for line in kept] == final[: len(kept)], "answers of the killed run changed"
    plan = json.loads((out / "plan.json").read_text())
    assert len(final) == len({(i["key"], r[i["key"]]) for i in plan["items"] for r in plan["responders"].values()})
    # A third run has nothing to ask.
    before = len(lines(out / "answers.jsonl"))
    third = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and len(lines(out / "answers.jsonl")) == before


@pytest.mark.slow
def test_a_run_through_a_gateway_reports_the_gateways_own_routing(fake_run_config, fake_expert, tmp_path):
    """--gateway: the traffic split is the gateway's decisions, read from its answers, not "gateway 100%"."""
    out = tmp_path / "run"
    with running_gateway(fake_config(fake_expert[0])) as url:  # routes by keywords: not the plan's router
        result = CliRunner().invoke(app, ["eval", "run", "--suite", "smoke", "--limit", "1", "--config",
                                          str(fake_run_config), "--out", str(out), "--systems", "routed",
                                          "--scoring", "generate", "--gateway", f"{url}/v1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    routing = json.loads((out / "report.json").read_text())["routing"]
    records = [json.loads(line) for line in lines(out / "answers.jsonl")]
    assert {r["responder"] for r in records} == {"gateway"}
    experts = Counter(r["routed_expert"] for r in records)
    assert routing["decided_by"] == "gateway" and "gateway" not in routing["expert_share"]
    assert routing["expert_share"] == {name: round(n / len(records), 4) for name, n in experts.most_common()}
    assert routing["fallback_share"] == round(sum(r["routed_by"] == "fallback" for r in records) / len(records), 4)
    assert "decisions of the gateway" in (out / "report.md").read_text()


def test_a_run_folder_of_another_setup_is_refused(fake_run_config, tmp_path):
    out = tmp_path / "run"
    (out).mkdir()
    (out / "run.json").write_text(json.dumps({"settings": {"seed": 99}, "fingerprints": {}}))
    result = CliRunner().invoke(app, run_args(fake_run_config, out))
    assert result.exit_code == 2 and "another --out folder" in result.output


def test_unknown_suites_and_systems_are_named():
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "run", "--suite", "nonsense"])
    assert result.exit_code == 2 and "unknown suite or task 'nonsense'" in result.output
    result = runner.invoke(app, ["eval", "run", "--suite", "smoke", "--systems", "routed,psychic"])
    assert result.exit_code == 2 and "unknown system 'psychic'" in result.output


def test_bootstrap_intervals_cover_the_mean_and_narrow_with_more_items():
    few, many = [True, False] * 5, [True, False] * 200
    low_few, high_few = bootstrap_interval(few)
    low_many, high_many = bootstrap_interval(many)
    assert low_few < 0.5 < high_few and low_many < 0.5 < high_many
    assert (high_many - low_many) < (high_few - low_few) / 3
    assert summarize([True] * 4, seed=0) == {"accuracy": 1.0, "ci95": [1.0, 1.0], "n": 4}
    assert bootstrap_interval([True, False, True], seed=1) == bootstrap_interval([True, False, True], seed=1)


def test_the_smoke_suite_covers_every_domain():
    from expertmesh.eval.bench_tasks import all_suites, all_tasks

    domains = {all_tasks()[name].domain for name in all_suites()["smoke"].tasks}
    assert domains == {"medical", "legal", "finance", "code", "math", "science", "general"}
    assert REPO.joinpath("eval", "data", "DATA.md").is_file()


def test_concurrency_defaults_to_one_for_the_embedded_model_only():
    from expertmesh.config import load_config
    from expertmesh.eval.bench_run import default_concurrency

    embedded = load_config()  # the default config: every expert is the embedded SmolLM2
    assert all(e.is_embedded for e in embedded.experts)
    assert default_concurrency(embedded, None) == 1
    assert default_concurrency(embedded, "http://127.0.0.1:8080/v1") == 4  # a gateway: unknown backends
    assert default_concurrency(load_config(REPO / "deploy" / "vllm-cpu.yaml"), None) == 4
