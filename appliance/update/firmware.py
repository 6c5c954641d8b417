"""What the Raspberry Pi firmware reads from the boot partition to choose what it boots.

The firmware reads `config.txt`, or `tryboot.txt` when the one-shot tryboot flag is set (a
`reboot "0 tryboot"` sets it; the firmware clears it before it reads, so any later reset reads
config.txt again). Of that file it applies the lines of `[all]` and of its model's section
(`[pi3]`, `[pi4]`; `[tryboot]` only in tryboot mode), a later line winning. Then:

- `os_prefix` is put in front of the operating-system files: the kernel (`kernel=`, default
  kernel8.img with arm_64bit=1), the initramfs (`initramfs NAME ...`), the command line
  (`cmdline=`, default cmdline.txt) and the device trees (`device_tree=`, or the model's
  mainline names with `upstream_kernel=1`). Firmware files (start*.elf, fixup*.dat) are not
  prefixed. If the kernel or the DTB is missing under the prefix, the firmware ignores the
  prefix (it boots the unprefixed names) rather than fail;
- config.txt itself and tryboot.txt are always at the top of the partition.

This module reads those files the same way, for the QEMU harness (which boots what it names,
so the same files decide under QEMU and on a Pi), the image build's check of the boot
partition, and the device (which slot is committed). It also writes the one line that differs
between config.txt and tryboot.txt: `os_prefix=`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

CONFIG = "config.txt"
TRYBOOT = "tryboot.txt"

#: section names the firmware matches for a model (besides [all])
MODEL_SECTIONS = {"pi3": ("pi3",), "pi4": ("pi4",)}

_PREFIX_LINE = re.compile(r"^os_prefix=(\S*)[ \t]*$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The settings of one config file as a model applies them."""

    values: dict[str, str]
    initramfs: str | None
    overlays: tuple[str, ...]


def settings(text: str, model: str, *, tryboot: bool = False) -> Settings:
    """The key=value settings, `initramfs` file and dtoverlay names model applies from text."""
    sections = {"all", *MODEL_SECTIONS.get(model, (model,))} | ({"tryboot"} if tryboot else set())
    values: dict[str, str] = {}
    initramfs: str | None = None
    overlays: list[str] = []
    applies = True
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            applies = line[1:-1].strip() in sections
            continue
        if not applies:
            continue
        if line.startswith("initramfs "):
            initramfs = line.split()[1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "dtoverlay":
            overlays.append(value.split(",")[0])
        else:
            values[key] = value
    return Settings(values, initramfs, tuple(overlays))


@dataclasses.dataclass(frozen=True)
class BootSet:
    """The files a model's firmware loads, as paths on the boot partition."""

    config: str  # config.txt or tryboot.txt: the file that decided
    prefix: str  # the os_prefix in effect ("" when none or ignored)
    kernel: str
    initramfs: str | None
    cmdline: str
    dtbs: tuple[str, ...]
    overlays: tuple[str, ...]


def boot_set(
    text: str,
    model: str,
    dtbs: tuple[str, ...],
    *,
    config: str = CONFIG,
    exists: Callable[[str], bool] | None = None,
) -> BootSet:
    """What model boots with config text (read from config). dtbs: the model's mainline DTB
    names (used with upstream_kernel=1). exists(path) tells whether a file is on the
    partition; when given, an os_prefix whose kernel or first DTB is missing is ignored, as
    the firmware does."""
    s = settings(text, model, tryboot=config == TRYBOOT)
    v = s.values
    kernel = v.get("kernel", "kernel8.img" if v.get("arm_64bit") == "1" else "kernel7.img")
    if "device_tree" in v:
        names: tuple[str, ...] = (v["device_tree"],)
    elif v.get("upstream_kernel") == "1":
        names = dtbs
    else:
        names = ()
    prefix = v.get("os_prefix", "")
    if prefix and exists is not None:
        viable = exists(prefix + kernel) and (not names or exists(prefix + names[0]))
        if not viable:
            prefix = ""
    overlay_prefix = v.get("overlay_prefix", "overlays/")
    return BootSet(
        config=config,
        prefix=prefix,
        kernel=prefix + kernel,
        initramfs=prefix + s.initramfs if s.initramfs else None,
        cmdline=prefix + v.get("cmdline", "cmdline.txt"),
        dtbs=tuple(prefix + n for n in names),
        overlays=tuple(f"{prefix}{overlay_prefix}{o}.dtbo" for o in s.overlays),
    )


def os_prefix(text: str) -> str | None:
    """The os_prefix the file sets (its first os_prefix= line), or None."""
    found = _PREFIX_LINE.search(text)
    return found.group(1) if found else None


def with_os_prefix(text: str, prefix: str) -> str:
    """text with its os_prefix= line set to prefix (the line must exist: a config without one
    is not a slot-aware config of ours)."""
    if not _PREFIX_LINE.search(text):
        raise ValueError("the firmware configuration has no os_prefix= line")
    return _PREFIX_LINE.sub(f"os_prefix={prefix}", text, count=1)
