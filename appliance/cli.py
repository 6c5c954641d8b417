"""The `infraspectre` command: one sub-command tree assembled from the components.

Each component owns the sub-commands of its job in a `cli` module with a
`register(subparsers)` function. The development kit (appliance/devkit/: `demo`, the benches
under `infraspectre bench`) is imported only when installed; on a card, which does not carry it,
those commands answer with one line and exit status 1. Handlers import their heavy
dependencies (grpc, numpy) inside the handler so that `--help` and light commands start fast on
a Raspberry Pi.

Exit status: 0 on success; 1 with one line on stderr for a CommandError (bad config, missing
file, refused input) and for any unexpected exception (its traceback is logged at DEBUG, so a
user never sees one unless asked); 130 on Ctrl-C; 141 (128 + SIGPIPE, what a shell reports for
a C tool) when whoever reads stdout went away, as in `infraspectre flows --pcap X | head`:
quietly, the way well-behaved Unix tools end.

Logging (appliance/logformat.py): `--log-level` and `--log-format` over `IS_LOG_LEVEL` and
`IS_LOG_FORMAT` over the `log` section of the command's `--config` file; text or JSON lines on
stderr. Both options are accepted anywhere on the command line, before or after the command
(`infraspectre bus serve --log-level debug`), and their values in any case.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from appliance import __version__, logformat
from appliance.errors import CommandError

#: Modules whose register(subparsers) adds top-level commands, in help order.
COMMAND_MODULES = (
    "appliance.pki.cli",
    "appliance.bus.cli",
    "appliance.wal.cli",
    "appliance.capture.cli",
    "appliance.agent.cli",
    "appliance.provision.cli",
    "appliance.image.cli",
    "appliance.qemu.cli",
    "appliance.configcheck",
)

#: The development kit's commands (appliance/devkit/commands.py), imported only if installed:
#: the card does not carry the kit (appliance/image/rootfs.py ships an allow-list without it).
DEVKIT_COMMANDS = "appliance.devkit.commands"
#: What the kit adds at the top level, answered with one line where the kit is absent.
DEV_COMMANDS = {
    "demo": "run the main job end to end on embedded defaults (development kit)",
    "bench": "side-by-side benchmarks against the peer tools (development kit)",
}


#: Commands that start without importing the other components' modules: `flows --pcap` is a
#: tool people time against softflowd and nfpcapd, and registering every command pulls in
#: grpc, cryptography and the PKI (about 0.4 s of CPU here, seconds on a Pi) that it never
#: uses. Its parser is the same one the full tree holds.
LIGHT_COMMANDS = {"flows": "appliance.capture.cli"}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full argument parser (also used by the docs test that lists the CLI surface), or,
    with only=a LIGHT_COMMANDS key, a parser with that command alone."""
    parser = argparse.ArgumentParser(
        prog="infraspectre", description="InfraSpectre Edge: network tap appliance and EventBus"
    )
    parser.add_argument("--version", action="version", version=f"infraspectre {__version__}")
    parser.add_argument(
        "--log-level",
        type=logformat.cli_level,
        choices=logformat.LEVELS,
        help="logging threshold, any case (default: $IS_LOG_LEVEL, else the config's "
        "log.level, else INFO)",
    )
    parser.add_argument(
        "--log-format",
        type=logformat.cli_format,
        choices=logformat.FORMATS,
        help="text, or json: one object per line (default: $IS_LOG_FORMAT, else the "
        "config's log.format, else text)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if only is not None:
        importlib.import_module(LIGHT_COMMANDS[only]).register(sub)
        return parser
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    try:
        devkit = importlib.import_module(DEVKIT_COMMANDS)
    except ModuleNotFoundError as exc:
        # only the kit itself missing means "not installed"; a dependency it lacks is a bug
        if exc.name is None or not DEVKIT_COMMANDS.startswith(exc.name):
            raise
        for command, summary in DEV_COMMANDS.items():
            p = sub.add_parser(command, help=summary, add_help=False, prefix_chars="\0")
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=_devkit_missing)
    else:
        devkit.register(sub)
    return parser


def _devkit_missing(args: argparse.Namespace) -> int:
    raise CommandError(
        f"'{args.command}' is a development command and this installation has no development "
        "kit (appliance.devkit is not on the card): run it from a source checkout"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    hoisted = hoist_global_options(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_light_command(hoisted))
    args = parser.parse_args(hoisted)
    try:
        logformat.configure(
            logformat.resolve(
                args.log_level, args.log_format, getattr(args, "config", None), os.environ
            )
        )
        status = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except CommandError as exc:
        _fail(str(exc))
        return 1
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except Exception as exc:
        logging.getLogger("appliance").debug("unexpected failure", exc_info=True)
        _fail(
            f"unexpected {type(exc).__name__}: {exc} "
            "(run with --log-level DEBUG for the traceback, and report it)"
        )
        return 1
    return int(status or 0)


#: Options of the top-level parser that a user may also put after the command.
GLOBAL_OPTIONS = ("--log-level", "--log-format")


def hoist_global_options(argv: Sequence[str]) -> list[str]:
    """argv with GLOBAL_OPTIONS (and their values) moved in front of the command, so that
    `infraspectre bus serve --log-level DEBUG` means what `infraspectre --log-level DEBUG bus
    serve` does. Nothing after a `--` is touched."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg.split("=", 1)[0] in GLOBAL_OPTIONS:
            takes_next = "=" not in arg and i + 1 < len(argv)
            front.extend(argv[i : i + 2] if takes_next else [arg])
            i += 2 if takes_next else 1
            continue
        rest.append(arg)
        i += 1
    return front + rest


def _light_command(argv: Sequence[str]) -> str | None:
    """The LIGHT_COMMANDS key that argv (global options hoisted) runs, else None."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] in ("-h", "--help", "--version"):
            return None
        i += 1 if "=" in argv[i] else 2  # the global options all take a value
    return argv[i] if i < len(argv) and argv[i] in LIGHT_COMMANDS else None


#: 128 + SIGPIPE: the status a shell shows for a tool that a closed pipe ended.
EXIT_BROKEN_PIPE = 141


def _fail(message: str) -> None:
    """One line on stderr, whatever message holds (a newline in it must not make two)."""
    print("infraspectre: " + " ".join(message.splitlines()), file=sys.stderr, flush=True)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's own flush at exit cannot fail again
    (and print "Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (a test's capture)
        pass
