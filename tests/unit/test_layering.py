"""ARCHITECTURE's one-way rule: the components (agent, bus, provision, image, qemu) use the
shared core and never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "appliance"
COMPONENTS = ("agent", "bus", "provision", "image", "qemu")


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_imports_no_other_component(component: str) -> None:
    others = {f"appliance.{c}" for c in COMPONENTS if c != component}
    offending = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in (PACKAGE / component).rglob("*.py")
        for name in _imported(path)
        if any(name == o or name.startswith(o + ".") for o in others)
    }
    assert not offending, sorted(offending)
