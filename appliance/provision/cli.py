"""`infraspectre provision` (the technician's side) and `provision-responder` (the box's
console)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from appliance.errors import CommandError

#: where the box's supervisor of the agent keeps its PID (overlays/base/usr/lib/appliance/supervise)
AGENT_SUPERVISOR_PIDFILE = Path("/run/appliance/agent.supervise")


def register(sub: Any) -> None:
    """Add `provision` and `provision-responder`."""
    host = sub.add_parser(
        "provision", help="give a box its identity over its serial console (technician)"
    )
    host.add_argument(
        "--port", required=True, help="serial port: /dev/ttyUSB0, or a pyserial URL (socket://)"
    )
    host.add_argument("--pki", type=Path, required=True, help="the org PKI folder (`pki init`)")
    host.add_argument("--agent-id", required=True, help="the box's agent id (certificate CN)")
    host.add_argument("--replace", action="store_true", help="re-key a provisioned box")
    host.add_argument(
        "--wait", type=float, default=180.0, help="seconds to wait for the box to answer"
    )
    host.add_argument("--baud", type=int, default=115200)
    host.set_defaults(func=_provision)
    dev = sub.add_parser(
        "provision-responder",
        help="answer provisioning on this console (the box's console, never a shell)",
    )
    dev.add_argument("--keys", type=Path, default=Path("/data/keys"), help="identity folder")
    dev.add_argument(
        "--wake",
        type=Path,
        default=AGENT_SUPERVISOR_PIDFILE,
        help="PID file of the agent's supervisor, woken (SIGUSR1) once the identity is in place",
    )
    dev.add_argument(
        "--clock-file",
        type=Path,
        default=Path("/data/clock"),
        help="where the boot reads the clock's floor (epoch seconds); written after setting it",
    )
    dev.set_defaults(func=_respond)


def _provision(args: argparse.Namespace) -> int:
    from appliance.provision.host import Provisioner, Timing
    from appliance.provision.link import SerialLink

    if args.wait <= 0:
        raise CommandError(f"--wait {args.wait}: must be positive")
    link = SerialLink(args.port, args.baud)
    try:
        result = Provisioner(
            link, args.pki, timing=Timing(first_answer_s=args.wait), say=print
        ).run(args.agent_id, replace=args.replace)
    finally:
        link.close()
    print(
        f"provisioned {result.agent_id}: certificate {result.certificate}, trust map "
        f"{result.trust_map} (`infraspectre bus reload` loads it)"
    )
    return 0


def _respond(args: argparse.Namespace) -> int:
    from appliance import __version__
    from appliance.provision.device import DeviceEdges, Responder, serve
    from appliance.provision.link import FdLink, LinkClosed, raw_terminal
    from appliance.sysclock import save_clock_floor, set_system_clock

    def wake() -> None:
        # no supervisor (a development machine): the agent starts when it is next run
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(args.wake.read_text().strip()), signal.SIGUSR1)

    edges = DeviceEdges(
        keys_dir=args.keys,
        version=__version__,
        hostname=socket.gethostname(),
        clock_ns=time.time_ns,
        set_clock_ns=set_system_clock,
        wake_agent=wake,
        expected_agent_id=os.environ.get("IS_AGENT_ID", ""),
        save_clock=functools.partial(save_clock_floor, args.clock_file),
    )
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    with raw_terminal(fd_in):
        try:
            serve(FdLink(fd_in, fd_out), Responder(edges))
        except LinkClosed:
            return 0
    return 0
