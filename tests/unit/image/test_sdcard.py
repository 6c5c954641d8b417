"""Card layout: a power of two, aligned partitions, room for the root and the data."""

import itertools
import subprocess

import pytest

from appliance.errors import CommandError
from appliance.image import sdcard


@pytest.mark.parametrize("root_bytes", [1, 57_344_000, 64 << 20, sdcard.SLOT_SIZE])
def test_layout_is_a_power_of_two_with_aligned_partitions(root_bytes: int) -> None:
    layout = sdcard.plan(root_bytes)
    assert layout.total & (layout.total - 1) == 0
    parts = layout.partitions
    assert [kind for _, _, kind in parts] == ["c", "83", "83", "83"]
    for start, size, _ in parts:
        assert start % sdcard.ALIGN == 0 and size % sdcard.ALIGN == 0
    # boot | slot a | slot b | data, back to back to the end of the card
    for (start, size, _), (following, _, _) in itertools.pairwise(parts):
        assert start + size == following
    assert layout.data_start + layout.data_size == layout.total
    assert layout.slot_size >= root_bytes
    assert layout.data_size >= sdcard.MIN_DATA_SIZE


def test_todays_system_fits_in_a_one_gib_card_with_headroom() -> None:
    # measured: root squashfs 55.1 MiB, one boot set 35.4 MB, firmware 5.3 MB (docs/UPDATE.md)
    layout = sdcard.plan(int(55.1 * sdcard.MIB), int(2 * 35.4e6 + 5.3e6))
    assert layout.total == 1 << 30
    assert layout.slot_size >= 4 * 55.1 * sdcard.MIB
    assert layout.boot_size >= 2 * (2 * 35.4e6) + 5.3e6


def test_a_root_larger_than_its_slot_is_refused_with_the_sizes() -> None:
    with pytest.raises(CommandError, match=r"root \(\d+ MiB\) exceeds a root slot \(256 MiB\)"):
        sdcard.plan(sdcard.SLOT_SIZE + 1)
    with pytest.raises(CommandError, match="exceed the boot partition"):
        sdcard.plan(1, sdcard.BOOT_SIZE + 1)


def test_root_squashfs_builds_with_source_date_epoch_in_the_environment(
    tmp_path,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    """mksquashfs refuses SOURCE_DATE_EPOCH together with -mkfs-time/-all-time; the build
    takes its time from the variable (build.source_date_epoch) and passes it explicitly."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("box\n")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "root.sqfs"
    sdcard.make_root(tree, out, 1_600_000_000, ["-comp", "gzip"])
    listing = subprocess.run(
        ["unsquashfs", "-lls", "-UTC", str(out)], capture_output=True, text=True, check=True
    ).stdout
    assert "2020-09-13 12:26" in listing  # 1_600_000_000: the epoch given, not the variable's


def test_root_squashfs_command_carries_the_time_and_not_the_variable(
    tmp_path,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    seen: dict[str, object] = {}

    def fake_run(cmd, what, env=None):  # type: ignore[no-untyped-def]
        seen.update(cmd=cmd, env=env)
        return ""

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    monkeypatch.setattr(sdcard, "run", fake_run)
    sdcard.make_root(tmp_path, tmp_path / "out", 42, [])
    cmd = seen["cmd"]
    assert isinstance(cmd, list) and cmd[cmd.index("-all-time") + 1] == "42"
    env = seen["env"]
    assert isinstance(env, dict) and "SOURCE_DATE_EPOCH" not in env and "PATH" in env
