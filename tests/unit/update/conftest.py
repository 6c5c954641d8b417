"""A device in a temporary directory: slots as plain files, the boot partition as a folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from appliance.crypto.keys import write_verify_key
from appliance.update import bundle, device

#: a test key from a fixed seed (never a real one)
KEY = SigningKey(bytes(range(32)))
OTHER_KEY = SigningKey(bytes(range(1, 33)))
CHUNK = 64 << 10
SLOT_BYTES = 1 << 20
CONFIG = (
    "[all]\nos_prefix=slot-a/\narm_64bit=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n"
)
CMDLINE = "console=ttyS1 root=@ROOT@ ro appliance.slot=@SLOT@\n"


class PowerCut(Exception):
    """Raised where a paused checkpoint would wait for the power to be cut."""


@dataclass
class FakeSystem:
    remounts: list[bool] = field(default_factory=list)
    reboots: list[bool] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def remount_boot(self, writable: bool) -> None:
        self.remounts.append(writable)

    def reboot(self, tryboot: bool) -> None:
        self.reboots.append(tryboot)

    def health(self) -> list[str]:
        return list(self.missing)


@dataclass
class Box:
    root: Path
    paths: device.Paths
    system: FakeSystem
    clock: list[float]
    lines: list[str]

    def updater(self) -> device.Updater:
        def sleep(seconds: float) -> None:
            if seconds >= 3600:  # a paused checkpoint: the test cuts the power here
                raise PowerCut
            self.clock[0] += seconds

        return device.Updater(
            self.paths, self.system, log=self.lines.append, sleep=sleep, clock=lambda: self.clock[0]
        )

    def boot_on(self, slot: str) -> None:
        """The box came up on slot (what the firmware chose)."""
        self.paths.cmdline.write_text(f"console=ttyS1 ro appliance.slot={slot}\n")

    def slot_bytes(self, slot: str) -> bytes:
        return (self.paths.dev_dir / f"mmcblk0p{2 if slot == 'a' else 3}").read_bytes()

    def boot_text(self, name: str) -> str:
        return (self.paths.boot_dir / name).read_text()


@pytest.fixture
def box(tmp_path: Path) -> Box:
    paths = device.Paths(
        state_dir=tmp_path / "data/update",
        boot_dir=tmp_path / "boot",
        release=tmp_path / "release",
        keys_dir=tmp_path / "keys",
        cmdline=tmp_path / "cmdline",
        disk_file=tmp_path / "disk",
        ready_file=tmp_path / "ready",
        settings=tmp_path / "settings",
        console=tmp_path / "console",
        dev_dir=tmp_path / "dev",
        sys_block=tmp_path / "sys",
        reboot_arg=tmp_path / "reboot-arg",
    )
    paths.state_dir.mkdir(parents=True)
    (paths.boot_dir / "slot-a").mkdir(parents=True)
    (paths.boot_dir / "config.txt").write_text(CONFIG)
    (paths.boot_dir / "slot-a/vmlinuz").write_bytes(b"kernel A")
    paths.release.write_text(json.dumps({"version": "0.1.0", "build": 1000, "board": "rpi"}))
    write_verify_key(paths.keys_dir / "org.pub", KEY.verify_key)
    paths.disk_file.write_text("mmcblk0\n")
    paths.dev_dir.mkdir()
    for n in (2, 3):
        (paths.dev_dir / f"mmcblk0p{n}").write_bytes(bytes(SLOT_BYTES))
        (paths.sys_block / f"mmcblk0p{n}").mkdir(parents=True)
        (paths.sys_block / f"mmcblk0p{n}/size").write_text(f"{SLOT_BYTES // 512}\n")
    b = Box(tmp_path, paths, FakeSystem(), [0.0], [])
    b.boot_on("a")
    return b


def make_bundle(
    tmp: Path,
    *,
    version: str = "0.2.0",
    build: int = 2000,
    board: str = "rpi",
    key: SigningKey = KEY,
    root_bytes: int = 5 * CHUNK + 123,
    name: str = "b.bundle",
) -> Path:
    """A bundle of a patterned root and a small boot set (kernel bigger than one chunk)."""
    src = tmp / f"src-{name}"
    src.mkdir(exist_ok=True)
    root = src / "root.img"
    root.write_bytes(bytes((i * 7 + 3) % 251 for i in range(root_bytes)))
    (src / "vmlinuz").write_bytes(b"kernel B " * 20000)
    (src / "initrd.img").write_bytes(b"initrd B")
    (src / "cmdline.txt").write_text(CMDLINE)
    out = tmp / name
    bundle.write(
        out,
        version=version,
        build=build,
        board=board,
        root=root,
        boot={n: src / n for n in ("vmlinuz", "initrd.img", "cmdline.txt")},
        key=key,
        chunk=CHUNK,
    )
    return out
