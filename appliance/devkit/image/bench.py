"""`infraspectre bench image`: build time (warm and cold cache) and image size.

Sizes: the raw card, its squashfs root, and the card compressed with `zstd -19` (what a
download of the image would weigh; target <= 80 MB). Build times are wall-clock seconds of
`image build` with the normal cache (warm: only package indices are fetched) and, with
--cold, with an empty cache (every .deb and wheel downloaded).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from appliance.errors import CommandError


def register(sub: Any) -> None:
    """Add `bench image`."""
    from appliance.image.definition import boards

    bench = sub.add_parser("image", help="image build time (warm/cold) and size (raw, zstd)")
    bench.add_argument("--board", default="rpi", choices=boards())
    bench.add_argument("--cache", type=Path, default=Path("cache"), help="the warm cache")
    bench.add_argument("--cold", action="store_true", help="also build from an empty cache")
    bench.add_argument("--json", action="store_true", help="one JSON object on stdout")
    bench.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from appliance.image import build, definition

    defn = definition.load(args.board)
    epoch = build.source_date_epoch(defn.source)
    report: dict[str, Any] = {"bench": "image", "board": args.board}
    with tempfile.TemporaryDirectory(prefix="infraspectre-bench-") as tmp:
        work = Path(tmp)
        if args.cold:
            cold = build.build(defn, work / "cold", work / "empty-cache", epoch=epoch)
            report["build_cold_s"] = round(cold.seconds, 1)
            shutil.rmtree(work / "cold")
            shutil.rmtree(work / "empty-cache")
        warm = build.build(defn, work / "warm", args.cache.resolve(), epoch=epoch, keep_work=True)
        report["build_warm_s"] = round(warm.seconds, 1)
        report["image_bytes"] = warm.image.stat().st_size
        report["squashfs_bytes"] = (work / "warm/work/root.squashfs").stat().st_size
        report["zstd19_bytes"] = _zstd_size(warm.image)
        report["sha256"] = warm.sha256
    report["target_zstd_bytes"] = 80_000_000
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        for key, value in report.items():
            print(f"{key:>18}: {value}")
    return 0


def _zstd_size(image: Path) -> int:
    try:
        proc = subprocess.run(
            ["zstd", "-19", "-T0", "-q", "-c", str(image)], capture_output=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise CommandError(f"zstd failed: {exc}") from exc
    return len(proc.stdout)
