"""`infraspectre bus export ipfix`: send a time range of the store to a collector, once.

Registered from appliance/bus/cli.py by one call to `register`. The replay reads the store
read-only (a running bus may keep writing) and keeps no position: each run sends its range
again. It ends when every flow in the range was sent (TCP: acknowledged, then closed
gracefully) and prints how many on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from appliance.errors import CommandError


def register(bus_sub: Any) -> None:
    """Add `bus export ipfix` to the `bus` command tree."""
    export = bus_sub.add_parser("export", help="send stored flows to a collector (IPFIX)")
    export_sub = export.add_subparsers(dest="export_command", metavar="FORMAT")
    export_sub.required = True
    p = export_sub.add_parser(
        "ipfix", help="replay a time range of stored flows to an IPFIX collector"
    )
    p.add_argument("--config", type=Path, help="YAML configuration (store, eventbus.export)")
    p.add_argument("--db", type=Path, help="the store file (overrides the configuration)")
    p.add_argument("--collector", required=True, metavar="HOST:PORT", help="where to send")
    p.add_argument("--tcp", action="store_true", help="TCP instead of UDP")
    p.add_argument(
        "--mode",
        choices=("biflow", "uniflow"),
        default="biflow",
        help="one RFC 5103 record per flow (default) or one per direction",
    )
    p.add_argument(
        "--since", required=True, help="sealed from: ISO time, UNIX seconds, or ago (10m, 2h)"
    )
    p.add_argument("--until", help="sealed before (default: now)")
    p.set_defaults(func=_replay)


def _replay(args: argparse.Namespace) -> int:
    from appliance.bus.cli import _db_path, parse_time
    from appliance.bus.config import load_bus_settings
    from appliance.bus.export.config import CollectorConfig
    from appliance.bus.export.exporter import Exporter, Replay
    from appliance.bus.export.source import StoreReader
    from appliance.bus.query import open_reader

    collector = CollectorConfig(args.collector, "tcp" if args.tcp else "udp", args.mode)
    try:
        collector.validate()
    except ValueError as exc:
        raise CommandError(f"--collector: {exc}") from None
    since_ns = parse_time(args.since)
    until_ns = parse_time(args.until) if args.until else None
    if until_ns is not None and until_ns <= since_ns:
        raise CommandError(f"--until {args.until} is not after --since {args.since}: empty range")
    cfg = load_bus_settings(args.config).eventbus.export.ipfix
    db = _db_path(args)
    open_reader(db).close()  # a one-line error for a missing file or one that is not a store
    reader = StoreReader(db)
    try:
        head = reader.head()
    finally:
        reader.close()
    exporter = Exporter(collector, cfg, db, replay=Replay(since_ns, until_ns, head))
    exporter.run()
    if exporter.error is not None:
        raise CommandError(f"export to {collector.name} failed: {exporter.error}")
    print(
        f"{exporter.flows_delivered:,} flows sent to {collector.name} ({collector.mode})",
        file=sys.stderr,
    )
    return 0
