"""Emulated-board definitions and the QEMU command line they produce."""

from pathlib import Path

import pytest

from appliance.errors import CommandError
from appliance.qemu import boards
from appliance.qemu.bootfiles import BootFiles, board_cmdline
from appliance.qemu.machine import Mirror, qemu_command

BOOT = BootFiles(
    kernel=Path("/b/vmlinuz"),
    initrd=Path("/b/initrd.img"),
    cmdline="console=tty1 console=ttyS1,115200 root=PARTUUID=5ec7e0a1-02 ro panic=10",
    dtb=Path("/b/bcm2837-rpi-3-b.dtb"),
)


def _after(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


@pytest.mark.parametrize("name", boards.names())
def test_every_board_loads(name: str) -> None:
    assert boards.load(name).name == name


def test_raspi3b_quirks_dtb_1g_four_cpus_and_console_on_the_second_serial() -> None:
    cmd = qemu_command(boards.load("raspi3b"), BOOT, Path("/c.img"), serial="tcp:x")
    assert cmd[cmd.index("-m") + 1] == "1G" and cmd[cmd.index("-smp") + 1] == "4"
    assert _after(cmd, "-dtb") == ["/b/bcm2837-rpi-3-b.dtb"]
    assert _after(cmd, "-serial") == ["null", "tcp:x"]
    assert "console=ttyS1,115200" in _after(cmd, "-append")[0]


def test_virt_boots_without_a_dtb_on_its_pl011_console() -> None:
    cmd = qemu_command(boards.load("virt"), BOOT, Path("/c.img"), serial="tcp:x")
    assert "-dtb" not in cmd
    assert _after(cmd, "-serial") == ["tcp:x"]
    assert "console=ttyAMA0" in _after(cmd, "-append")[0]


@pytest.mark.parametrize("name", boards.names())
def test_networking_is_explicit_restricted_and_forwards_only_to_the_host_port(name: str) -> None:
    cmd = qemu_command(
        boards.load(name), BOOT, Path("/c.img"), serial="tcp:x", uplink_port=4242,
        mirror=Mirror(5000, 5001),
    )  # fmt: skip
    assert cmd.index("-nic") < cmd.index("-netdev") and _after(cmd, "-nic") == ["none"]
    uplink, mirror = _after(cmd, "-netdev")
    assert uplink == (
        "user,id=up,restrict=on,guestfwd=tcp:10.0.2.100:50051-cmd:socat STDIO TCP:127.0.0.1:4242"
    )
    assert mirror == "socket,id=mirror,udp=127.0.0.1:5000,localaddr=127.0.0.1:5001"
    assert "-no-reboot" in cmd
    assert "infraspectre.mirror=" in _after(cmd, "-append")[0]


def test_without_a_port_the_uplink_has_no_way_out() -> None:
    cmd = qemu_command(boards.load("virt"), BOOT, Path("/c.img"), serial="tcp:x")
    assert _after(cmd, "-netdev") == ["user,id=up,restrict=on"]


def test_snapshot_keeps_the_card_unchanged() -> None:
    cmd = qemu_command(boards.load("virt"), BOOT, Path("/c.img"), serial="s", snapshot=True)
    assert any(a.startswith("file=/c.img,snapshot=on,") for a in cmd)


def test_the_cards_console_is_replaced_and_a_panic_ends_qemu() -> None:
    line = board_cmdline(BOOT.cmdline, "ttyAMA0", ["infraspectre.uplink=eth0"])
    assert line == (
        "root=PARTUUID=5ec7e0a1-02 ro console=ttyAMA0 panic=-1 infraspectre.uplink=eth0"
    )


def test_an_unknown_key_in_a_board_file_is_named(tmp_path: Path) -> None:
    text = (boards.BOARDS_DIR / "virt.toml").read_text() + 'gpu = "yes"\n'
    (tmp_path / "odd.toml").write_text(text)
    with pytest.raises(CommandError, match=r"odd.toml: unknown key gpu"):
        boards.load("odd", tmp_path)


def test_raspi4b_runs_on_qemu10_with_an_emulation_only_dtb() -> None:
    board = boards.load("raspi4b")
    assert board.qemu == "qemu10" and board.dtb == "bcm2711-rpi-4-b.dtb" and board.dtb_fixups
    assert "/soc/mmc@7e300000 mmc-pwrseq" in board.dtb_delete
    cmd = qemu_command(board, BOOT, Path("/c.img"), serial="tcp:x")
    assert "clk_ignore_unused" in _after(cmd, "-append")[0]
    # the PL011 (QEMU's first serial), freed from the Bluetooth node in the emulation copy
    assert _after(cmd, "-serial") == ["tcp:x"]
    assert "console=ttyAMA0,115200" in _after(cmd, "-append")[0]
    assert "/soc/serial@7e201000/bluetooth" in board.dtb_disable
    assert "-device" not in cmd  # no NIC: QEMU's raspi4b models neither PCIe nor GENET


def test_a_board_with_an_unknown_qemu_is_refused(tmp_path: Path) -> None:
    text = (boards.BOARDS_DIR / "virt.toml").read_text() + 'qemu = "qemu9"\n'
    (tmp_path / "odd.toml").write_text(text)
    with pytest.raises(CommandError, match=r"odd.toml: qemu must be one of system, qemu10"):
        boards.load("odd", tmp_path)


def test_a_malformed_dtb_delete_entry_is_named(tmp_path: Path) -> None:
    text = (boards.BOARDS_DIR / "virt.toml").read_text() + 'dtb_delete = ["/soc"]\n'
    (tmp_path / "odd.toml").write_text(text)
    with pytest.raises(CommandError, match=r"dtb_delete entry '/soc' is not 'NODE PROPERTY'"):
        boards.load("odd", tmp_path)
