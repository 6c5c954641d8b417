"""The built rpi card itself: boot partition, partitions, manifest, reproducibility, growth."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.image import (
    bootcheck,
    build,
    definition,
    firstboot,
    lock,
    manifest,
    native,
    rootfs,
    sdcard,
    settings,
)
from appliance.qemu.machine import Machine

ROOT = Path(__file__).resolve().parents[2]
# a cold build (downloads) or a boot on a loaded 2-core host can exceed the default 300 s
pytestmark = pytest.mark.timeout(900)


def _boot_files(image: Path) -> list[str]:
    spec = f"{image}@@{settings.boot_partition_offset(image)}"
    out = subprocess.run(
        ["mdir", "-b", "-/", "-i", spec, "::"], capture_output=True, text=True, check=True
    ).stdout
    names = [line.strip().removeprefix("::/") for line in out.splitlines() if line.strip()]
    return [n for n in names if not n.endswith("/")]


def _boot_text(image: Path, name: str) -> str:
    spec = f"{image}@@{settings.boot_partition_offset(image)}"
    return subprocess.run(
        ["mtype", "-i", spec, f"::{name}"], capture_output=True, text=True, check=True
    ).stdout


def test_boot_partition_holds_everything_config_and_cmdline_name(rpi_image: Path) -> None:
    files = _boot_files(rpi_image)
    config = _boot_text(rpi_image, "config.txt")
    cmdline = _boot_text(rpi_image, "slot-a/cmdline.txt")
    assert "arm_64bit=1" in config
    assert {"[pi3]", "[pi4]"} <= {line.strip() for line in config.splitlines()}
    assert bootcheck.missing(files, config, cmdline) == []


def test_cmdline_root_is_the_cards_squashfs_partition(rpi_image: Path) -> None:
    cmdline = _boot_text(rpi_image, "slot-a/cmdline.txt")
    assert "appliance.slot=a" in cmdline.split()
    found = re.search(r"root=PARTUUID=([0-9a-f]{8})-(\d+)", cmdline)
    assert found, cmdline
    with rpi_image.open("rb") as fh:
        mbr = fh.read(512)
        assert mbr[440:444] == bytes.fromhex(found.group(1))[::-1]
        entry = 446 + 16 * (int(found.group(2)) - 1)
        fh.seek(int.from_bytes(mbr[entry + 8 : entry + 12], "little") * 512)
        assert fh.read(4) == b"hsqs", "partition 2 does not hold a squashfs"


def test_card_size_is_a_power_of_two(rpi_image: Path) -> None:
    size = rpi_image.stat().st_size
    assert size & (size - 1) == 0


def test_card_has_two_root_slots_with_slot_b_empty_and_data_last(rpi_image: Path) -> None:
    (boot, _), (a, a_size), (b, b_size), (data, data_size) = (
        firstboot.mbr_partition(rpi_image, n) for n in (1, 2, 3, 4)
    )
    assert (a_size, b_size) == (sdcard.SLOT_SIZE, sdcard.SLOT_SIZE)
    assert boot < a < b < data and data + data_size == rpi_image.stat().st_size
    with rpi_image.open("rb") as fh:
        fh.seek(a)
        assert fh.read(4) == b"hsqs"
        fh.seek(b)
        assert fh.read(1 << 20) == bytes(1 << 20)  # zeros until the first update


def test_manifest_lists_packages_locked_python_and_file_hashes(
    rpi_build: build.Result,
) -> None:
    doc = manifest.read(rpi_build.manifest)
    assert doc["image"]["sha256"] == manifest.sha256_file(rpi_build.image) == rpi_build.sha256
    debs = {p["name"]: p["version"] for p in doc["debian_packages"]}
    assert {"python3", "busybox-static", "raspi-firmware", "linux-image-arm64"} <= set(debs)
    assert all(re.fullmatch(r"[0-9a-f]{64}", p["sha256"]) for p in doc["debian_packages"])
    shipped = {
        lock.normalise(p["name"]): p["version"]
        for p in doc["python_packages"]
        if p["name"] != "infraspectre-edge"
    }
    assert shipped == lock.read(ROOT / "requirements.lock")
    root = {e["path"]: e for e in doc["files"]["root"]}
    assert root["usr/local/bin/infraspectre"]["mode"] == "0755"
    assert root["etc/shadow"]["mode"] == "0640"
    boot = {e["path"]: e for e in doc["files"]["boot"]}
    assert (
        boot["slot-a/vmlinuz"]["sha256"]
        == hashlib.sha256(
            subprocess.run(
                [
                    "mtype",
                    "-i",
                    f"{rpi_build.image}@@{settings.boot_partition_offset(rpi_build.image)}",
                    "::slot-a/vmlinuz",
                ],
                capture_output=True,
                check=True,
            ).stdout
        ).hexdigest()
    )


def test_the_card_carries_no_development_module_pytest_or_scapy(rpi_build: build.Result) -> None:
    doc = manifest.read(rpi_build.manifest)
    site = definition.load("rpi").site_packages
    paths = [e["path"] for e in doc["files"]["root"]]
    ours = {
        p.removeprefix(f"{site}/appliance/")
        for p in paths
        if p.startswith(f"{site}/appliance/")
        and "__pycache__" not in p
        and not p.endswith("/")
        and any(p.endswith(s) for s in rootfs.SHIPPED_SUFFIXES)
    }
    assert ours == {str(r) for r in rootfs.runtime_files(ROOT / "appliance")}
    assert "agent/runtime.py" in ours
    # its C extensions, cross-compiled for the device (appliance.image.native): just those
    built = {
        p.removeprefix(f"{site}/appliance/")
        for p in paths
        if p.startswith(f"{site}/appliance/") and p.endswith(".so")
    }
    assert built == {native.target(rel) for rel in rootfs.NATIVE}
    assert "python3.11-dev" in {p["name"].removeprefix("lib") for p in doc["build_packages"]}
    assert not [p for p in paths if "/appliance/devkit" in p]
    # the site's top-level entries: packages, modules and NAME-VERSION.dist-info folders
    tops = {p.rpartition("/")[2].split("-")[0] for p in paths if p.rpartition("/")[0] == site}
    assert "grpc" in tops
    assert not tops & {"pytest", "_pytest", "scapy", "hypothesis", "grpc_tools"}
    assert not {p["name"].lower() for p in doc["python_packages"]} & {"pytest", "scapy"}


def test_two_builds_are_bit_identical(
    rpi_build: build.Result,
    rebuild_rpi: Callable[[Path], build.Result],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    second = rebuild_rpi(tmp_path_factory.mktemp("image-rpi-again"))
    assert second.sha256 == rpi_build.sha256
    assert second.manifest.read_bytes() == rpi_build.manifest.read_bytes()


def test_data_partition_grows_to_a_larger_card_on_first_boot(
    boot_board,
    rpi_image: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    bigger = tmp_path / "bigger.img"
    shutil.copyfile(rpi_image, bigger)
    card = 2 * rpi_image.stat().st_size
    os.truncate(bigger, card)
    start, before = firstboot.mbr_partition(rpi_image, 4)  # /data: after the two slots
    pi: Machine = boot_board(bigger, "virt")
    grown = int(pi.run("cat /sys/class/block/vda4/size").output) * 512
    assert grown > before
    assert card - (start + grown) < 1 << 20
    df = pi.run("df -k /data | tail -1").output.split()
    assert int(df[1]) * 1024 > before, df
    # idempotent: the next boot finds nothing to do and keeps the data
    assert pi.run("echo kept > /data/kept && sync").status == 0
    pi.power_cut()
    pi.boot()
    assert pi.run("cat /data/kept").output == "kept"
    assert "grow-data" not in pi.console.text()
