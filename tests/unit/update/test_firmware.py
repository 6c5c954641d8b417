"""config.txt / tryboot.txt as the Pi firmware reads them, and the slot names."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.image.updatebundle import cmdline_template
from appliance.update import firmware, slots

SHIPPED = (Path(__file__).resolve().parents[3] / "image/boot/config.txt").read_text()


def test_the_shipped_config_selects_slot_a_in_its_first_sector() -> None:
    assert firmware.os_prefix(SHIPPED) == "slot-a/"
    assert SHIPPED.encode().index(b"os_prefix=slot-a/") + 17 <= 512


def test_switching_the_slot_changes_one_byte() -> None:
    other = firmware.with_os_prefix(SHIPPED, slots.prefix("b"))
    diff = [i for i, (x, y) in enumerate(zip(SHIPPED, other, strict=True)) if x != y]
    assert len(diff) == 1 and firmware.os_prefix(other) == "slot-b/"


def test_the_boot_set_is_under_the_prefix_for_each_model() -> None:
    for model, dtb in (("pi3", "bcm2837-rpi-3-b.dtb"), ("pi4", "bcm2711-rpi-4-b.dtb")):
        boot = firmware.boot_set(SHIPPED, model, (dtb,))
        assert (boot.kernel, boot.initramfs, boot.cmdline) == (
            "slot-a/vmlinuz", "slot-a/initrd.img", "slot-a/cmdline.txt",
        )  # fmt: skip
        assert boot.dtbs == (f"slot-a/{dtb}",)


def test_the_tryboot_section_applies_in_tryboot_mode_only() -> None:
    text = "[all]\nos_prefix=slot-a/\n[tryboot]\nos_prefix=slot-b/\n[all]\nkernel=k\n"
    assert firmware.boot_set(text, "pi3", ()).prefix == "slot-a/"
    assert firmware.boot_set(text, "pi3", (), config=firmware.TRYBOOT).prefix == "slot-b/"


def test_a_prefix_whose_kernel_is_missing_is_ignored() -> None:
    boot = firmware.boot_set(SHIPPED, "pi3", ("x.dtb",), exists=lambda p: "/" not in p)
    assert boot.prefix == "" and boot.kernel == "vmlinuz"


def test_a_config_without_os_prefix_cannot_be_switched() -> None:
    with pytest.raises(ValueError, match="no os_prefix"):
        firmware.with_os_prefix("[all]\nkernel=vmlinuz\n", "slot-b/")


def test_the_running_slot_comes_from_the_kernel_command_line() -> None:
    assert slots.running_slot("ro appliance.slot=b quiet") == "b"
    assert slots.running_slot("ro appliance.slot=c") is None
    assert slots.other("a") == "b" and slots.PARTITION == {"a": 2, "b": 3}


def test_a_cmdline_round_trips_through_its_template() -> None:
    template = "console=ttyS1,115200 root=@ROOT@ ro appliance.slot=@SLOT@\n"
    for slot in slots.SLOTS:
        text = slots.cmdline_for(template, slot, "5ec7e0a1")
        assert f"root=PARTUUID=5ec7e0a1-0{slots.PARTITION[slot]}" in text
        assert cmdline_template(text, slot) == template
