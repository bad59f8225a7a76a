"""The folders are the architecture: gateway/ and eval/ use router/ and experts/, never the reverse."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

FORBIDDEN = {"router": {"gateway", "eval", "experts"}, "experts": {"gateway", "eval", "router"}, "gateway": {"eval"}}


def imported_packages(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(package):
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in (REPO / package).rglob("*.py")
    }
    assert not {path: names for path, names in offenders.items() if names}
