"""The development tools run exactly the versions requirements-dev.lock pins (the runtime lock
has its own, stricter tests in tests/unit/image/test_lock.py)."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from appliance.image.lock import read

ROOT = Path(__file__).parents[2]


def test_dev_tools_equal_the_dev_lock() -> None:
    drift = {}
    for pkg, ver in read(ROOT / "requirements-dev.lock").items():
        try:
            installed = version(pkg)
        except PackageNotFoundError:
            installed = "missing"
        if installed != ver:
            drift[pkg] = (ver, installed)
    assert not drift, f"venv differs from requirements-dev.lock (pinned, installed): {drift}"
