"""`infraspectre bus serve | reload | tail | query | agents`.

Text output is for terminals: every field an agent supplied (its id, addresses, protocol) is
printed through `terminal_safe`, so a hostile or broken box cannot send escape sequences to an
operator's terminal. `--json` output is exact: json.dumps escapes every control character.
`--csv` is RFC 4180: a header row, then one row per flow, CRLF line ends, a field quoted
(quotes doubled) when it holds a comma, a quote or a line break; the same names and values as
`--json`.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from appliance.bus.export.cli import register as register_export
from appliance.bus.update_cli import register as register_update
from appliance.errors import CommandError

_REL = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RECORD_KEYS = (
    "agent_id", "seq", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "bytes_tx",
    "bytes_rx", "packets_tx", "packets_rx", "vlan", "start_ms", "end_ms", "ts_ns",
)  # fmt: skip


def register(sub: Any) -> None:
    """Add the `bus` command tree."""
    bus = sub.add_parser("bus", help="the central EventBus and what it has stored")
    bus_sub = bus.add_subparsers(dest="bus_command", metavar="ACTION")
    bus_sub.required = True

    serve = bus_sub.add_parser("serve", help="run the EventBus (mTLS gRPC + SQLite store)")
    serve.add_argument("--config", type=Path, help="YAML configuration (default: built-in)")
    serve.set_defaults(func=_serve)

    consume = bus_sub.add_parser(
        "consume",
        help="write the JetStream stream into the SQLite store (with eventbus.sink jetstream)",
    )
    consume.add_argument("--config", type=Path, help="YAML configuration (default: built-in)")
    consume.add_argument(
        "--until-idle",
        action="store_true",
        help="stop once a fetch finds the stream drained (tests, one-off catch-up)",
    )
    consume.set_defaults(func=_consume)

    reload = bus_sub.add_parser(
        "reload", help="make the running bus reload its trust map (SIGHUP via its pidfile)"
    )
    reload.add_argument("--config", type=Path, help="YAML configuration (for storage.data_dir)")
    reload.set_defaults(func=_reload)

    agents = bus_sub.add_parser(
        "agents", help="the fleet: each box's last record and health, silent boxes first"
    )
    agents.add_argument("--config", type=Path, help="YAML configuration (store, trust map)")
    agents.add_argument("--db", type=Path, help="the store file (overrides the configuration)")
    agents.add_argument(
        "--silent-after",
        type=float,
        metavar="SECONDS",
        help="a box with no record for this long is silent (default: eventbus.silent_after_s)",
    )
    agents.add_argument("--json", action="store_true", help="one JSON object per agent")
    agents.set_defaults(func=_agents)

    for name, help_text in (
        ("tail", "follow flows as they are stored"),
        ("query", "print stored flows matching filters"),
    ):
        p = bus_sub.add_parser(name, help=help_text)
        p.add_argument("--config", type=Path, help="YAML configuration (for storage.data_dir)")
        p.add_argument("--db", type=Path, help="the store file (overrides the configuration)")
        p.add_argument("--agent", help="only this agent id")
        p.add_argument(
            "--address",
            help="only flows with a source or destination in this address or CIDR network "
            "(192.0.2.7, 10.0.0.0/8, 2001:db8::/32)",
        )
        p.add_argument("--port", type=int, help="only flows with this source or destination port")
        p.add_argument("--proto", help="only this protocol (TCP, UDP, ICMP, ICMPV6, or a number)")
        p.add_argument(
            "--where",
            metavar="EXPR",
            help="a filter expression, e.g. 'proto=TCP and dst_port=443 and not ip=10.0.0.0/8' "
            "(docs/BUS.md); ANDed with the other filters",
        )
        output = p.add_mutually_exclusive_group()
        output.add_argument("--json", action="store_true", help="one JSON object per line")
        output.add_argument("--csv", action="store_true", help="CSV (RFC 4180) with a header row")
        if name == "query":
            p.add_argument("--since", help="ISO time, UNIX seconds, or a duration ago (10m, 2h)")
            p.add_argument("--until", help="ISO time, UNIX seconds, or a duration ago")
            p.add_argument(
                "--limit", type=int, default=1000, help="at most this many (default 1000)"
            )
            p.add_argument(
                "--order",
                choices=("newest", "oldest"),
                default="newest",
                help="newest (default) or oldest stored first; --limit keeps that end",
            )
            p.set_defaults(func=_query)
        else:
            p.add_argument("--from-start", action="store_true", help="print stored flows first")
            p.add_argument("--count", type=int, help="stop after this many flows")
            p.add_argument("--timeout", type=float, help="stop after this many seconds")
            p.set_defaults(func=_tail)

    register_export(bus_sub)  # `bus export ipfix`: appliance/bus/export/cli.py
    register_update(bus_sub)  # `bus update ...`: appliance/bus/update_cli.py


def _serve(args: argparse.Namespace) -> int:
    from appliance.bus.config import load_bus_settings
    from appliance.bus.pidfile import PIDFILE, PidFile
    from appliance.bus.server import BusServer

    settings = load_bus_settings(args.config)
    pidfile = PidFile.acquire(settings.storage.data_dir / PIDFILE)  # before the store opens
    try:
        with BusServer(settings) as server:  # start(): the ports first, then the store
            server.install_signal_handlers()
            print(f"bus ready on port {server.port}", flush=True)
            server.wait()
    finally:
        pidfile.release()
    return 0


def _consume(args: argparse.Namespace) -> int:
    import signal

    from appliance.bus.config import load_bus_settings
    from appliance.bus.jetstream.consumer import StoreConsumer

    settings = load_bus_settings(args.config)
    if settings.eventbus.sink != "jetstream":
        raise CommandError(
            "bus consume reads a JetStream stream: set eventbus.sink: jetstream "
            "(and eventbus.jetstream.servers) in the configuration"
        )
    consumer = StoreConsumer(settings)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _s, _f: consumer.stop())
    print(f"consuming into {consumer.store.path}", flush=True)
    stats = consumer.run(until_idle=args.until_idle)
    print(
        f"stored {stats.stored}, duplicates {stats.duplicates}, refused {stats.refused}, "
        f"undecodable {stats.undecodable}",
        flush=True,
    )
    return 0


def _reload(args: argparse.Namespace) -> int:
    import os
    import signal

    from appliance.bus.config import load_bus_settings
    from appliance.bus.pidfile import PIDFILE, running_bus

    pid = running_bus(load_bus_settings(args.config).storage.data_dir / PIDFILE)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise CommandError(f"the bus (pid {pid}) has just stopped") from None
    print(f"bus (pid {pid}): trust map reload requested; see its log for the result")
    return 0


def parse_time(text: str, now: float | None = None) -> int:
    """ISO 8601, UNIX seconds, or a duration ago (30s, 10m, 2h, 1d) -> UNIX nanoseconds."""
    now = time.time() if now is None else now
    m = _REL.match(text)
    if m:
        return int((now - float(m.group(1)) * _UNIT_S[m.group(2)]) * 1e9)
    try:
        return int(float(text) * 1e9)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"cannot read time {text!r}: use ISO 8601, UNIX seconds or 10m"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1e9)


def _db_path(args: argparse.Namespace) -> Path:
    if args.db:
        return Path(args.db)
    from appliance.bus.config import load_bus_settings

    settings = load_bus_settings(args.config)
    return settings.storage.data_dir / settings.eventbus.db_name


def _query_of(args: argparse.Namespace) -> Any:
    from appliance.bus.query import Query, parse_where

    if args.where is not None:
        parse_where(args.where)  # refuse a bad expression before anything is opened or awaited

    return Query(
        agent=args.agent,
        address=args.address,
        port=args.port,
        proto=args.proto,
        since_ns=parse_time(args.since) if getattr(args, "since", None) else None,
        until_ns=parse_time(args.until) if getattr(args, "until", None) else None,
        limit=getattr(args, "limit", 1000),
        newest_first=getattr(args, "order", "oldest") == "newest",
        where=args.where,
    )


def _record(row: Any) -> dict[str, Any]:
    rec = {k: row[k] for k in RECORD_KEYS}
    rec["start_time"] = rec.pop("start_ms")
    rec["end_time"] = rec.pop("end_ms")
    return rec


HEADER = (
    f"{'time (UTC)':<19} {'agent':<14} {'proto':<6} {'source':<30} {'destination':<30} "
    f"{'bytes tx':>10} {'bytes rx':>10} {'pkts tx':>8} {'pkts rx':>8}"
)


def terminal_safe(value: object) -> str:
    """str(value) with every character a terminal could act on (C0/C1 controls such as ESC,
    format characters such as bidi overrides, line separators) and the backslash written as a
    visible escape: \\x1b, \\u202e, \\\\."""
    text = str(value)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(ch if ch.isprintable() and ch != "\\" else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch == "\\":
        return "\\\\"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _endpoint(ip: object, port: object) -> str:
    host = terminal_safe(ip)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_row(row: Any) -> str:
    """One stored flow as a table line, terminal-safe."""
    when = dt.datetime.fromtimestamp((row["start_ms"] or 0) / 1000, dt.UTC)
    agent = terminal_safe(row["agent_id"])[:14]
    proto = terminal_safe(row["proto"] or "")
    return (
        f"{when:%Y-%m-%d %H:%M:%S} {agent:<14} {proto:<6} "
        f"{_endpoint(row['src_ip'], row['src_port']):<30} "
        f"{_endpoint(row['dst_ip'], row['dst_port']):<30} "
        f"{row['bytes_tx']:>10} {row['bytes_rx']:>10} {row['packets_tx']:>8} {row['packets_rx']:>8}"
    )


class _Output:
    """Prints rows as the user asked: a text table (HEADER first), JSON lines or CSV."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.kind = "json" if args.json else "csv" if args.csv else "text"
        self._csv = csv.writer(sys.stdout) if self.kind == "csv" else None

    def header(self) -> None:
        if self._csv is not None:
            self._csv.writerow(_record_names())
        elif self.kind == "text":
            print(HEADER)
        sys.stdout.flush()

    def row(self, row: Any) -> None:
        if self._csv is not None:
            rec = _record(row)
            self._csv.writerow(rec[name] for name in _record_names())
        else:
            print(json.dumps(_record(row)) if self.kind == "json" else format_row(row))
        sys.stdout.flush()


def _record_names() -> list[str]:
    return [{"start_ms": "start_time", "end_ms": "end_time"}.get(k, k) for k in RECORD_KEYS]


def _query(args: argparse.Namespace) -> int:
    from appliance.bus.query import count_matching, open_reader, query

    conn = open_reader(_db_path(args))
    q = _query_of(args)
    rows = query(conn, q)
    output = _Output(args)
    output.header()
    for row in rows:
        output.row(row)
    order = f"{args.order} stored first"
    matched = count_matching(conn, q) if q.limit is not None and len(rows) >= q.limit else 0
    if matched > len(rows):
        print(
            f"{len(rows):,} of {matched:,} flows shown ({order}); use --limit to see more",
            file=sys.stderr,
        )
    else:
        print(f"{len(rows):,} flows ({order})", file=sys.stderr)
    return 0


def _tail(args: argparse.Namespace) -> int:
    import threading

    from appliance.bus.query import follow, open_reader

    path = _db_path(args)
    q = _query_of(args)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    if not path.parent.is_dir():
        raise CommandError(f"no folder {path.parent} for the bus store: is storage.data_dir right?")
    if not path.exists():  # a tail may start before the bus has created its store
        print(
            f"infraspectre: waiting for the bus to create {path} (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
    while not path.exists():
        if deadline is not None and time.monotonic() > deadline:
            raise CommandError(f"no bus store appeared at {path} within {args.timeout:g} s")
        time.sleep(0.2)
    conn = open_reader(path)
    q.limit = 1000
    if not args.from_start:
        q.after_id = int(conn.execute("SELECT coalesce(max(id), 0) FROM records").fetchone()[0])
    stop = threading.Event()
    if deadline is not None:
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), stop.set)
        timer.daemon = True  # must not keep the process alive once --count is reached
        timer.start()
    output = _Output(args)
    output.header()
    seen = 0
    try:
        for row in follow(conn, q, poll_s=0.25, stop=stop):
            output.row(row)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    finally:
        stop.set()
    return 0


AGENTS_HEADER = (
    f"{'agent':<20} {'state':<6} {'silent':>8} {'version':<10} {'slot':<4} {'records':>10} "
    f"{'seq':>10} {'gaps':>5} {'rst':>4} {'backlog':>8} {'oldest':>8} {'drops':>8} "
    f"{'clock':>8} {'cert':>6} {'forwarder':<11} {'system':<10} {'update':<24}"
)


def _duration(seconds: float | None) -> str:
    """nfdump-like compact durations: 42s, 17m, 5.2h, 3.1d."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def format_agent(v: Any) -> str:
    """One agent as a table line (agent-supplied text made terminal-safe)."""
    cert = "-" if v.cert_days_left is None else f"{v.cert_days_left:.0f}d"
    clock = f"{v.clock_offset_ms / 1000:+.1f}s" if v.state != "never" else "-"
    return (
        f"{terminal_safe(v.agent_id)[:20]:<20} {v.state:<6} {_duration(v.silent_s):>8} "
        f"{terminal_safe(v.version)[:10]:<10} {terminal_safe(v.slot)[:4]:<4} {v.records:>10} "
        f"{v.last_seq:>10} {v.gaps:>5} {v.restarts:>4} {v.wal_backlog_records:>8} "
        f"{_duration(v.wal_oldest_age_s):>8} {v.capture_drops:>8} {clock:>8} {cert:>6} "
        f"{terminal_safe(v.forwarder_state) or '-':<11} "
        f"{terminal_safe(v.system_version)[:10] or '-':<10} "
        f"{terminal_safe(_update_cell(v))[:24]:<24}"
    )


def _update_cell(v: Any) -> str:
    """The box's update state and last result, e.g. `committed` or `idle refused`."""
    if not v.update_state:
        return "-"
    if v.update_result and v.update_result != v.update_state:
        return f"{v.update_state} {v.update_result}"
    return str(v.update_state)


def _agents(args: argparse.Namespace) -> int:
    from appliance.bus.config import load_bus_settings
    from appliance.bus.fleet import fleet_view, load_summaries, with_update_reports
    from appliance.bus.query import open_reader
    from appliance.bus.updates import read_reports
    from appliance.pki.trustmap import load_trust_map

    settings = load_bus_settings(args.config)
    path = Path(args.db) if args.db else settings.storage.data_dir / settings.eventbus.db_name
    conn = open_reader(path)
    trusted: list[str] = []
    trust_path = settings.eventbus.trust_map_path()
    if trust_path.exists():  # never-seen boxes are listed only when the trust map is at hand
        trusted = list(load_trust_map(trust_path).keys)
    silent_after = args.silent_after or settings.eventbus.silent_after_s
    views = fleet_view(load_summaries(conn), trusted, time.time_ns(), silent_after)
    views = with_update_reports(
        views, read_reports(settings.storage.data_dir / settings.eventbus.update.dir)
    )
    if args.json:
        for v in views:
            print(json.dumps(v.as_json()), flush=True)
        return 0
    print(AGENTS_HEADER)
    for v in views:
        print(format_agent(v))
    silent = sum(v.state != "ok" for v in views)
    print(f"{len(views)} agents, {silent} silent or never seen", file=sys.stderr)
    return 0
