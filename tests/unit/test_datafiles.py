"""The data folder (image/, overlays/, qemu/boards/, requirements.lock) is found without the
source checkout: by $INFRASPECTRE_DATA, or in a built package's _data/ (what a wheel carries)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import datafiles
from appliance.errors import CommandError
from appliance.image import definition
from appliance.qemu import boards

ROOT = Path(__file__).resolve().parents[2]


def test_the_explicit_data_path_wins_and_a_wrong_one_is_named() -> None:
    assert datafiles.root({datafiles.DATA_ENV: "/srv/is-data"}) == Path("/srv/is-data")
    assert (datafiles.root({}) / "requirements.lock").is_file()  # this checkout
    with pytest.raises(CommandError, match=r"no image definitions: .*INFRASPECTRE_DATA"):
        definition.load("rpi", Path("/nonexistent"))
    with pytest.raises(CommandError, match=r"no board definitions: .*INFRASPECTRE_DATA"):
        boards.load("virt", Path("/nonexistent/qemu/boards"))


def test_setup_py_packages_exactly_the_data_folders_datafiles_names() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    data = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "DATA" for t in node.targets)
    )
    assert tuple(data) == datafiles.SHIPPED


def test_a_built_package_finds_its_data_without_the_checkout(tmp_path: Path) -> None:
    build = tmp_path / "build"
    # build_py only (no compiler): the pure package plus _data, as a wheel lays it out
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (build / "appliance" / "_data" / "qemu" / "boards" / "virt.toml").is_file()
    third_party = [p for p in sys.path if p.endswith("site-packages")]
    env = {k: v for k, v in os.environ.items() if k != datafiles.DATA_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(build), *third_party])
    code = (
        "import appliance; from appliance.image import definition; from appliance.qemu import "
        "boards; print(appliance.__file__); print(definition.load('rpi').lock); "
        "print(boards.load('virt').name)"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split()
    data = build / "appliance" / "_data"
    assert out == [
        str(build / "appliance" / "__init__.py"),
        str(data / "requirements.lock"),
        "virt",
    ]
