"""`bench update`: the counters it reads and the report it makes (the board run itself is the
command, never a timed test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli import main
from appliance.errors import CommandError
from appliance.image import updatebundle
from appliance.update import bench

from .test_image_bundle import EPOCH, _card

#: /sys/class/block/mmcblk0/stat of an emulated Pi (11 fields on older kernels, 17 on 6.1)
STAT = "  1520  3  98410  5120  240  81  3072  990  0  4520  6110  0  0  0  0  12  40"


def _stats(card: int, boot: int, a: int, b: int, data: int) -> str:
    line = "{} 0 0 0 1 0 {} 0 0 0 0"
    return "\n".join(
        f"{label} " + line.format(n, n)
        for label, n in zip(
            ("card", "boot", "slot_a", "slot_b", "data"), (card, boot, a, b, data), strict=True
        )
    )


def test_sectors_written_is_the_seventh_field() -> None:
    assert bench.sectors_written(STAT) == 3072


def test_a_line_that_is_not_a_stat_line_is_refused_in_one_line() -> None:
    with pytest.raises(CommandError, match="not a block device stat line"):
        bench.sectors_written("cat: /sys/class/block/mmcblk0p3/stat: No such file")


def test_written_bytes_are_the_differences_per_partition_in_bytes() -> None:
    before = bench.parse_stats("$ sync\n" + _stats(100, 10, 0, 0, 90))
    after = bench.parse_stats(_stats(100 + 2000, 10 + 8, 0, 1900, 90 + 92))
    assert bench.written_bytes(before, after) == {
        "card": 2000 * 512, "boot": 8 * 512, "slot_a": 0, "slot_b": 1900 * 512, "data": 92 * 512,
    }  # fmt: skip


def test_a_partition_without_counters_is_an_error() -> None:
    text = "\n".join(_stats(1, 1, 1, 1, 1).splitlines()[:-1]) + "\ndata "
    with pytest.raises(CommandError, match=r"no counters for \['data'\]"):
        bench.parse_stats(text)


def test_the_report_sets_the_update_beside_the_reflash() -> None:
    doc = bench.report(
        bundle_bytes=93_000_000, bundle_zstd_bytes=80_000_000, image_bytes=1 << 30,
        image_zstd_bytes=71_000_000,
        zstd_level=19, apply_s=151.04, reflash_s=20.0, reflash_written=1 << 30,
        update_written={"card": 190_000_000, "boot": 36_000_000, "slot_a": 0,
                        "slot_b": 152_000_000, "data": 2_000_000},
    )  # fmt: skip
    assert doc["update"]["card_written_bytes"] == 190_000_000
    assert doc["update"]["card_written_by_partition"]["slot_b"] == 152_000_000
    assert doc["update"]["write_amplification"] == round(190 / 93, 3)
    assert doc["ratio"] == {"network": round(93 / 71, 3), "card_written": round(190e6 / 2**30, 3)}
    assert doc["reflash"]["network_compression"] == "zstd -19"


def test_bench_update_without_its_image_fails_with_one_line(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    bundle = tmp_path / "b.bundle"
    bundle.write_bytes(b"x")
    assert main(["bench", "update", str(tmp_path / "none.img"), str(bundle)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no image" in err


def test_the_delta_download_is_what_the_running_slot_lacks(tmp_path: Path) -> None:
    """Card A and the bundle of a B whose root differs (its release): the box running A
    fetches the head, B's root chunk and the cmdline template; the kernel and initrd are A's."""
    main(["pki", "init-update-key", str(tmp_path / "keys")])
    pub, key = tmp_path / "keys/update.pub", tmp_path / "keys/update.key"
    card_a = _card(tmp_path / "a", {"board": "rpi", "build": EPOCH, "version": "0.1.0"}, pub)
    card_b = _card(tmp_path / "b", {"board": "rpi", "build": EPOCH + 1, "version": "0.1.1"}, pub)
    manifest = updatebundle.make(card_b, key, tmp_path / "b.bundle")
    got = bench.delta_download(card_a, tmp_path / "b.bundle", 4096, tmp_path / "w1")
    names = [f.name for f in manifest.files]
    assert names == ["root", "cmdline.txt", "initrd.img", "vmlinuz"]
    assert (got["chunks"], got["chunks_total"]) == (2, 4)
    sizes = {f.name: f.size for f in manifest.files}
    assert got["held_bytes"] == sizes["initrd.img"] + sizes["vmlinuz"]
    assert manifest.payload_offset + sizes["root"] <= got["bytes"] < manifest.total
    # the box already running B's system lacks only the cmdline template
    same = bench.delta_download(card_b, tmp_path / "b.bundle", 4096, tmp_path / "w2")
    assert (same["chunks"], same["held_bytes"]) == (1, sizes["root"] + sizes["initrd.img"]
                                                     + sizes["vmlinuz"])  # fmt: skip
    doc = bench.network_report(
        bundle_bytes=manifest.total, image_zstd_bytes=10 * manifest.total, zstd_level=19,
        delta=got,
    )  # fmt: skip
    assert doc["update"]["network_bytes_delta"] == got["bytes"]
    assert doc["update"]["delta_chunks"] == "2 of 4"


def test_bench_update_refuses_a_bad_piece_size_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a.img", "b.bundle"):
        (tmp_path / name).write_bytes(b"x")
    args = ["bench", "update", str(tmp_path / "a.img"), str(tmp_path / "b.bundle")]
    assert main([*args, "--piece-bytes", "12"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--piece-bytes" in err
