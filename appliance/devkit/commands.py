"""The development commands of the `infraspectre` CLI: `demo` and `infraspectre bench ...`.

appliance/cli.py imports this module only when the development kit is installed (a source
checkout or the host's venv); on a card it is absent and those commands answer with one line.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Modules whose register(subparsers) adds top-level commands, in help order.
COMMAND_MODULES = ("appliance.devkit.demo",)

#: Modules whose register(subparsers) adds `infraspectre bench ...` commands.
BENCH_MODULES = (
    "appliance.devkit.bus.bench",
    "appliance.devkit.bus.export_bench",
    "appliance.devkit.wal.bench",
    "appliance.devkit.capture.bench",
    "appliance.devkit.capture.agentlive",
    "appliance.devkit.pipeline_bench",
    "appliance.devkit.image.bench",
    "appliance.devkit.qemu.bench",
    "appliance.update.bench",
)


def register(sub: Any) -> None:
    """Add `demo` and `bench` with its sub-commands to the top-level subparsers."""
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    bench = sub.add_parser("bench", help="side-by-side benchmarks against the peer tools")
    bench_sub = bench.add_subparsers(dest="bench", metavar="WHAT")
    bench_sub.required = True
    for name in BENCH_MODULES:
        importlib.import_module(name).register(bench_sub)
