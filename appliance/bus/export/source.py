"""What the exporters read: the bus's store, tailed by record id, on a read-only connection.

Only rows the bus has verified and committed are in the store, so only authenticated flows
leave. Record ids grow with every insert (SQLite's rowid: the largest id plus one), so "every
row with an id above N" is exactly what was stored after row N. Counters and health records
advance the position but export nothing. The flow's fields come from the whole signed envelope
kept in the row (packets each way, flags per direction, ICMP, end reason, interface: more than
the row's own columns hold).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from appliance.bus.export.ipfix import Flow, pack_address
from appliance.bus.validate import PROTO_NUMBERS
from appliance.wire import Envelope

ICMP_PROTOCOLS = (1, 58)


@dataclass
class Batch:
    """Flows read in one step, and the highest record id looked at (flow or not)."""

    flows: list[Flow]
    scanned_upto: int


def flow_of(record_id: int, agent_id: str, received_ns: int, envelope: bytes) -> Flow | None:
    """The Flow in a stored envelope (None if it holds none: counters, health)."""
    env = Envelope.FromString(envelope)
    if not env.HasField("flow"):
        return None
    f = env.flow
    protocol = f.ip_proto or _proto_number(f.proto)
    return Flow(
        record_id=record_id,
        agent_id=agent_id,
        src=pack_address(f.src_ip),
        dst=pack_address(f.dst_ip),
        src_port=0 if protocol in ICMP_PROTOCOLS else f.src_port,
        dst_port=0 if protocol in ICMP_PROTOCOLS else f.dst_port,
        protocol=protocol,
        octets_tx=f.bytes_tx,
        packets_tx=f.packets_tx,
        octets_rx=f.bytes_rx,
        packets_rx=f.packets_rx,
        start_ms=f.start_ns // 1_000_000 if f.start_ns else f.start_time,
        end_ms=f.end_ns // 1_000_000 if f.end_ns else f.end_time,
        vlan=f.vlan,
        flags_tx=f.flags_tx if f.flags_tx or f.flags_rx else f.flags,
        flags_rx=f.flags_rx,
        icmp=(f.icmp_type << 8 | f.icmp_code) if protocol in ICMP_PROTOCOLS else 0,
        end_reason=f.end_reason,
        interface=f.interface,
        received_ns=received_ns,
    )


def _proto_number(proto: str) -> int:
    if proto.isdecimal():
        return int(proto)
    return PROTO_NUMBERS.get(proto.upper(), 0)


class StoreReader:
    """A read-only view of the store for one exporter thread (its own connection)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout=5000")

    def close(self) -> None:
        self.conn.close()

    def read(
        self,
        after_id: int,
        limit: int,
        *,
        until_id: int | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
    ) -> Batch:
        """Up to `limit` flows stored after `after_id` (and up to `until_id`; with a sealing
        time in [since_ns, until_ns) when given), oldest first."""
        clauses, args = ["id > ?"], [after_id]
        if until_id is not None:
            clauses.append("id <= ?")
            args.append(until_id)
        if since_ns is not None:
            clauses.append("ts_ns >= ?")
            args.append(since_ns)
        if until_ns is not None:
            clauses.append("ts_ns < ?")
            args.append(until_ns)
        rows = self.conn.execute(
            f"SELECT id, kind, agent_id, received_ns, envelope FROM records "
            f"WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?",
            (*args, limit),
        ).fetchall()
        flows = []
        for record_id, kind, agent_id, received_ns, envelope in rows:
            if kind != "flow":
                continue
            flow = flow_of(record_id, agent_id, received_ns, bytes(envelope))
            if flow is not None:
                flows.append(flow)
        return Batch(flows, rows[-1][0] if rows else after_id)

    def head(self) -> int:
        """The highest record id stored (0: none)."""
        row = self.conn.execute("SELECT max(id) FROM records").fetchone()
        return int(row[0] or 0)

    def first_received_after(self, after_id: int) -> int | None:
        """When the first flow stored after `after_id` was received (UNIX ns), if any."""
        row = self.conn.execute(
            "SELECT received_ns FROM records WHERE id > ? AND kind = 'flow' ORDER BY id LIMIT 1",
            (after_id,),
        ).fetchone()
        return None if row is None else int(row[0])
