"""`infraspectre bench boot`: power-on to ready on an emulated board, and Python imports.

Each run boots a fresh copy of the image (first boot included: the card is pristine, as a
freshly flashed one) and measures, from QEMU's start:
- ready_s: until the image prints its ready marker;
- shell_s: until the console shell answers;
- import_s: in the booted guest, `python3 -c 'import appliance, grpc, nacl, pyroute2,
  prometheus_client, google.protobuf'` (the agent's start-up imports), timed in the guest.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.errors import CommandError

IMPORTS = "import appliance, grpc, nacl, pyroute2, prometheus_client, google.protobuf"


def register(sub: Any) -> None:
    """Add `bench boot`."""
    from appliance.qemu.boards import names

    bench = sub.add_parser("boot", help="power-on to ready on an emulated board")
    bench.add_argument("image", type=Path)
    bench.add_argument("--board", default="raspi3b", choices=names())
    bench.add_argument("--runs", type=int, default=3, help="boots (1-20, default 3)")
    bench.add_argument("--json", action="store_true", help="one JSON object on stdout")
    bench.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from appliance.qemu import boards
    from appliance.qemu.machine import READY_MARKER, Machine

    if not 1 <= args.runs <= 20:
        raise CommandError("--runs must be between 1 and 20")
    if not args.image.is_file():
        raise CommandError(f"no image {args.image}")
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="infraspectre-bench-") as tmp:
        for n in range(args.runs):
            card = Path(tmp) / "card.img"
            shutil.copyfile(args.image, card)
            machine = Machine(boards.load(args.board), card, Path(tmp) / f"run-{n}")
            start = time.monotonic()
            machine.power_on()
            try:
                machine.console.wait_for(READY_MARKER, 300)
                ready = time.monotonic() - start
                machine.wait_ready(300)
                shell = time.monotonic() - start
                timed = machine.run(f"time python3 -c '{IMPORTS}'", timeout=300)
            finally:
                machine.power_cut()
            found = re.search(r"real\s+(?:(\d+)m\s*)?([\d.]+)s", timed.output)
            if timed.status != 0 or not found:
                raise CommandError(f"the imports failed in the guest: {timed.output[-200:]}")
            imports = int(found.group(1) or 0) * 60 + float(found.group(2))
            runs.append({"ready_s": ready, "shell_s": shell, "import_s": imports})
    report: dict[str, Any] = {"bench": "boot", "board": args.board, "runs": len(runs)}
    for key in ("ready_s", "shell_s", "import_s"):
        values = [r[key] for r in runs]
        report[key] = {
            "median": round(statistics.median(values), 1),
            "max": round(max(values), 1),
        }
    report["target_ready_s"] = 60
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        for key, value in report.items():
            print(f"{key:>15}: {value}")
    return 0
