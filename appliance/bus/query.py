"""Reading the store: `bus query`, `bus tail` and anything else that looks at stored records.

Readers open their own read-only connections; the store's WAL mode lets them run beside the
bus's writer (appliance.bus.store), which owns the schema.

Filters are checked before anything is read: a protocol or an address that can match nothing
is a CommandError, never "0 flows". `address` is an IP address (matched through the store's
source and destination indexes, in its canonical text form, which is what agents send) or a
network in CIDR form, IPv4 or IPv6 (matched by `ip_in_network`, a SQL function this module
registers on each reader connection, because the store keeps addresses as text).

`--where` takes a filter expression (`parse_where`), a tiny grammar compiled to a
parameterised SQL condition: field names map to fixed column expressions from a whitelist, and
every value the user typed travels as a `?` parameter, never as SQL text.

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := FIELD OP VALUE            OP: = != < <= > >=
    VALUE      := a bare word (192.0.2.7, 10.0.0.0/8, TCP, 443) or a 'quoted' / "quoted" text

Keywords in any case. Fields: agent, proto, src_ip, dst_ip, ip (either), src_port, dst_port,
port (either), vlan, bytes_tx, bytes_rx, bytes (both ways), packets_tx, packets_rx, packets.
Addresses take = and != with an address or a CIDR network; proto = and != with a name or a
number; agent = and !=; numeric fields every operator. A mistake is one CommandError naming
what was expected and where (`--where: expected an operator after 'port' at 5`).
"""

from __future__ import annotations

import functools
import ipaddress
import re
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
    where: str | None = None  # a filter expression (parse_where)


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
    if q.where is not None:
        sql, where_args = parse_where(q.where)
        clauses.append(f"({sql})")
        args += where_args
    return " AND ".join(clauses), args


# -- --where ---------------------------------------------------------------------------

#: Fields of a filter expression -> the column expressions they compare (a fixed whitelist:
#: nothing the user typed becomes SQL text).
_NUMERIC = {
    "src_port": ("src_port",),
    "dst_port": ("dst_port",),
    "port": ("src_port", "dst_port"),
    "vlan": ("vlan",),
    "bytes_tx": ("bytes_tx",),
    "bytes_rx": ("bytes_rx",),
    "bytes": ("(bytes_tx + bytes_rx)",),
    "packets_tx": ("packets_tx",),
    "packets_rx": ("packets_rx",),
    "packets": ("(packets_tx + packets_rx)",),
}
_ADDRESS = {"src_ip": ("src_ip",), "dst_ip": ("dst_ip",), "ip": ("src_ip", "dst_ip")}
_TEXT = {"agent": "agent_id"}
FIELDS = (*_NUMERIC, *_ADDRESS, *_TEXT, "proto")
_OPS = ("<=", ">=", "!=", "=", "<", ">")
_TOKEN = re.compile(
    r"\s*(?:(?P<paren>[()])|(?P<op><=|>=|!=|=|<|>)|'(?P<sq>[^']*)'|\"(?P<dq>[^\"]*)\""
    r"|(?P<word>[A-Za-z0-9_.:/-]+))"
)
#: Bounds on an expression, so that a pasted accident cannot build a giant query.
MAX_WHERE_CHARS = 2000
MAX_WHERE_DEPTH = 32


def parse_where(text: str) -> tuple[str, list[Any]]:
    """A filter expression (module docstring) as (SQL condition with ? placeholders, args)."""
    if len(text) > MAX_WHERE_CHARS:
        raise CommandError(f"--where: longer than {MAX_WHERE_CHARS} characters")
    parser = _WhereParser(_tokens(text))
    sql = parser.expr(0)
    if parser.peek() is not None:
        raise parser.error("'and', 'or' or the end")
    return sql, parser.args


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, position) for each token; kind is paren, op, value (quoted) or word."""
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            at = len(text) - len(text[pos:].lstrip())
            raise CommandError(f"--where: cannot read {text[at : at + 10]!r} at {at}")
        kind = m.lastgroup or "word"
        value = m.group(kind)
        out.append(("value" if kind in ("sq", "dq") else kind, value, m.start(kind)))
        pos = m.end()
    return out


class _WhereParser:
    """Recursive descent over the tokens; collects the SQL and its arguments."""

    def __init__(self, tokens: list[tuple[str, str, int]]) -> None:
        self.tokens = tokens
        self.i = 0
        self.args: list[Any] = []

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def error(self, expected: str) -> CommandError:
        tok = self.peek()
        if tok is None:
            return CommandError(f"--where: expected {expected} at the end")
        return CommandError(f"--where: expected {expected}, found {tok[1]!r} at {tok[2]}")

    def _keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "word" and tok[1].lower() == word:
            self.i += 1
            return True
        return False

    def expr(self, depth: int) -> str:
        if depth > MAX_WHERE_DEPTH:
            raise CommandError(f"--where: nested deeper than {MAX_WHERE_DEPTH}")
        parts = [self.and_expr(depth)]
        while self._keyword("or"):
            parts.append(self.and_expr(depth))
        return " OR ".join(parts) if len(parts) > 1 else parts[0]

    def and_expr(self, depth: int) -> str:
        parts = [self.not_expr(depth)]
        while self._keyword("and"):
            parts.append(self.not_expr(depth))
        return " AND ".join(parts) if len(parts) > 1 else parts[0]

    def not_expr(self, depth: int) -> str:
        if self._keyword("not"):
            return f"NOT ({self.not_expr(depth + 1)})"
        tok = self.peek()
        if tok is not None and tok[:2] == ("paren", "("):
            self.i += 1
            inner = self.expr(depth + 1)
            tok = self.peek()
            if tok is None or tok[:2] != ("paren", ")"):
                raise self.error("')'")
            self.i += 1
            return f"({inner})"
        return self.comparison()

    def comparison(self) -> str:
        tok = self.peek()
        if tok is None or tok[0] != "word" or tok[1].lower() not in FIELDS:
            raise self.error(f"a field ({', '.join(FIELDS)})")
        field = tok[1].lower()
        self.i += 1
        tok = self.peek()
        if tok is None or tok[0] != "op":
            raise self.error(f"an operator after {field!r} ({' '.join(_OPS)})")
        op = tok[1]
        self.i += 1
        tok = self.peek()
        if tok is None or tok[0] not in ("word", "value"):
            raise self.error(f"a value after {field} {op}")
        self.i += 1
        return self._compile(field, op, tok[1])

    def _compile(self, field: str, op: str, value: str) -> str:
        if field in _NUMERIC:
            try:
                number = int(value)
            except ValueError:
                raise CommandError(
                    f"--where: {field} takes a whole number, not {value!r}"
                ) from None
            cols = _NUMERIC[field]
            self.args += [number] * len(cols)
            return _any(f"{col} {op} ?" for col in cols)
        if op not in ("=", "!="):
            raise CommandError(f"--where: {field} takes = or !=, not {op}")
        negate = "NOT " if op == "!=" else ""
        if field == "proto":
            try:
                values = parse_proto(value)
            except CommandError as exc:
                raise CommandError(f"--where: {exc}") from None
            self.args += values
            return f"{negate}coalesce(proto IN ({', '.join('?' for _ in values)}), 0)"
        if field in _TEXT:
            self.args.append(value)
            return f"{negate}coalesce({_TEXT[field]} = ?, 0)"
        try:
            net = parse_address(value)
        except CommandError as exc:
            raise CommandError(
                f"--where: {str(exc).replace('--address ', field + ' ', 1)}"
            ) from None
        cols = _ADDRESS[field]
        if net.num_addresses == 1:
            self.args += [normal_ip(str(net.network_address))] * len(cols)
            test = _any(f"{col} = ?" for col in cols)
        else:
            self.args += [str(net)] * len(cols)
            test = _any(f"ip_in_network({col}, ?)" for col in cols)
        return f"{negate}coalesce({test}, 0)"


def _any(tests: Any) -> str:
    parts = list(tests)
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


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
