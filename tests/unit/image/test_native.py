"""The card's C extensions: cross-compiled for aarch64 with fixed flags, reproducibly, and a
missing cross compiler said in one line (the build on a board is tests/board/test_card.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.errors import CommandError
from appliance.image import native, rootfs

PACKAGE = Path(__file__).resolve().parents[3] / "appliance"

SOURCE = """
#include <stdio.h>
const char *where(void) { return __FILE__; }
int answer(int x) { return x * 6 + 7; }
"""


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


def _compile(folder: Path) -> bytes:
    folder.mkdir(parents=True)
    src = folder / "ext.c"
    src.write_text(SOURCE)
    out = folder / "ext.so"
    cmd = native.command(native.compiler(), src, out, [], folder)
    rootfs.run(cmd, "cc", env={"PATH": "/usr/bin:/bin", "SOURCE_DATE_EPOCH": "1"})
    assert _elf_machine(out) == 183  # EM_AARCH64
    return out.read_bytes()


def test_the_same_source_in_two_checkouts_compiles_to_the_same_bytes(tmp_path: Path) -> None:
    assert _compile(tmp_path / "one" / "checkout") == _compile(tmp_path / "two")


def test_flags_are_fixed_strip_and_map_the_checkout(tmp_path: Path) -> None:
    cmd = native.command("cc", tmp_path / "a.c", tmp_path / "a.so", [tmp_path / "inc"], tmp_path)
    assert "-s" in cmd and "-Werror" in cmd and "-g" not in cmd
    assert f"-ffile-prefix-map={tmp_path}=appliance" in cmd
    assert f"-I{tmp_path / 'inc'}" in cmd


def test_a_missing_cross_compiler_is_one_line_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(CommandError, match="gcc-aarch64-linux-gnu") as err:
        native.build(PACKAGE, PACKAGE, [], 1)
    assert "\n" not in str(err.value) and "make apt" in str(err.value)


def test_the_card_ships_the_meters_fast_path_and_not_the_bus_verifier() -> None:
    assert native.target("capture/_fastpath.c") == (
        "capture/_fastpath.cpython-311-aarch64-linux-gnu.so"
    )
    assert rootfs.NATIVE == ("capture/_fastpath.c",)
    assert all((PACKAGE / rel).is_file() for rel in rootfs.NATIVE)
    # the Ed25519 batch verifier is the bus's alone: the agent never imports it
    agent = subprocess.run(
        ["grep", "-rl", "crypto.batch\\|_ed25519_batch", str(PACKAGE / "agent")],
        capture_output=True,
        text=True,
    )
    assert agent.stdout == ""


def test_image_build_without_the_cross_compiler_stops_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from appliance.image import build, definition

    monkeypatch.setattr(build.os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(CommandError, match="aarch64-linux-gnu-gcc is not installed"):
        build.build(definition.load("rpi"), tmp_path / "out", tmp_path / "cache", epoch=1)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
