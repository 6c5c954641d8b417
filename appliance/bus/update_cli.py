"""`infraspectre bus update upload | set | status`: bundles and desired versions on the bus.

These commands work on the bus's data directory (like `bus agents`), so they run beside a
serving bus or without one; the serving bus reads the same store at every box's check.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from appliance.errors import CommandError


def register(bus_sub: Any) -> None:
    """Add `bus update ...` under the `bus` command tree."""
    update = bus_sub.add_parser(
        "update", help="updates delivered through the bus: bundles, desired versions, reports"
    )
    sub = update.add_subparsers(dest="bus_update_command", metavar="ACTION")
    sub.required = True

    upload = sub.add_parser(
        "upload", help="verify a signed bundle (signature, every hash, length) and store it"
    )
    upload.add_argument("bundle", type=Path, help="a bundle from `infraspectre image bundle`")
    upload.add_argument("--config", type=Path, help="YAML configuration (data dir, update keys)")
    upload.set_defaults(func=_upload)

    set_ = sub.add_parser("set", help="the version an agent or a group should run")
    who = set_.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", metavar="ID", help="one agent (wins over its group)")
    who.add_argument("--group", metavar="G", help="every agent of group G (agent.update.group)")
    set_.add_argument(
        "version", help="a stored version (its newest build), a bundle's sha256, or 'none'"
    )
    set_.add_argument("--config", type=Path, help="YAML configuration (data dir)")
    set_.set_defaults(func=_set)

    status = sub.add_parser(
        "status", help="stored bundles, desired versions and what each box reported"
    )
    status.add_argument("--config", type=Path, help="YAML configuration (data dir)")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=_status)


def _store(config: Path | None) -> Any:
    from appliance.bus.config import load_bus_settings
    from appliance.bus.updates import UpdateStore

    settings = load_bus_settings(config)
    return settings, UpdateStore(settings.storage.data_dir / settings.eventbus.update.dir)


def _upload(args: argparse.Namespace) -> int:
    from appliance.bus.updates import load_update_keys

    settings, store = _store(args.config)
    try:
        keys = load_update_keys(settings.eventbus.update_key_paths())
        info = store.upload(args.bundle, keys)
    finally:
        store.close()
    print(
        f"stored {info.version} (build {info.build}, board {info.board}, {info.size} bytes) "
        f"as {info.sha256}"
    )
    return 0


def _set(args: argparse.Namespace) -> int:
    scope, name = ("agent", args.agent) if args.agent else ("group", args.group)
    _, store = _store(args.config)
    try:
        if args.version == "none":
            if not store.clear_desired(scope, name):
                raise CommandError(f"no desired version was set for {scope} {name!r}")
            print(f"{scope} {name}: no desired version")
            return 0
        info = store.set_desired(scope, name, args.version)
    finally:
        store.close()
    print(f"{scope} {name}: should run {info.version} (build {info.build}, {info.sha256[:12]})")
    return 0


def _when(seconds: int) -> str:
    if not seconds:
        return "-"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(args: argparse.Namespace) -> int:
    from appliance.bus.cli import terminal_safe

    _, store = _store(args.config)
    try:
        bundles, desired, reports = store.bundles(), store.desired(), store.reports()
    finally:
        store.close()
    if args.json:
        doc = {
            "bundles": [b.__dict__ for b in bundles],
            "desired": [
                {"scope": s, "name": n, "version": b.version, "build": b.build, "sha256": b.sha256}
                for s, n, b in desired
            ],
            "agents": [r.as_json() for r in reports],
        }
        print(json.dumps(doc, sort_keys=True))
        return 0
    print("bundles:")
    for b in bundles:
        print(f"  {b.version:<12} build {b.build:<11} {b.board:<6} {b.size:>11} B  {b.sha256}")
    print("desired:")
    for s, n, b in desired:
        print(f"  {s} {terminal_safe(n)}: {b.version} (build {b.build})")
    print("agents:")
    for r in reports:
        line = (
            f"  {terminal_safe(r.agent_id):<20} runs {terminal_safe(r.version) or '-':<10} "
            f"slot {terminal_safe(r.slot) or '-':<2} state {terminal_safe(r.state) or '-':<11} "
            f"last {terminal_safe(r.last_result) or '-'}"
        )
        if r.last_result:
            line += f" {terminal_safe(r.last_version)} at {_when(r.last_at)}: "
            line += terminal_safe(r.last_reason)
        if r.download:
            line += f" (downloading {r.download[:12]}: {r.downloaded} B, {r.fetched} B fetched)"
        print(line)
    return 0
