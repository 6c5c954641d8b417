"""`image flash`: the target checks on a fake sysfs, and a real write + verify to a file."""

import hashlib
import os
from pathlib import Path

import pytest
from testsupport.card_helpers import write_card

from appliance.cli import main
from appliance.errors import CommandError
from appliance.image import flash

MIB = 1 << 20


def _fake_system(
    tmp_path: Path, *, removable: str = "1", sectors: int = 512 * 2048, mounts: str = "",
    swaps: str = "",
) -> flash.System:  # fmt: skip
    """A sysfs with one disk sdx (8:16) and its partitions sdx1 (8:17), sdx2 (8:18)."""
    sys_root = tmp_path / "sys"
    disk = sys_root / "devices/usb/host0/block/sdx"
    for n in (1, 2):
        (disk / f"sdx{n}").mkdir(parents=True)
        (disk / f"sdx{n}/partition").write_text(str(n))
        (disk / f"sdx{n}/size").write_text("1000")
    (disk / "removable").write_text(removable)
    (disk / "size").write_text(str(sectors))
    (sys_root / "dev/block").mkdir(parents=True)
    os.symlink(disk, sys_root / "dev/block/8:16")
    os.symlink(disk / "sdx1", sys_root / "dev/block/8:17")
    (tmp_path / "mounts").write_text(mounts)
    (tmp_path / "swaps").write_text(swaps)
    return flash.System(sys_root, tmp_path / "mounts", tmp_path / "swaps")


def test_a_removable_unused_card_large_enough_is_accepted(tmp_path: Path) -> None:
    flash.check_block_device(256 * MIB, "8:16", "/dev/sdx", _fake_system(tmp_path))


def test_a_fixed_disk_is_refused(tmp_path: Path) -> None:
    system = _fake_system(tmp_path, removable="0")
    with pytest.raises(CommandError, match="not a removable device"):
        flash.check_block_device(MIB, "8:16", "/dev/sdx", system)


def test_a_partition_is_refused_naming_the_whole_card(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match=r"partition sdx1: give the whole card \(sdx\)"):
        flash.check_block_device(MIB, "8:17", "/dev/sdx1", _fake_system(tmp_path))


def test_a_card_with_a_mounted_partition_is_refused(tmp_path: Path) -> None:
    system = _fake_system(tmp_path, mounts="/dev/sdx2 /media/card vfat rw 0 0\n")
    with pytest.raises(CommandError, match=r"in use \(/dev/sdx2 mounted\)"):
        flash.check_block_device(MIB, "8:16", "/dev/sdx", system)


def test_a_card_used_as_swap_is_refused(tmp_path: Path) -> None:
    swaps = "Filename Type Size Used Priority\n/dev/sdx1 partition 1000 0 -2\n"
    with pytest.raises(CommandError, match="sdx1 swap"):
        flash.check_block_device(MIB, "8:16", "/dev/sdx", _fake_system(tmp_path, swaps=swaps))


def test_a_card_smaller_than_the_image_is_refused(tmp_path: Path) -> None:
    system = _fake_system(tmp_path, sectors=128 * 2048)
    with pytest.raises(CommandError, match="holds 128 MiB, the image needs 256 MiB"):
        flash.check_block_device(256 * MIB, "8:16", "/dev/sdx", system)


def test_a_regular_file_is_refused_without_force(tmp_path: Path) -> None:
    target = tmp_path / "card.img"
    target.write_bytes(b"old")
    with pytest.raises(CommandError, match="pass --force"):
        flash.check_target(MIB, target, force=False)
    assert target.read_bytes() == b"old"


def test_a_character_device_is_refused_even_with_force() -> None:
    with pytest.raises(CommandError, match="neither a block device nor a regular file"):
        flash.check_target(MIB, Path("/dev/null"), force=True)


def test_flash_to_a_file_with_force_writes_and_verifies(tmp_path: Path) -> None:
    image = write_card(tmp_path / "in.img", MIB)
    with image.open("ab") as fh:
        fh.write(os.urandom(3 * MIB) + bytes(2 * MIB) + b"tail")
    target = tmp_path / "out.img"
    target.write_bytes(b"x" * (8 * MIB))  # longer than the image: truncated
    digest = flash.flash(image, target, force=True, progress=None)
    assert target.read_bytes() == image.read_bytes()
    assert digest == hashlib.sha256(image.read_bytes()).hexdigest()


def test_flash_to_a_new_path_with_force_creates_it(tmp_path: Path) -> None:
    image = write_card(tmp_path / "in.img", 4096 * 4)
    flash.flash(image, tmp_path / "new.img", force=True, progress=None)
    assert (tmp_path / "new.img").read_bytes() == image.read_bytes()


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + bytes(4096), "no MBR"),  # a pcap
        (None, "MBR disk id 0x12345678"),
        ("type", "partition 1 is not a FAT boot partition"),
        ("label", "boot partition is labelled 'NO NAME'"),
    ],
)
def test_flash_refuses_a_file_that_is_not_our_card_image_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], header: object, reason: str
) -> None:
    image = tmp_path / "in.img"
    if isinstance(header, bytes):
        image.write_bytes(header)
    elif header == "type":
        write_card(image, part_type=0x83)
    elif header == "label":
        write_card(image, label=b"NO NAME")
    else:
        write_card(image, disk_id=0x12345678)
    target = tmp_path / "out.img"
    target.write_bytes(b"old")
    assert main(["image", "flash", str(image), str(target), "--force"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and reason in err and "not an InfraSpectre card image" in err
    assert target.read_bytes() == b"old"


@pytest.mark.parametrize(
    "setting",
    [["--bus", "nohost"], ["--agent-id", "a;reboot"], ["--mirror", "eth1,,eth2"]],
)
def test_flash_checks_every_setting_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: list[str]
) -> None:
    image = write_card(tmp_path / "in.img")
    target = tmp_path / "out.img"
    assert main(["image", "flash", str(image), str(target), "--force", *setting]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not valid" in err
    assert not target.exists()


def test_configure_refuses_a_foreign_disk_image_and_leaves_it_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, kw in (
        ("other-id.img", {"disk_id": 0xDEADBEEF}),
        ("other-label.img", {"label": b"EFI"}),
    ):
        card = write_card(tmp_path / name, **kw)  # type: ignore[arg-type]
        before = card.read_bytes()
        assert main(["image", "configure", str(card), "--agent-id", "branch-1"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not an InfraSpectre card image" in err
        assert card.read_bytes() == before
