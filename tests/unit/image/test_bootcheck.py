"""The boot partition check: every file a Pi 3 or Pi 4 firmware will load."""

from pathlib import Path

from appliance.image import bootcheck

CONFIG = (Path(__file__).resolve().parents[3] / "image" / "boot" / "config.txt").read_text()
FIRMWARE = {"bootcode.bin", "start.elf", "fixup.dat", "start4.elf", "fixup4.dat"}
BOOT_SET = {
    "vmlinuz", "initrd.img", "cmdline.txt", "bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb",
    "bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb",
}  # fmt: skip
#: the shipped config.txt selects slot a's boot set (os_prefix=slot-a/)
COMPLETE = FIRMWARE | {f"slot-a/{name}" for name in BOOT_SET}


def test_the_shipped_config_is_satisfied_by_a_complete_partition() -> None:
    assert bootcheck.missing(COMPLETE, CONFIG, "root=PARTUUID=5ec7e0a1-02") == []


def test_a_missing_pi4_firmware_file_is_reported_for_the_pi4_only() -> None:
    assert bootcheck.missing(COMPLETE - {"start4.elf"}, CONFIG, "") == ["pi4: start4.elf"]


def test_names_compare_case_insensitively_as_on_fat() -> None:
    upper = {n.upper() for n in COMPLETE}
    assert bootcheck.missing(upper, CONFIG, "") == []


def test_a_model_section_applies_to_that_model_only() -> None:
    config = "[all]\narm_64bit=1\nkernel=vmlinuz\n[pi4]\nkernel=vmlinuz-pi4\n[all]\n"
    assert "vmlinuz-pi4" in bootcheck.needed(config, "", "pi4")
    assert "vmlinuz-pi4" not in bootcheck.needed(config, "", "pi3")
    assert "vmlinuz" in bootcheck.needed(config, "", "pi3")


def test_defaults_apply_when_config_names_nothing() -> None:
    need = bootcheck.needed("arm_64bit=1\n", "", "pi3")
    assert {"kernel8.img", "cmdline.txt", "start.elf", "fixup.dat", "bootcode.bin"} <= need


def test_overlays_initramfs_device_tree_and_initrd_argument_are_needed() -> None:
    config = "initramfs boot.cpio followkernel\ndtoverlay=disable-bt\ndevice_tree=my.dtb\n"
    need = bootcheck.needed(config, "initrd=/extra.img", "pi4")
    assert {"boot.cpio", "overlays/disable-bt.dtbo", "my.dtb", "extra.img"} <= need
    assert "bcm2711-rpi-4-b.dtb" not in need


def test_os_prefix_applies_to_the_boot_set_and_not_to_the_firmware() -> None:
    need = bootcheck.needed(CONFIG.replace("slot-a/", "slot-b/"), "", "pi3")
    assert {"slot-b/vmlinuz", "slot-b/initrd.img", "slot-b/cmdline.txt"} <= need
    assert "slot-b/bcm2837-rpi-3-b.dtb" in need
    assert {"start.elf", "bootcode.bin"} <= need
    assert bootcheck.missing(FIRMWARE | BOOT_SET, CONFIG, "") != []
