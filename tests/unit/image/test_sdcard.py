"""Card layout: a power of two, aligned partitions, room for the root and the data."""

import itertools
import random
import subprocess
from pathlib import Path

import pytest

from appliance.errors import CommandError
from appliance.image import sdcard

EPOCH = 1_795_737_600


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


def _release_tree(tree: Path) -> Path:
    """A root like ours in miniature: a base (big files and many small ones, which mksquashfs
    packs into fragments), the appliance package and its release file; compressible, like a
    real root (a block that does not compress is stored as it is and shifts nothing)."""
    rnd = random.Random(13)
    words = [rnd.randbytes(rnd.randint(2, 9)).hex().encode() for _ in range(4000)]

    def text(size: int) -> bytes:
        return b" ".join(rnd.choices(words, k=size // 9))[:size]

    for n in range(24):  # big files before and after the appliance's (usr/local) in name order
        path = tree / ("usr/lib/base" if n % 2 else "usr/share/zoneinfo") / f"lib{n:02d}.so"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text(100_000))
    for n in range(100):
        path = tree / f"usr/share/doc/pkg{n:03d}/copyright"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text(1000))
    app = tree / "usr/local/lib/python3.11/dist-packages/appliance"
    for n in range(10):
        (app / f"mod{n:02d}").mkdir(parents=True, exist_ok=True)
        (app / f"mod{n:02d}/core.py").write_bytes(text(3000))
    info = tree / "usr/local/lib/python3.11/dist-packages/infraspectre-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Name: infraspectre\nVersion: 0.1.0\n")
    (tree / "etc/appliance").mkdir(parents=True)
    (tree / "etc/appliance/release").write_text('{"build": 1000, "version": "0.1.0"}\n')
    return tree


def _differing_chunks(a: Path, b: Path, chunk: int = 16 << 10) -> tuple[list[int], int]:
    x, y = a.read_bytes(), b.read_bytes()
    n = max(-(-len(x) // chunk), -(-len(y) // chunk))
    return [
        i for i in range(n) if x[i * chunk : (i + 1) * chunk] != y[i * chunk : (i + 1) * chunk]
    ], n


@pytest.mark.parametrize(
    ("change", "ordered"), [("release", True), ("one .py", True), ("release", False)]
)
def test_what_changes_between_releases_lands_in_the_squashfs_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, ordered: bool
) -> None:
    """Two roots through the build's own make_root: a changed release file or appliance
    module changes the superblock (chunk 0) and the last chunks only; without the order
    (CHANGES_LAST emptied) the change spreads to every chunk after the change point, which is
    what makes the ordered result worth asserting. The same tree packed twice is the same
    bytes (the order keeps the build reproducible)."""
    if not ordered:
        monkeypatch.setattr(sdcard, "CHANGES_LAST", ())
    tree = _release_tree(tmp_path / "tree")
    a, b = tmp_path / "a.sqfs", tmp_path / "b.sqfs"
    options = ["-comp", "gzip", "-Xcompression-level", "1", "-b", "32K"]
    sdcard.make_root(tree, a, EPOCH, options)
    if change == "release":
        (tree / "etc/appliance/release").write_text('{"build": 1001, "version": "0.2.0rc1"}\n')
    else:
        mod = tree / "usr/local/lib/python3.11/dist-packages/appliance/mod07/core.py"
        mod.write_bytes(mod.read_bytes() + b"\n# a one-line fix\n")
    sdcard.make_root(tree, b, EPOCH, options)
    again = tmp_path / "again.sqfs"
    if change == "release":
        (tree / "etc/appliance/release").write_text('{"build": 1000, "version": "0.1.0"}\n')
        sdcard.make_root(tree, again, EPOCH, options)
        assert again.read_bytes() == a.read_bytes()
    differ, total = _differing_chunks(a, b)
    assert total >= 40
    tail = [i for i in differ if i != 0]
    if ordered:
        assert tail and min(tail) >= total - 3, (differ, total)
    else:
        assert len(tail) > total // 4, (differ, total)
