"""`infraspectre update ...`: on the device, apply a bundle and see the update's state."""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add the `update` command tree."""
    update = sub.add_parser("update", help="on the device: apply a signed update bundle (A/B)")
    update_sub = update.add_subparsers(dest="update_command", metavar="ACTION")
    update_sub.required = True

    apply = update_sub.add_parser(
        "apply", help="verify a bundle, write it to the inactive slot and try it (reboots)"
    )
    apply.add_argument("bundle", type=Path, help="the bundle file (USB stick, /data, ...)")
    apply.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="install a version older than (or equal to) the running one",
    )
    apply.add_argument(
        "--health-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds the new system has to become healthy before it is rolled back (300)",
    )
    apply.add_argument(
        "--no-reboot", action="store_true", help="stop before the reboot into the trial"
    )
    apply.set_defaults(func=_apply)

    status = update_sub.add_parser("status", help="slots, versions, the update's state")
    status.set_defaults(func=_status)

    boot = update_sub.add_parser(
        "boot", help="(run by rcS at every boot) finish a trial: commit or roll back"
    )
    boot.set_defaults(func=_boot)


def _updater() -> Any:
    from appliance.update.device import Board, Paths, Updater

    paths = Paths()
    return Updater(paths, Board(paths))


def _apply(args: argparse.Namespace) -> int:
    rec = _updater().apply(
        args.bundle,
        allow_downgrade=args.allow_downgrade,
        health_timeout=args.health_timeout,
        reboot=not args.no_reboot,
    )
    print(f"slot {rec.target}: {rec.version} written and verified; state {rec.state.value}")
    return 0


def _status(args: argparse.Namespace) -> int:
    print(json.dumps(_updater().status(), sort_keys=True, indent=1))
    return 0


def _boot(args: argparse.Namespace) -> int:
    # started by rcS, it must outlive the console's hangup when rcS ends (rcS also runs it
    # with setsid): a trial is committed or rolled back only if this process finishes
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    rec = _updater().on_boot()
    print(f"update: state {rec.state.value}")
    return 0
