"""One lock: the venv runs exactly the versions requirements.lock pins (the image uses it too)."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pkg, _, ver = line.partition("==")
            assert ver, f"{name}: {line!r} is not pinned with =="
            pins[pkg] = ver
    return pins


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_installed_versions_equal_the_lock(lock: str) -> None:
    drift = {}
    for pkg, ver in _pins(lock).items():
        try:
            installed = version(pkg)
        except PackageNotFoundError:
            installed = "missing"
        if installed != ver:
            drift[pkg] = (ver, installed)
    assert not drift, f"venv differs from {lock} (pinned, installed): {drift}; run make venv"


def test_every_runtime_dependency_is_pinned() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in deps}
    pinned = {p.lower() for p in _pins("requirements.lock")}
    assert names <= pinned, f"not pinned in requirements.lock: {sorted(names - pinned)}"
