"""Delta updates against plain files standing for the slots: which chunks the running slot
holds, and `update apply` of a download that left those out (holes filled from the slot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import CommandError
from appliance.update import bundle, delta
from appliance.update.state import State

from .conftest import CHUNK, KEY, Box, make_bundle


def _manifest(path: Path) -> bundle.Manifest:
    with path.open("rb") as fh:
        return bundle.read_manifest(fh, [KEY.verify_key])


def _seed_with(box: Box, tmp_path: Path, *, root_changed: int | None = 3) -> None:
    """The running slot a holds bundle b's root (chunk root_changed differing in one byte)
    and its kernel; its initrd.img is missing; its cmdline.txt is filled in (never the
    template)."""
    src = tmp_path / "src-b.bundle"
    root = bytearray((src / "root.img").read_bytes())
    if root_changed is not None:
        root[root_changed * CHUNK + 5] ^= 0x01
    with (box.paths.dev_dir / "mmcblk0p2").open("r+b") as fh:
        fh.write(bytes(root))
    (box.paths.boot_dir / "slot-a/vmlinuz").write_bytes((src / "vmlinuz").read_bytes())
    (box.paths.boot_dir / "slot-a/cmdline.txt").write_text(
        "console=ttyS1 root=PARTUUID=5ec7e0a1-02 ro appliance.slot=a\n"
    )


def _seed(box: Box) -> delta.Seed:
    return box.updater().seed("a")


def _wanted(plan: delta.Plan, manifest: bundle.Manifest) -> list[tuple[str, int]]:
    return [(manifest.files[c.index].name, c.n) for c in plan.fetch]


def test_only_the_chunks_the_running_slot_lacks_are_wanted(box: Box, tmp_path: Path) -> None:
    path = make_bundle(tmp_path)
    _seed_with(box, tmp_path)
    manifest = _manifest(path)
    plan = delta.plan(manifest, _seed(box))
    # root: only the changed chunk (its short last chunk is held: the partition is longer);
    # the kernel is the same; initrd.img is missing on the running side; cmdline.txt is
    # the running slot's filled-in line, never the bundle's template
    assert _wanted(plan, manifest) == [("root", 3), ("cmdline.txt", 0), ("initrd.img", 0)]
    assert plan.in_file == 0
    assert plan.in_seed == sum(f.size for f in manifest.files) - plan.fetch_bytes
    assert (
        plan.fetch_bytes == CHUNK + len("console=ttyS1 root=@ROOT@ ro appliance.slot=@SLOT@\n") + 8
    )


def test_a_seed_shorter_than_the_last_chunk_holds_nothing_of_it(box: Box, tmp_path: Path) -> None:
    path = make_bundle(tmp_path)
    _seed_with(box, tmp_path, root_changed=None)
    kernel = box.paths.boot_dir / "slot-a/vmlinuz"
    kernel.write_bytes(kernel.read_bytes()[:-1])  # its last (short) chunk lacks a byte
    manifest = _manifest(path)
    plan = delta.plan(manifest, _seed(box))
    last = len(manifest.files[3].chunks) - 1
    assert manifest.files[3].name == "vmlinuz"
    assert _wanted(plan, manifest) == [("cmdline.txt", 0), ("initrd.img", 0), ("vmlinuz", last)]


def test_without_a_seed_every_chunk_is_wanted_and_a_download_file_counts(
    box: Box, tmp_path: Path
) -> None:
    path = make_bundle(tmp_path)
    manifest = _manifest(path)
    every = delta.plan(manifest, None)
    assert every.fetch_bytes == manifest.total - manifest.payload_offset
    # the whole bundle as the download file: nothing is wanted any more
    done = delta.plan(manifest, None, have=path)
    assert done.fetch == () and done.in_file == every.fetch_bytes


def test_ranges_cover_each_piece_once_on_the_bundles_grid() -> None:
    a = delta.Chunk(0, 0, offset=100, size=50, sha256="")
    b = delta.Chunk(0, 1, offset=150, size=200, sha256="")
    assert delta.ranges((a, b), 128, head=20) == [(0, 128), (128, 128), (256, 128)]
    assert delta.ranges((), 128) == []
    with pytest.raises(ValueError, match="positive"):
        delta.ranges((a,), 0)


def _delta_download(path: Path, manifest: bundle.Manifest, plan: delta.Plan, out: Path) -> Path:
    """What the agent leaves: the bundle's full length, its head and the wanted chunks, holes
    elsewhere."""
    data = path.read_bytes()
    with out.open("wb") as fh:
        fh.truncate(len(data))
        fh.write(data[: manifest.payload_offset])
        for c in plan.fetch:
            fh.seek(c.offset)
            fh.write(data[c.offset : c.offset + c.size])
    return out


def test_apply_of_a_delta_download_fills_the_rest_from_the_running_slot(
    box: Box, tmp_path: Path
) -> None:
    path = make_bundle(tmp_path)
    _seed_with(box, tmp_path)
    manifest = _manifest(path)
    part = _delta_download(path, manifest, delta.plan(manifest, _seed(box)), tmp_path / "d.part")
    assert part.stat().st_blocks * 512 < path.stat().st_size // 2  # holes stay holes
    rec = box.updater().apply(part)
    assert rec.state is State.TRYING and rec.target == "b"
    src = tmp_path / "src-b.bundle"
    root = (src / "root.img").read_bytes()
    assert box.slot_bytes("b")[: len(root)] == root
    assert box.slot_bytes("a")[: len(root)] != root  # the seed itself is untouched
    for name in ("vmlinuz", "initrd.img"):
        assert (box.paths.boot_dir / "slot-b" / name).read_bytes() == (src / name).read_bytes()
    assert "root=PARTUUID=5ec7e0a1-03" in box.boot_text("slot-b/cmdline.txt")
    assert any("taken from the running slot" in line for line in box.lines)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("fetched", "hash mismatch in root, chunk 3"),  # a byte of a fetched chunk
        ("seed", "hash mismatch in root, chunk 1"),  # the running slot no longer holds a hole's
        ("truncated", "truncated"),
    ],
)
def test_a_damaged_delta_download_is_refused_before_anything_switches(
    box: Box, tmp_path: Path, damage: str, reason: str
) -> None:
    path = make_bundle(tmp_path)
    _seed_with(box, tmp_path)
    manifest = _manifest(path)
    part = _delta_download(path, manifest, delta.plan(manifest, _seed(box)), tmp_path / "d.part")
    if damage == "fetched":
        with part.open("r+b") as fh:
            fh.seek(manifest.offset(0, 3) + 7)
            fh.write(b"\xff")
    elif damage == "seed":
        with (box.paths.dev_dir / "mmcblk0p2").open("r+b") as fh:
            fh.seek(CHUNK + 9)
            fh.write(b"\xee")
    else:
        with part.open("r+b") as fh:
            fh.truncate(manifest.total - 1)
    with pytest.raises(CommandError) as info:
        box.updater().apply(part)
    assert reason in str(info.value) and "\n" not in str(info.value)
    rec = box.updater().store.load()
    assert rec.state is State.IDLE and rec.last_result["result"] == "refused"
    assert not (box.paths.boot_dir / "tryboot.txt").exists()
    assert box.system.reboots == []


def test_a_full_bundle_still_applies_without_touching_the_seed(box: Box, tmp_path: Path) -> None:
    """A full bundle never needs the running slot: every chunk hashes right in the file."""
    path = make_bundle(tmp_path)
    _seed_with(box, tmp_path)
    box.updater().apply(path)
    assert not any("taken from the running slot" in line for line in box.lines)
