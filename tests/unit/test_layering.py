"""ARCHITECTURE's one-way rule: the components (agent, bus, provision, image, qemu) use the
shared core and never import each other. And the card's rule: runtime code (everything but
appliance/devkit/) never imports the development kit, pytest, scapy or any other distribution
that requirements.lock does not pin, not even inside a function."""

from __future__ import annotations

import ast
import functools
from importlib import metadata
from pathlib import Path

import pytest

from appliance.image.lock import normalise
from appliance.image.lock import read as read_lock

PACKAGE = Path(__file__).resolve().parents[2] / "appliance"
COMPONENTS = ("agent", "bus", "provision", "image", "qemu")


@functools.cache  # every test walks the same files: parse each once
def _imported(path: Path, everywhere: bool = False) -> frozenset[str]:
    """Absolute imports of path; with everywhere, also `from appliance.x import y` as
    appliance.x.y (y may be a module) and the imports inside functions (ast.walk sees all)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if everywhere:
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(names)


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


RUNTIME_FORBIDDEN = ("appliance.devkit", "pytest", "scapy")
LOCK = PACKAGE.parent / "requirements.lock"


def _runtime_modules() -> list[Path]:
    """Every module of the product: appliance/ less the development kit and generated code."""
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.relative_to(PACKAGE).parts[0] != "devkit" and "_generated" not in p.parts
    ]


def test_runtime_code_never_imports_the_devkit_pytest_or_scapy() -> None:
    offending = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in _runtime_modules()
        for name in _imported(path, everywhere=True)
        if any(name == f or name.startswith(f + ".") for f in RUNTIME_FORBIDDEN)
    }
    assert not offending, sorted(offending)


def test_runtime_code_imports_only_what_the_runtime_lock_pins() -> None:
    """A third-party import must come from a distribution in requirements.lock (what the card
    installs), never from a development-only one (requirements-dev.lock: pytest, hypothesis,
    grpcio-tools, scapy...): on the card it would be a ModuleNotFoundError."""
    pinned = set(read_lock(LOCK))
    providers = metadata.packages_distributions()
    offending = set()
    for path in _runtime_modules():
        for name in _imported(path, everywhere=True):
            top = name.split(".")[0]
            dists = {normalise(d) for d in providers.get(top, [])}
            if top != "appliance" and dists and not dists & pinned:
                offending.add(f"{path.relative_to(PACKAGE)}: {name} ({', '.join(sorted(dists))})")
    assert not offending, sorted(offending)
