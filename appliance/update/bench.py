"""`infraspectre bench update`: what an A/B update costs, beside a full reflash of the card.

One run, both sides measured on this machine:

- the update: a copy of IMAGE with BUNDLE on its /data boots on the emulated board; in the
  guest, `infraspectre update apply BUNDLE --no-reboot --allow-downgrade` verifies, writes the
  inactive slot and its boot set, reads them back and writes tryboot.txt (the bench measures
  the write, not the version policy: the same build may be applied). Measured: its wall time
  in the guest, and what the guest's SD card was asked to write, from the kernel's own
  counters (/sys/class/block/mmcblk0/stat, 512-byte sectors, per partition too): the wear, from the
  device's side of the block layer, as FIELD-NOTES advises (not /proc/self/io).
- the network: the bundle's size (what a box downloads from a file) against the card image
  compressed with zstd (what a reflash downloads); the bundle compressed the same way, what a
  compressed transfer would move (the bundle's kernel Image is stored uncompressed); and the
  delta download through the bus: what a box running IMAGE fetches of BUNDLE, computed on the
  host by the agent's own plan (appliance.update.delta: the head, and each chunk the running
  slot does not hold, in pieces of --piece-bytes on the bundle's grid). `--network-only`
  reports this side alone (no guest, no reflash).
- the reflash: `image flash IMAGE FILE --force` on the host (write, fsync, read back), its
  time and the bytes it made the target hold (allocated blocks: a reflash writes every byte
  of the card image, zeros included).

The trial boot and the commit are not in the guest figure: the commit rewrites one sector of
config.txt and the update's state file (docs/UPDATE.md), a trial boot writes what any boot
writes.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.errors import CommandError

#: the card's partitions: boot, slot a, slot b, /data
PARTITIONS = {"boot": 1, "slot_a": 2, "slot_b": 3, "data": 4}
#: where the prepared card holds the bundle
GUEST_BUNDLE = "/data/bench/update.bundle"
SECTOR = 512


def register(sub: Any) -> None:
    """Add `bench update`."""
    bench = sub.add_parser(
        "update", help="an A/B update on an emulated board beside a full reflash of the card"
    )
    bench.add_argument("image", type=Path, help="the card image the box runs (image build)")
    bench.add_argument(
        "bundle", type=Path, help="a bundle the image trusts (image bundle; any version)"
    )
    bench.add_argument("--board", default="raspi3b", help="emulated board (raspi3b)")
    bench.add_argument(
        "--zstd-level", type=int, default=19, help="zstd level of the reflash download (19)"
    )
    bench.add_argument(
        "--piece-bytes",
        type=int,
        default=256 * 1024,
        help="bytes per Fetch of the delta download (agent.update.chunk_bytes: 262144)",
    )
    bench.add_argument(
        "--network-only",
        action="store_true",
        help="only the bytes over the network (bundle, delta, reflash): no guest, no flash",
    )
    bench.add_argument("--json", action="store_true", help="one JSON object on stdout")
    bench.set_defaults(func=_run)


def delta_download(image: Path, bundle_file: Path, piece: int, work: Path) -> dict[str, int]:
    """What a box running image fetches of bundle_file through the bus, planned as its agent
    plans it (appliance.update.delta.plan against the image's committed slot, the update keys
    its root trusts, pieces on the bundle's grid): bytes fetched, chunks fetched of all."""
    from appliance.image import updatebundle
    from appliance.update import bundle, delta

    _, root, _ = updatebundle.slot_files(image, work / "seed")
    keys = updatebundle.trusted_keys(root, work)
    with bundle_file.open("rb") as fh:
        manifest = bundle.read_manifest(fh, keys)
    seed = delta.Seed(root, work / "seed" / "boot")
    plan = delta.plan(manifest, seed)
    pieces = delta.ranges(plan.fetch, piece, head=manifest.payload_offset)
    return {
        "bytes": sum(min(length, manifest.total - offset) for offset, length in pieces),
        "chunks": len(plan.fetch),
        "chunks_total": sum(len(f.chunks) for f in manifest.files),
        "held_bytes": plan.in_seed,
    }


def sectors_written(stat: str) -> int:
    """Sectors written, from a /sys/block/DEV/stat line (the 7th field)."""
    fields = stat.split()
    if len(fields) < 7 or not all(f.isdigit() for f in fields[:7]):
        raise CommandError(f"not a block device stat line: {stat.strip()[:80]!r}")
    return int(fields[6])


def stat_command() -> str:
    """The guest command printing `LABEL <stat>` for the card (label "card") and each of
    its partitions, after a sync (so that what the page cache holds is counted where it was
    caused). The card is the disk the running system booted from (/run/appliance/disk)."""
    parts = " ".join(f"{label}:{n}" for label, n in PARTITIONS.items())
    return (
        "sync; d=$(cat /run/appliance/disk); "
        'case $d in *[0-9]) p=${d}p;; *) p=$d;; esac; echo "card $(cat /sys/class/block/$d/stat)"; '
        f"for e in {parts}; do "
        'echo "${e%%:*} $(cat /sys/class/block/$p${e#*:}/stat)"; done'
    )


def parse_stats(output: str) -> dict[str, int]:
    """{label: sectors written} from stat_command's output."""
    found: dict[str, int] = {}
    wanted = {"card", *PARTITIONS}
    for line in output.splitlines():
        label, _, rest = line.strip().partition(" ")
        if label in wanted and rest.strip():  # empty: the stat file was missing
            found[label] = sectors_written(rest)
    if wanted - found.keys():
        raise CommandError(f"the guest reported no counters for {sorted(wanted - found.keys())}")
    return found


def written_bytes(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Bytes written between two parse_stats readings: the card and each partition."""
    return {label: (after[label] - before[label]) * SECTOR for label in before}


def report(
    *,
    bundle_bytes: int,
    bundle_zstd_bytes: int,
    image_bytes: int,
    image_zstd_bytes: int,
    zstd_level: int,
    apply_s: float,
    update_written: dict[str, int],
    reflash_s: float,
    reflash_written: int,
    delta: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The bench's JSON object: both sides and their ratios (update / reflash)."""
    doc: dict[str, Any] = {
        "bench": "update",
        "update": {
            "apply_s": round(apply_s, 1),
            "network_bytes": bundle_bytes,
            "network_bytes_if_zstd": bundle_zstd_bytes,
            "card_written_bytes": update_written["card"],
            "card_written_by_partition": {k: v for k, v in update_written.items() if k != "card"},
            "write_amplification": round(update_written["card"] / bundle_bytes, 3),
        },
        "reflash": {
            "flash_s": round(reflash_s, 1),
            "network_bytes": image_zstd_bytes,
            "network_compression": f"zstd -{zstd_level}",
            "card_written_bytes": reflash_written,
            "image_bytes": image_bytes,
        },
        "ratio": {
            "network": round(bundle_bytes / image_zstd_bytes, 3),
            "card_written": round(update_written["card"] / reflash_written, 3),
        },
    }
    if delta is not None:
        doc["update"]["network_bytes_delta"] = delta["bytes"]
        doc["update"]["delta_chunks"] = f"{delta['chunks']} of {delta['chunks_total']}"
        doc["ratio"]["network_delta"] = round(delta["bytes"] / image_zstd_bytes, 4)
    return doc


def network_report(
    *, bundle_bytes: int, image_zstd_bytes: int, zstd_level: int, delta: dict[str, int]
) -> dict[str, Any]:
    """--network-only: the bytes over the network of the full bundle, the delta download and
    the compressed reflash."""
    return {
        "bench": "update",
        "update": {
            "network_bytes": bundle_bytes,
            "network_bytes_delta": delta["bytes"],
            "delta_chunks": f"{delta['chunks']} of {delta['chunks_total']}",
        },
        "reflash": {
            "network_bytes": image_zstd_bytes,
            "network_compression": f"zstd -{zstd_level}",
        },
        "ratio": {
            "network": round(bundle_bytes / image_zstd_bytes, 3),
            "network_delta": round(delta["bytes"] / image_zstd_bytes, 4),
            "delta_of_bundle": round(delta["bytes"] / bundle_bytes, 4),
        },
    }


def prepare_card(image: Path, bundle_file: Path, card: Path, work: Path) -> None:
    """A copy of image whose /data holds only bundle_file at GUEST_BUNDLE (the box boots
    unprovisioned; the debug console is a shell)."""
    from appliance.image import firstboot, sdcard

    shutil.copyfile(image, card)
    tree = work / "data-tree"
    (tree / "bench").mkdir(parents=True)
    shutil.copyfile(bundle_file, tree / "bench" / Path(GUEST_BUNDLE).name)
    start, size = firstboot.mbr_partition(card, 4)
    if bundle_file.stat().st_size > size // 2:
        raise CommandError(f"{bundle_file} does not fit on the image's /data ({size} bytes)")
    data = work / "data.f2fs"
    sdcard.make_data(tree, size, data, int(time.time()))
    sdcard.copy_into(data, card, start)
    shutil.rmtree(tree)
    data.unlink()


def _zstd_size(image: Path, level: int) -> int:
    proc = subprocess.run(
        f"zstd -q -T0 -{level} -c {shlex.quote(str(image))} | wc -c",
        shell=True,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip().isdigit():
        raise CommandError(f"zstd -{level} of {image} failed: {proc.stderr.strip()[:200]}")
    return int(proc.stdout)


def _guest_update(
    image: Path, bundle_file: Path, board: str, work: Path
) -> tuple[float, dict[str, int]]:
    from appliance.qemu import boards
    from appliance.qemu.machine import Machine

    card = work / "card.img"
    prepare_card(image, bundle_file, card, work)
    machine = Machine(boards.load(board), card, work / "guest")
    machine.power_on()
    try:
        machine.wait_ready(600)
        before = parse_stats(machine.run(stat_command(), timeout=120).output)
        start = time.monotonic()
        timed = machine.run(
            f"infraspectre update apply {GUEST_BUNDLE} --no-reboot --allow-downgrade 2>&1; "
            "echo rc=$?",
            timeout=3600,
        )
        took = time.monotonic() - start
        after = parse_stats(machine.run(stat_command(), timeout=120).output)
    finally:
        machine.power_cut()
    found = re.search(r"rc=(\d+)", timed.output)
    if not found or found.group(1) != "0":
        raise CommandError(f"update apply failed in the guest: {timed.output.strip()[-300:]}")
    return took, written_bytes(before, after)


def _reflash(image: Path, work: Path) -> tuple[float, int]:
    from appliance.image import flash

    target = work / "reflash.img"
    start = time.monotonic()
    flash.flash(image, target, force=True, progress=None)
    took = time.monotonic() - start
    written = target.stat().st_blocks * SECTOR
    target.unlink()
    return took, written


def _run(args: argparse.Namespace) -> int:
    for path, what in ((args.image, "image"), (args.bundle, "bundle")):
        if not path.is_file():
            raise CommandError(f"no {what} {path}")
    if not 1 <= args.zstd_level <= 19:
        raise CommandError("--zstd-level must be between 1 and 19")
    if not 4096 <= args.piece_bytes <= 4 << 20:
        raise CommandError("--piece-bytes must be between 4096 and 4194304")
    with tempfile.TemporaryDirectory(prefix="infraspectre-bench-update-") as tmp:
        work = Path(tmp)
        delta = delta_download(args.image, args.bundle, args.piece_bytes, work)
        image_zstd = _zstd_size(args.image, args.zstd_level)
        if args.network_only:
            doc = network_report(
                bundle_bytes=args.bundle.stat().st_size,
                image_zstd_bytes=image_zstd,
                zstd_level=args.zstd_level,
                delta=delta,
            )
        else:
            apply_s, written = _guest_update(args.image, args.bundle, args.board, work)
            reflash_s, reflash_written = _reflash(args.image, work)
            doc = report(
                bundle_bytes=args.bundle.stat().st_size,
                bundle_zstd_bytes=_zstd_size(args.bundle, args.zstd_level),
                image_bytes=args.image.stat().st_size,
                image_zstd_bytes=image_zstd,
                zstd_level=args.zstd_level,
                apply_s=apply_s,
                update_written=written,
                reflash_s=reflash_s,
                reflash_written=reflash_written,
                delta=delta,
            )
    if args.json:
        print(json.dumps(doc, sort_keys=True))
    else:
        for side in ("update", "reflash", "ratio"):
            print(f"{side}: " + ", ".join(f"{k}={v}" for k, v in doc[side].items()))
    return 0
