"""The folders are the architecture, installed as one package: `expertmesh/` is the shared base
(config, messages), router/ and experts/ sit on it, gateway/ and eval/ use those two, and the
command line (cli/) sits above everything. No arrow points upward, and nothing imports a folder
by its bare name (installed, only `expertmesh.*` exists)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

# folder -> the subpackage it is installed as ("" for the base package itself)
FOLDERS = {
    "expertmesh": "",
    "router": "router",
    "experts": "experts",
    "gateway": "gateway",
    "eval": "eval",
    "cli": "cli",
}
# what each layer may import, besides itself and the base
ALLOWED = {
    "": set(),
    "router": set(),
    "experts": set(),
    "gateway": {"router", "experts"},
    "eval": {"router", "experts"},
    "cli": {"router", "experts", "gateway", "eval"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def layer_of(module: str) -> str | None:
    """'expertmesh.router.policy' -> 'router'; 'expertmesh.config' -> ''; other packages -> None."""
    parts = module.split(".")
    if parts[0] != "expertmesh":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else ""


def python_files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_no_layer_imports_a_higher_one(folder):
    layer = FOLDERS[folder]
    offenders = {}
    for path in python_files(folder):
        upward = {
            m
            for m in imported_modules(path)
            if (lo := layer_of(m)) is not None and lo not in {layer, ""} | ALLOWED[layer]
        }
        if upward:
            offenders[str(path.relative_to(REPO))] = sorted(upward)
    assert not offenders


@pytest.mark.parametrize("folder", ["expertmesh", "router", "experts", "gateway", "eval", "cli", "tests", "benchmarks"])
def test_nothing_imports_a_folder_by_its_bare_name(folder):
    bare = set(FOLDERS) - {"expertmesh"}
    offenders = {
        str(path.relative_to(REPO)): sorted(m for m in imported_modules(path) if m.split(".")[0] in bare)
        for path in python_files(folder)
    }
    assert not {path: names for path, names in offenders.items() if names}


def test_every_folder_is_a_declared_subpackage():
    """pyproject's package list and package-dir map cover every package folder (else a wheel lacks it)."""
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(setuptools["packages"])
    on_disk = set()
    for folder, subpackage in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).parts
            on_disk.add(".".join(["expertmesh", *([subpackage] if subpackage else []), *relative]))
        assert setuptools["package-dir"][f"expertmesh.{subpackage}" if subpackage else "expertmesh"] == folder
    assert declared == on_disk
