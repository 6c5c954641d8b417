"""`image configure` and `image flash` through the command line, on cards in files and on a
loop device (root)."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.image import sdcard, settings

MIB = 1 << 20


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture
def card(tmp_path: Path) -> Path:
    """A 64 MiB card with our MBR disk id and a FAT32 partition 1 labelled BOOT at 1 MiB."""
    path = tmp_path / "card.img"
    with path.open("wb") as fh:
        fh.truncate(64 * MIB)
    table = f"label: dos\nlabel-id: 0x{sdcard.DISK_ID:08x}\nstart=2048, type=c\n"
    subprocess.run(["sfdisk", "-q", str(path)], input=table, text=True, check=True)
    subprocess.run(
        ["mkfs.fat", "-F", "32", "-n", "BOOT", "--offset", "2048", str(path), str(63 * 1024)],
        capture_output=True, check=True,
    )  # fmt: skip
    return path


def test_configure_refuses_a_card_of_another_system(tmp_path: Path) -> None:
    """A real FAT32 card made by the usual tools, with another disk id and label."""
    path = tmp_path / "other.img"
    with path.open("wb") as fh:
        fh.truncate(64 * MIB)
    subprocess.run(["sfdisk", "-q", str(path)], input="start=2048, type=c\n", text=True, check=True)
    subprocess.run(
        ["mkfs.fat", "-F", "32", "--offset", "2048", str(path), str(63 * 1024)],
        capture_output=True, check=True,
    )  # fmt: skip
    before = path.read_bytes()
    done = cli("image", "configure", str(path), "--agent-id", "branch-042")
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and "not an InfraSpectre card" in done.stderr
    assert path.read_bytes() == before


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    backing = tmp_path / "loop.img"
    with backing.open("wb") as fh:
        fh.truncate(300 * MIB)
    dev = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_configure_writes_settings_the_device_reads(card: Path) -> None:
    done = cli("image", "configure", str(card), "--agent-id", "branch-042",
               "--bus", "192.0.2.10:50051")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "agent_id=branch-042" in done.stdout
    assert settings.read(card) == {"agent_id": "branch-042", "bus": "192.0.2.10:50051"}


def test_configure_merges_and_unsets(card: Path) -> None:
    cli("image", "configure", str(card), "--agent-id", "a", "--bus", "192.0.2.10:50051")
    done = cli("image", "configure", str(card), "--unset", "bus", "--mirror", "eth1")
    assert done.returncode == 0, done.stderr
    assert settings.read(card) == {"agent_id": "a", "mirror": "eth1"}


def test_configure_refuses_a_bad_value_in_one_line_and_changes_nothing(card: Path) -> None:
    cli("image", "configure", str(card), "--agent-id", "a")
    done = cli("image", "configure", str(card), "--agent-id", "a;reboot")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["infraspectre: agent_id: 'a;reboot' is not valid"]
    assert settings.read(card) == {"agent_id": "a"}


def test_flash_to_a_file_needs_force_then_writes_verifies_and_configures(
    card: Path, tmp_path: Path
) -> None:
    target = tmp_path / "sd.img"
    refused = cli("image", "flash", str(card), str(target))
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert not target.exists()
    done = cli("image", "flash", str(card), str(target), "--force", "--agent-id", "branch-7")
    assert done.returncode == 0, done.stderr
    assert "written and verified" in done.stdout
    assert settings.read(target) == {"agent_id": "branch-7"}
    assert settings.read(card) == {}


def test_flash_refuses_a_loop_device_as_not_removable(card: Path, loop_device: str) -> None:
    with open(loop_device, "rb") as fh:
        before = fh.read(MIB)
    done = cli("image", "flash", str(card), loop_device)
    assert done.returncode == 1
    assert "not a removable device" in done.stderr
    with open(loop_device, "rb") as fh:
        assert fh.read(MIB) == before
