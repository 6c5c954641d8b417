"""`infraspectre qemu boot`: run a card image on an emulated board, in the foreground."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from appliance.errors import CommandError


def register(sub: Any) -> None:
    """Add the `qemu` command tree."""
    from appliance.qemu.boards import names

    qemu = sub.add_parser("qemu", help="boot the image on an emulated board")
    qemu_sub = qemu.add_subparsers(dest="qemu_command", metavar="ACTION")
    qemu_sub.required = True
    boot = qemu_sub.add_parser(
        "boot",
        help="boot a card image (console on this terminal: Ctrl-A X quits, or on a TCP port)",
    )
    boot.add_argument("image", type=Path, help="the SD card image (written to, like a card)")
    boot.add_argument("--board", required=True, choices=names())
    boot.add_argument(
        "--uplink-port",
        type=int,
        help="host port the guest reaches as 10.0.2.100:50051 (its only way out)",
    )
    boot.add_argument(
        "--mirror",
        metavar="HOST:QEMU",
        help="mirror NIC on UDP 127.0.0.1: QEMU sends frames to port HOST, receives on QEMU",
    )
    boot.add_argument(
        "--console-port",
        type=int,
        help="serve the console on 127.0.0.1:PORT (QEMU waits for a client) instead of stdio",
    )
    boot.add_argument(
        "--snapshot", action="store_true", help="discard the guest's writes to the card"
    )
    boot.add_argument(
        "--shell",
        action="store_true",
        help="debug boot: a root shell on the console instead of the provisioning responder",
    )
    boot.set_defaults(func=_boot)


def _boot(args: argparse.Namespace) -> int:
    from appliance.qemu import boards
    from appliance.qemu.machine import Machine, Mirror

    mirror = None
    if args.mirror:
        try:
            host, qemu = (int(x) for x in args.mirror.split(":"))
        except ValueError:
            raise CommandError(f"--mirror {args.mirror!r}: expected HOSTPORT:QEMUPORT") from None
        mirror = Mirror(host, qemu)
    if not args.image.is_file():
        raise CommandError(f"no image {args.image}")
    with tempfile.TemporaryDirectory(prefix="infraspectre-qemu-") as tmp:
        machine = Machine(
            boards.load(args.board),
            args.image.resolve(),
            Path(tmp),
            uplink_port=args.uplink_port,
            mirror=mirror,
            snapshot=args.snapshot,
            console_shell=args.shell,
        )
        cmd = machine.command(args.console_port, console_stdio=args.console_port is None)
        if args.console_port is not None:
            print(f"qemu: console on 127.0.0.1:{args.console_port}", file=sys.stderr)
        return subprocess.run(cmd, check=False).returncode
