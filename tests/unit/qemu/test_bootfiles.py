"""The harness plays the Pi firmware: config.txt or, after a tryboot reboot, tryboot.txt."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from appliance.errors import CommandError
from appliance.qemu import boards, bootfiles
from appliance.qemu.machine import Machine

CONFIG = "[all]\nos_prefix=slot-a/\narm_64bit=1\nupstream_kernel=1\nkernel=vmlinuz\n"
CONFIG += "initramfs initrd.img followkernel\ncmdline=cmdline.txt\n"
DTB = "bcm2837-rpi-3-b.dtb"


def _card(tmp_path: Path, files: dict[str, str]) -> Path:
    """An MBR card whose partition 1 is a FAT holding files (name -> text)."""
    fat = tmp_path / "boot.vfat"
    subprocess.run(["mkfs.fat", "-C", "-F", "32", str(fat), str(40 * 1024)], check=True,
                   capture_output=True)  # fmt: skip
    for name, text in files.items():
        src = tmp_path / "src" / name
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(text)
        if "/" in name:
            subprocess.run(["mmd", "-D", "s", "-i", str(fat), "::/" + name.split("/")[0]],
                           capture_output=True)  # fmt: skip
        subprocess.run(["mcopy", "-i", str(fat), str(src), "::/" + name], check=True)
    card = tmp_path / "card.img"
    with card.open("wb") as fh:
        fh.truncate(64 << 20)
    table = "label: dos\nstart=2048, size=81920, type=c\n"
    subprocess.run(["sfdisk", "-q", str(card)], input=table, text=True, check=True)
    subprocess.run(["dd", f"if={fat}", f"of={card}", "bs=1M", "seek=1", "conv=notrunc"],
                   check=True, capture_output=True)  # fmt: skip
    return card


def _slot(letter: str) -> dict[str, str]:
    return {
        f"slot-{letter}/vmlinuz": f"kernel {letter}",
        f"slot-{letter}/initrd.img": f"initrd {letter}",
        f"slot-{letter}/cmdline.txt": f"root=PARTUUID=x-0{2 if letter == 'a' else 3} "
        f"appliance.slot={letter}",
        f"slot-{letter}/{DTB}": f"dtb {letter}",
    }


@pytest.fixture
def card(tmp_path: Path) -> Path:
    tryboot = CONFIG.replace("slot-a/", "slot-b/")
    return _card(tmp_path, {"config.txt": CONFIG, "tryboot.txt": tryboot, **_slot("a"),
                            **_slot("b")})  # fmt: skip


def test_config_txt_decides_without_the_tryboot_flag(card: Path, tmp_path: Path) -> None:
    boot = bootfiles.extract(card, tmp_path / "out", DTB)
    assert (boot.config, boot.prefix) == ("config.txt", "slot-a/")
    assert boot.kernel.read_text() == "kernel a" and boot.initrd.read_text() == "initrd a"
    assert boot.cmdline.endswith("appliance.slot=a")
    assert boot.dtb is not None and boot.dtb.read_text() == "dtb a"


def test_tryboot_txt_decides_with_the_flag(card: Path, tmp_path: Path) -> None:
    boot = bootfiles.extract(card, tmp_path / "out", DTB, tryboot=True)
    assert (boot.config, boot.prefix) == ("tryboot.txt", "slot-b/")
    assert boot.kernel.read_text() == "kernel b" and boot.cmdline.endswith("appliance.slot=b")


def test_without_tryboot_txt_the_flag_falls_back_to_config_txt(tmp_path: Path) -> None:
    card = _card(tmp_path, {"config.txt": CONFIG, **_slot("a")})
    assert bootfiles.extract(card, tmp_path / "o", DTB, tryboot=True).config == "config.txt"


def test_a_prefix_without_its_kernel_is_ignored_as_the_firmware_does(tmp_path: Path) -> None:
    files = {"config.txt": CONFIG.replace("slot-a/", "slot-c/"), "vmlinuz": "top kernel",
             "initrd.img": "top", "cmdline.txt": "top", DTB: "top dtb"}  # fmt: skip
    boot = bootfiles.extract(_card(tmp_path, files), tmp_path / "o", DTB)
    assert boot.prefix == "" and boot.kernel.read_text() == "top kernel"


def test_a_card_without_config_txt_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match=r"no config\.txt"):
        bootfiles.extract(_card(tmp_path, _slot("a")), tmp_path / "o", DTB)


def test_only_a_tryboot_reboot_sets_the_flag_and_the_next_power_on_consumes_it(
    card: Path, tmp_path: Path
) -> None:
    machine = Machine(boards.load("raspi3b"), card, tmp_path / "m")
    machine.workdir.mkdir()
    log = machine.console_log
    for text, flag in [
        ("rcK: ...\nreboot: Restarting system with command '0 tryboot'\n", True),
        ("reboot: Restarting system\n", False),
        ("Kernel panic - not syncing\n", False),
    ]:
        log.write_text(text)
        machine._console = _Closable()  # type: ignore[assignment]
        machine._off()
        assert machine.tryboot_pending is flag
    machine.tryboot_pending = True
    assert machine.choose_boot().config == "tryboot.txt"
    assert machine.tryboot_pending is False
    assert machine.choose_boot().config == "config.txt"  # a reset during the trial
    assert machine.boot_choices == [("tryboot.txt", "slot-b/"), ("config.txt", "slot-a/")]


class _Closable:
    def close(self) -> None:
        pass
