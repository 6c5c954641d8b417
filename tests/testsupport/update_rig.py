"""A device for the updater in a folder (`agent.update.device_root`): the boot partition as a
folder, the two root slots as plain files, the release, the trusted update key, the kernel
command line; and small signed bundles for it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from appliance.crypto.keys import write_signing_key, write_verify_key
from appliance.update import bundle

#: small chunks so that a bundle of half a megabyte has many (a real one has 4 MiB chunks)
CHUNK = 64 << 10
SLOT_BYTES = 1 << 20
CONFIG = (
    "[all]\nos_prefix=slot-a/\narm_64bit=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n"
)
CMDLINE = "console=ttyS1 root=@ROOT@ ro appliance.slot=@SLOT@\n"


@dataclass
class DeviceRoot:
    """The folder standing for the device's `/`."""

    root: Path

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def boot_text(self, name: str) -> str:
        return self.path(f"/boot/firmware/{name}").read_text()

    def slot_bytes(self, slot: str) -> bytes:
        return self.path(f"/dev/mmcblk0p{2 if slot == 'a' else 3}").read_bytes()

    def boot_on(self, slot: str, version: str, build: int) -> None:
        """The box came up on slot, running that release (what the firmware and the new root
        would make true after a reboot)."""
        self.path("/proc/cmdline").write_text(f"console=ttyS1 ro appliance.slot={slot}\n")
        self.path("/etc/appliance/release").write_text(
            json.dumps({"version": version, "build": build, "board": "rpi"})
        )

    def reboot_requested(self) -> str:
        try:
            return self.path("/run/appliance/reboot-requested").read_text().strip()
        except FileNotFoundError:
            return ""


class HealthySystem:
    """The updater's System for rcS's `update boot` in a folder: nothing to remount, a healthy
    system, a reboot recorded (the boot under test needs none)."""

    def __init__(self) -> None:
        self.reboots: list[bool] = []

    def remount_boot(self, writable: bool) -> None:
        pass

    def reboot(self, tryboot: bool) -> None:
        self.reboots.append(tryboot)

    def health(self) -> list[str]:
        return []


def make_device(
    root: Path, key: SigningKey, version: str = "0.1.0", build: int = 1000
) -> DeviceRoot:
    """A device running slot a with release version/build, trusting key."""
    dev = DeviceRoot(root)
    for folder in ("/boot/firmware/slot-a", "/data/update", "/proc", "/run/appliance", "/dev"):
        dev.path(folder).mkdir(parents=True, exist_ok=True)
    dev.path("/boot/firmware/config.txt").write_text(CONFIG)
    dev.path("/boot/firmware/slot-a/vmlinuz").write_bytes(b"kernel A")
    write_verify_key(dev.path("/etc/appliance/update-keys/org.pub"), key.verify_key)
    dev.path("/run/appliance/disk").write_text("mmcblk0\n")
    for n in (2, 3):
        dev.path(f"/dev/mmcblk0p{n}").write_bytes(bytes(SLOT_BYTES))
        size = dev.path(f"/sys/class/block/mmcblk0p{n}/size")
        size.parent.mkdir(parents=True, exist_ok=True)
        size.write_text(f"{SLOT_BYTES // 512}\n")
    dev.boot_on("a", version, build)
    return dev


def write_update_key(folder: Path, key: SigningKey) -> Path:
    """The org update key pair as `pki init-update-key` lays it out; returns the .pub."""
    write_signing_key(folder / "update.key", key)
    write_verify_key(folder / "update.pub", key.verify_key)
    return folder / "update.pub"


def make_bundle(
    tmp: Path, key: SigningKey, *, version: str = "0.2.0", build: int = 2000, name: str = ""
) -> Path:
    """A bundle of a patterned root (several chunks) and a small boot set."""
    name = name or f"{version}-{build}.bundle"
    src = tmp / f"src-{name}"
    src.mkdir(parents=True, exist_ok=True)
    root = src / "root.img"
    root.write_bytes(bytes((i * 7 + build) % 251 for i in range(5 * CHUNK + 123)))
    (src / "vmlinuz").write_bytes(f"kernel {version} ".encode() * 20000)
    (src / "initrd.img").write_bytes(b"initrd")
    (src / "cmdline.txt").write_text(CMDLINE)
    out = tmp / name
    bundle.write(
        out, version=version, build=build, board="rpi", root=root,
        boot={n: src / n for n in ("vmlinuz", "initrd.img", "cmdline.txt")}, key=key, chunk=CHUNK,
    )  # fmt: skip
    return out


def root_of(bundle_path: Path) -> bytes:
    """The root image a bundle made by make_bundle carries."""
    return (bundle_path.parent / f"src-{bundle_path.name}" / "root.img").read_bytes()
