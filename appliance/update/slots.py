"""The card's two systems: root slots `a` and `b`, each with its boot set on the boot partition.

    partition 1  boot (FAT32)   firmware, config.txt, tryboot.txt, infraspectre.txt,
                                slot-a/ and slot-b/: kernel, initramfs, DTBs, cmdline.txt
    partition 2  slot a root (squashfs)
    partition 3  slot b root (squashfs)
    partition 4  /data (f2fs): kept across updates

A boot set lives in the folder the firmware's `os_prefix` names; its cmdline.txt names its
slot's root partition (root=PARTUUID=<disk id>-0N) and carries `appliance.slot=a|b`, which the
running system (and the agent's health record) reads from /proc/cmdline.
"""

from __future__ import annotations

SLOTS = ("a", "b")
#: root partition number of each slot
PARTITION = {"a": 2, "b": 3}
BOOT_PARTITION = 1
DATA_PARTITION = 4
#: the kernel argument naming the running slot
CMDLINE_ARG = "appliance.slot"


def prefix(slot: str) -> str:
    """The boot set's folder on the boot partition, as config.txt's os_prefix spells it."""
    check(slot)
    return f"slot-{slot}/"


def other(slot: str) -> str:
    """The slot that is not slot."""
    check(slot)
    return "b" if slot == "a" else "a"


def check(slot: str) -> str:
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r} (slots: a, b)")
    return slot


def slot_of_prefix(os_prefix: str) -> str | None:
    """The slot whose folder os_prefix names, or None."""
    for slot in SLOTS:
        if os_prefix == prefix(slot):
            return slot
    return None


def running_slot(cmdline: str) -> str | None:
    """The slot named by appliance.slot= on a kernel command line, or None."""
    for arg in cmdline.split():
        key, sep, value = arg.partition("=")
        if sep and key == CMDLINE_ARG and value in SLOTS:
            return value
    return None


def cmdline_for(template: str, slot: str, disk_id: str) -> str:
    """A boot set's cmdline.txt from the template: @ROOT@ -> PARTUUID=<disk id>-0N,
    @SLOT@ -> the slot letter."""
    check(slot)
    text = template.replace("@ROOT@", f"PARTUUID={disk_id}-{PARTITION[slot]:02d}")
    return text.replace("@SLOT@", slot)
