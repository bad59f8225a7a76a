"""The distribution: a wheel built from the tracked files installs one top-level package,
`expertmesh`, which holds every subpackage and the data it reads, and works from anywhere."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

# Run by the installed copy, from a folder with no source tree in it (-P: not even the script's).
CHECK_INSTALLED = """
import importlib, pkgutil, sys
import expertmesh
site = sys.argv[1]
names = [m.name for m in pkgutil.walk_packages(expertmesh.__path__, "expertmesh.")]
for name in names:
    module = importlib.import_module(name)
    assert module.__file__.startswith(site), (name, module.__file__)
from expertmesh.config import load_config
from expertmesh.eval.bench_tasks import all_tasks, load_items
from expertmesh.router.data import vendored_data_dir
assert load_config().experts
task = next(iter(all_tasks().values()))
assert load_items(task, 1, 0)
assert any(vendored_data_dir().rglob("*.jsonl.gz"))
for bare in ("router", "experts", "gateway", "eval", "cli"):
    assert importlib.util.find_spec(bare) is None, bare
print(len(names))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the files git tracks (the build leaves nothing in the repo)."""
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "--quiet",
            "-w",
            str(dist),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (path,) = dist.glob("expertmesh-*.whl")
    return path


def test_the_wheel_has_one_top_level_package_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"expertmesh", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for package in ("cli", "router", "experts", "experts/embedded", "gateway", "eval"):
        assert f"expertmesh/{package}/__init__.py" in names
    assert "expertmesh/default.yaml" in names
    assert any(n.startswith("expertmesh/router/data/routing/medical/") for n in names)
    for shipped in ("artifacts/finetune/model.onnx", "artifacts/finetune/manifest.json", "artifacts/finetune/tokenizer.json",
                    "data/DOMAINS.md", "data/relabel.jsonl.gz", "data/conversations/written.jsonl.gz",
                    "data/dev/prompts.jsonl.gz", "data/dev/conversations.jsonl.gz"):  # fmt: skip
        assert f"expertmesh/router/{shipped}" in names
    assert any(n.startswith("expertmesh/router/data/routing/written/") for n in names)
    assert any(n.startswith("expertmesh/eval/tasks/") and n.endswith(".yaml") for n in names)
    assert any(n.startswith("expertmesh/eval/data/bench/") for n in names)
    ui = {str(path.relative_to(REPO)) for path in (REPO / "gateway" / "ui").rglob("*") if path.is_file()}
    assert ui and {f"expertmesh/{name}" for name in ui} <= set(names)  # the pages and every file they load
    assert not any(n.startswith("tests/") or n.startswith("benchmarks/") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "expertmesh = expertmesh.cli:main" in entry_points


@pytest.mark.slow
def test_the_installed_package_works_from_anywhere(wheel, tmp_path):
    site = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-cache-dir",
            "--quiet",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    assert sorted(p.name for p in site.iterdir() if p.name != "bin") == sorted(
        ["expertmesh", next(p.name for p in site.iterdir() if p.name.endswith(".dist-info"))]
    )
    # The installed copy comes first on the path; this environment's editable install of the
    # repository would otherwise answer for it.
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    checked = subprocess.run(
        [sys.executable, "-P", "-c", CHECK_INSTALLED, str(site)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stderr
    assert int(checked.stdout.strip()) > 40  # every module imported from the installed copy
    cli = subprocess.run(
        [sys.executable, "-P", "-m", "expertmesh.cli", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0 and "router" in cli.stdout
