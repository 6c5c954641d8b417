"""Reading the store: `bus query`, `bus tail` and anything else that looks at stored records.

Readers open their own read-only connections; the store's WAL mode lets them run beside the
bus's writer (appliance.bus.store), which owns the schema.

Filters are checked before anything is read: a protocol or an address that can match nothing
is a CommandError, never "0 flows". `address` is an IP address (matched through the store's
source and destination indexes, in its canonical text form, which is what agents send) or a
network in CIDR form, IPv4 or IPv6 (matched by `ip_in_network`, a SQL function this module
registers on each reader connection, because the store keeps addresses as text).
"""

from __future__ import annotations

import functools
import ipaddress
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bus.validate import PROTO_NUMBERS, normal_ip
from appliance.errors import CommandError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Query:
    """Filters of `bus query` / `bus tail`; None means no filter."""

    agent: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    address: str | None = None
    port: int | None = None
    proto: str | None = None
    kind: str | None = "flow"
    after_id: int = 0
    limit: int | None = 1000
    newest_first: bool = False


def parse_address(text: str) -> IPNetwork:
    """An address (a network of one) or a CIDR network; CommandError when it is neither."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise CommandError(
                f"--address {text!r} has host bits set: did you mean "
                f"{ipaddress.ip_network(text.strip(), strict=False)}?"
            ) from None
        raise CommandError(
            f"--address {text!r} is not an IP address or network "
            "(e.g. 192.0.2.7, 10.0.0.0/8, 2001:db8::/32)"
        ) from None


def parse_proto(text: str) -> list[str]:
    """The stored values that mean a protocol given by name (any case) or number 0-255: its
    name and its decimal number, since a sender may write either (the bus accepts both)."""
    name = text.strip().upper()
    if name.isdigit() and int(name) <= 255:
        number = int(name)
        names = [n for n, v in PROTO_NUMBERS.items() if v == number]
        return [*names, str(number)]
    if name in PROTO_NUMBERS:
        return [name, str(PROTO_NUMBERS[name])]
    known = ", ".join(sorted(PROTO_NUMBERS))
    raise CommandError(f"unknown protocol {text!r}: use {known} or a number 0-255")


@functools.lru_cache(maxsize=64)
def _network(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


def ip_in_network(address: object, network: str) -> int:
    """SQL function: 1 if the stored text address is inside network, else 0 (never raises:
    a value that is not an address, or NULL, is simply outside)."""
    if not isinstance(address, str):
        return 0
    try:
        return int(ipaddress.ip_address(address) in _network(network))
    except ValueError:
        return 0


def _where(q: Query) -> tuple[str, list[Any]]:
    clauses: list[str] = ["id > ?"]
    args: list[Any] = [q.after_id]
    if q.kind is not None:
        clauses.append("kind = ?")
        args.append(q.kind)
    if q.agent is not None:
        clauses.append("agent_id = ?")
        args.append(q.agent)
    if q.since_ns is not None:
        clauses.append("ts_ns >= ?")
        args.append(q.since_ns)
    if q.until_ns is not None:
        clauses.append("ts_ns < ?")
        args.append(q.until_ns)
    if q.address is not None:
        net = parse_address(q.address)
        if net.num_addresses == 1:  # one address: the indexes on src_ip and dst_ip serve it
            clauses.append("(src_ip = ? OR dst_ip = ?)")
            args += [normal_ip(str(net.network_address))] * 2  # the form the bus stores
        else:
            clauses.append("(ip_in_network(src_ip, ?) OR ip_in_network(dst_ip, ?))")
            args += [str(net)] * 2
    if q.port is not None:
        clauses.append("(src_port = ? OR dst_port = ?)")
        args += [q.port, q.port]
    if q.proto is not None:
        values = parse_proto(q.proto)
        clauses.append(f"proto IN ({', '.join('?' for _ in values)})")
        args += values
    return " AND ".join(clauses), args


def open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection to an existing store; CommandError naming the file if there is
    none or it is not a bus store (another SQLite file, a capture, anything else)."""
    if not path.exists():
        raise CommandError(f"no bus store at {path}: is storage.data_dir right?")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise CommandError(f"cannot open {path}: {exc}") from None
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=5000")
        conn.create_function("ip_in_network", 2, ip_in_network, deterministic=True)
        conn.execute("SELECT id, kind, src_ip, dst_ip, proto FROM records LIMIT 0").fetchall()
    except sqlite3.Error as exc:
        conn.close()
        raise CommandError(f"{path} is not a bus store ({exc})") from None
    return conn


def query(conn: sqlite3.Connection, q: Query) -> list[sqlite3.Row]:
    """Rows matching q in the order they were stored, oldest first (or newest first)."""
    where, args = _where(q)
    sql = f"SELECT * FROM records WHERE {where} ORDER BY id{' DESC' if q.newest_first else ''}"
    if q.limit is not None:
        sql += " LIMIT ?"
        args.append(q.limit)
    return list(conn.execute(sql, args))


def count_matching(conn: sqlite3.Connection, q: Query) -> int:
    """How many rows match q, whatever its limit."""
    where, args = _where(q)
    return int(conn.execute(f"SELECT count(*) FROM records WHERE {where}", args).fetchone()[0])


def follow(
    conn: sqlite3.Connection, q: Query, *, poll_s: float = 0.5, stop: threading.Event | None = None
) -> Iterator[sqlite3.Row]:
    """Yield matching rows as they are stored, forever or until stop is set."""
    while stop is None or not stop.is_set():
        rows = query(conn, q)
        for row in rows:
            q.after_id = row["id"]
            yield row
        if not rows:
            if stop is not None:
                stop.wait(poll_s)
            else:
                time.sleep(poll_s)


def count(conn: sqlite3.Connection) -> int:
    """Number of stored records."""
    return int(conn.execute("SELECT count(*) FROM records").fetchone()[0])
