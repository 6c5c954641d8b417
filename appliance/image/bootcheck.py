"""What a real Raspberry Pi's firmware loads from the boot partition, checked before shipping.

QEMU boots the kernel directly and never runs the firmware, so nothing in the board tests
would notice a config.txt that names a missing file. This check reads config.txt the way the
firmware does for each model the image supports ([all] plus the model's own section, later
lines winning) and lists every file that model will look for:

- the firmware itself: bootcode.bin (Pi 3; the Pi 4 boots from EEPROM), start_file and
  fixup_file (default start.elf/fixup.dat on the Pi 3, start4.elf/fixup4.dat on the Pi 4);
- kernel= (default kernel8.img with arm_64bit=1), `initramfs NAME`, cmdline= (default
  cmdline.txt), device_tree= or, with upstream_kernel=1, the model's mainline DTB names, all
  under os_prefix (the slot's boot set folder);
- every dtoverlay= as overlays/NAME.dtbo (under os_prefix too);
- on the kernel command line, initrd= if present.
"""

from __future__ import annotations

from collections.abc import Iterable

from appliance.update import firmware

#: The models one rpi image boots, with their firmware files and mainline DTBs.
MODELS: dict[str, dict[str, tuple[str, ...]]] = {
    "pi3": {
        "boot": ("bootcode.bin",),
        "start": ("start.elf", "fixup.dat"),
        "dtbs": ("bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb"),
    },
    "pi4": {
        "boot": (),
        "start": ("start4.elf", "fixup4.dat"),
        "dtbs": ("bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb"),
    },
}


def needed(config_txt: str, cmdline: str, model: str) -> set[str]:
    """Every file model's firmware will load from the boot partition (operating-system files
    under config.txt's os_prefix: appliance.update.firmware)."""
    spec = MODELS[model]
    values = firmware.settings(config_txt, model).values
    boot = firmware.boot_set(config_txt, model, spec["dtbs"])
    need = set(spec["boot"])
    start, fixup = spec["start"]
    need.add(values.get("start_file", start))
    need.add(values.get("fixup_file", fixup))
    need.update([boot.kernel, boot.cmdline, *boot.dtbs, *boot.overlays])
    if boot.initramfs:
        need.add(boot.initramfs)
    for arg in cmdline.split():
        if arg.startswith("initrd="):
            need.add(boot.prefix + arg.split("=", 1)[1].split(",")[0].lstrip("/"))
    return need


def missing(files: Iterable[str], config_txt: str, cmdline: str) -> list[str]:
    """`model: file` for each file a supported model needs that files lacks (case-insensitive:
    FAT), sorted; empty when the partition is complete."""
    present = {f.lower() for f in files}
    return sorted(
        f"{model}: {name}"
        for model in MODELS
        for name in needed(config_txt, cmdline, model)
        if name.lower() not in present
    )
