"""`infraspectre wal ...`: look at a WAL directory (on the device, or a copy of one)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from appliance.errors import CommandError


def register(sub: Any) -> None:
    """Add the `wal` command tree."""
    wal = sub.add_parser("wal", help="inspect the write-ahead log")
    wal_sub = wal.add_subparsers(dest="wal_command", metavar="ACTION")
    wal_sub.required = True
    inspect = wal_sub.add_parser(
        "inspect",
        help="recover a WAL directory and report what it holds (the agent must be stopped)",
    )
    inspect.add_argument("path", type=Path, help="WAL directory (e.g. /data/wal)")
    inspect.add_argument("--json", action="store_true", help="one JSON object")
    inspect.set_defaults(func=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from appliance.wal.config import WalConfig
    from appliance.wal.log import Wal

    if not (args.path / "cursor").is_file():
        raise CommandError(f"no WAL at {args.path} (no cursor file)")
    # read-only: no segment removed over a bound, no .tmp deleted, nothing written
    wal = Wal.open_read_only(WalConfig(path=args.path))
    try:
        assert wal.recovery is not None
        report = {
            "recovery": dataclasses.asdict(wal.recovery),
            "stats": dataclasses.asdict(wal.stats()),
        }
    finally:
        wal.close()
    if args.json:
        print(json.dumps(report))
        return 0
    rec, st = report["recovery"], report["stats"]
    print(
        f"WAL {args.path}: recovered in {rec['duration_s']:.3f} s (cursor gen {rec['cursor_gen']})"
    )
    print(f"  pending records   {st['backlog_records']} ({st['backlog_bytes']} B)")
    print(f"  oldest pending    {st['oldest_age_s']:.0f} s")
    print(f"  segments          {st['segments_in_use']} in use, {st['segments_free']} free")
    print(f"  on disk           {st['disk_bytes']} B")
    print(f"  corrupt skipped   {rec['corrupt_records']}, torn tails {rec['torn_tails']}")
    return 0
