"""`infraspectre config check FILE [--component C]`: validate a configuration file strictly.

Like `vector validate`: every section of the file is built by the component that owns it, with
the same strict rules the component applies at start-up (unknown keys, wrong types, bad values,
a filter that does not compile), and the first problem is reported as one line naming its key
path, exit 1. Nothing is started, opened or written. The environment's overrides are left out
unless `--env` is given, so that the file itself is what is checked.

This module sits above the components (like appliance.cli) and may use all of them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from appliance.errors import CommandError

#: What each component reads from a configuration file: the sections, and how it builds them.
COMPONENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "bus": (("eventbus", "storage", "log"), "bus serve, bus query, bus tail, bus reload"),
    "agent": (("agent", "capture", "wal", "storage", "log"), "agent run"),
    "flows": (("capture", "log"), "flows --pcap (its capture.meter section)"),
    "wal": (("wal", "log"), "wal inspect"),
}


def register(sub: Any) -> None:
    """Add the `config` command tree."""
    config = sub.add_parser("config", help="check a configuration file")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    config_sub.required = True
    check = config_sub.add_parser(
        "check",
        help="validate FILE strictly: exit 1 with the key path of the first problem",
        description="Validate FILE as the components read it: unknown keys, wrong types and "
        "bad values are reported with their key path (exit 1). Nothing is started.",
    )
    check.add_argument("file", type=Path, metavar="FILE", help="the YAML configuration file")
    check.add_argument(
        "--component",
        choices=("all", *COMPONENTS),
        default="all",
        help="check only what this component reads (default: all)",
    )
    check.add_argument(
        "--env",
        action="store_true",
        help="apply the environment's overrides (IS_*, BUS_*) as the commands would",
    )
    check.set_defaults(func=_check)


def _loaders() -> dict[str, Callable[[Path, Mapping[str, str]], object]]:
    from appliance import logformat
    from appliance.agent.cli import load_agent_settings
    from appliance.bus.config import load_bus_settings
    from appliance.capture.config import load_capture_config
    from appliance.config import load_document
    from appliance.wal import load_wal_config

    def log(path: Path, env: Mapping[str, str]) -> object:
        return logformat.resolve(None, None, path, env)

    return {
        "bus": load_bus_settings,
        "agent": lambda path, env: load_agent_settings(path, env),
        "flows": lambda path, env: load_capture_config(load_document(path), dict(env)),
        "wal": lambda path, env: load_wal_config(load_document(path), env),
        "log": log,
    }


def check_file(path: Path, component: str = "all", env: Mapping[str, str] | None = None) -> str:
    """Validate path for component (or all); returns a one-line verdict, raises CommandError
    (one line with the key path) at the first problem."""
    from appliance.config import load_document

    if not path.is_file():
        raise CommandError(f"{path}: no such file")
    doc = load_document(path)  # YAML syntax and unknown sections, whatever the component
    loaders = _loaders()
    names = list(COMPONENTS) if component == "all" else [component]
    for name in names:
        loaders[name](path, env or {})
    loaders["log"](path, env or {})
    sections = ", ".join(sorted(doc)) or "none (all defaults)"
    scope = "every component" if component == "all" else component
    return f"{path}: valid for {scope} (sections: {sections})"


def _check(args: argparse.Namespace) -> int:
    print(check_file(args.file, args.component, dict(os.environ) if args.env else None))
    return 0
