"""Ended flows: the columnar `FlowBatch` the meter emits and the `FlowRecord` users read.

A FlowBatch holds ended flows as numpy columns in canonical-key form (endpoints A <= B, counts
per direction A->B and B->A, plus which side initiated). `records()` turns it into FlowRecords,
which speak initiator/responder (tx = initiator -> responder) like the wire's FlowEvent;
`to_flow_event` converts one record to the wire message.
"""

from __future__ import annotations

import enum
import json
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from appliance.capture.decode import ICMP, ICMP_KEY_BIT, ICMPV6, TCP

if TYPE_CHECKING:
    from appliance.wire import FlowEvent

try:  # the compiled JSON writer (setup.py builds it); json.dumps per record without it
    from appliance.capture import _fastpath
except ImportError:  # pragma: no cover (a checkout without `make venv`)
    _fastpath = None  # type: ignore[assignment]

PROTO_NAMES = {TCP: "TCP", 17: "UDP", ICMP: "ICMP", ICMPV6: "ICMPV6", 132: "SCTP", 47: "GRE"}


#: TCP flag letters, most significant bit first, in nfdump's (1.7) order and layout.
TCP_FLAG_LETTERS = "CEUAPRSF"


def tcp_flag_letters(flags: int) -> str:
    """TCP flags as nfdump prints them: a letter per flag set, a dot per flag not set
    (CWR ECE URG ACK PSH RST SYN FIN): 0x1b -> "...AP.SF"."""
    return "".join(
        letter if flags & (0x80 >> i) else "." for i, letter in enumerate(TCP_FLAG_LETTERS)
    )


class EndReason(enum.IntEnum):
    """Why a flow record was ended; values equal the wire's FlowEvent.EndReason."""

    IDLE_TIMEOUT = 1
    ACTIVE_TIMEOUT = 2
    TCP_FIN = 3
    TCP_RST = 4
    EVICTED = 5
    SHUTDOWN = 6


#: Columns of a FlowBatch and their dtypes.
FLOW_COLUMNS: dict[str, type[np.generic]] = {
    "vlan": np.uint16,
    "ipver": np.uint8,
    "proto": np.uint8,
    "a_hi": np.uint64,
    "a_lo": np.uint64,
    "b_hi": np.uint64,
    "b_lo": np.uint64,
    "port_a": np.uint32,
    "port_b": np.uint32,
    "init_b": np.bool_,
    "icmp_type": np.uint8,
    "icmp_code": np.uint8,
    "pkts_ab": np.int64,
    "pkts_ba": np.int64,
    "bytes_ab": np.int64,
    "bytes_ba": np.int64,
    "flags_ab": np.uint8,
    "flags_ba": np.uint8,
    "start_ns": np.int64,
    "end_ns": np.int64,
    "reason": np.uint8,
}


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """One ended flow, initiator's point of view (tx = initiator -> responder).

    ICMP: src_port is 0, dst_port is type << 8 | code of the flow's first packet, icmp_id the
    echo identifier (0 for non-echo messages). Byte counts are IP total lengths.
    """

    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    ip_proto: int
    ip_version: int
    vlan: int
    packets_tx: int
    packets_rx: int
    bytes_tx: int
    bytes_rx: int
    flags_tx: int
    flags_rx: int
    start_ns: int
    end_ns: int
    icmp_type: int
    icmp_code: int
    icmp_id: int
    end_reason: EndReason

    @property
    def proto(self) -> str:
        """ "TCP", "UDP", "ICMP", "ICMPV6", ... or the decimal protocol number."""
        return PROTO_NAMES.get(self.ip_proto, str(self.ip_proto))

    @property
    def flags(self) -> int:
        return self.flags_tx | self.flags_rx

    @property
    def start_time(self) -> int:
        """First packet, UNIX epoch milliseconds."""
        return self.start_ns // 1_000_000

    @property
    def end_time(self) -> int:
        return self.end_ns // 1_000_000

    @property
    def duration_ms(self) -> int:
        return self.end_time - self.start_time

    def to_json_dict(self, interface: str = "") -> dict[str, object]:
        """FlowEvent's field names (docs/FLOWS.md), JSON-ready."""
        return {
            "src_ip": self.src_ip,
            "dst_ip": self.dst_ip,
            "src_port": self.src_port,
            "dst_port": self.dst_port,
            "proto": self.proto,
            "bytes_tx": self.bytes_tx,
            "bytes_rx": self.bytes_rx,
            "packets_tx": self.packets_tx,
            "packets_rx": self.packets_rx,
            "duration_ms": self.duration_ms,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "flags": self.flags,
            "flags_tx": self.flags_tx,
            "flags_rx": self.flags_rx,
            "vlan": self.vlan,
            "ip_version": self.ip_version,
            "ip_proto": self.ip_proto,
            "icmp_type": self.icmp_type,
            "icmp_code": self.icmp_code,
            "icmp_id": self.icmp_id,
            "end_reason": self.end_reason.name,
            "interface": interface,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
        }


def to_flow_event(rec: FlowRecord, interface: str = "") -> FlowEvent:
    """The wire FlowEvent for rec (the wire module is imported on first use: it is heavy)."""
    from appliance.wire import FlowEvent

    return FlowEvent(
        src_ip=rec.src_ip,
        dst_ip=rec.dst_ip,
        src_port=rec.src_port,
        dst_port=rec.dst_port,
        proto=rec.proto,
        bytes_tx=rec.bytes_tx,
        bytes_rx=rec.bytes_rx,
        duration_ms=rec.duration_ms,
        start_time=rec.start_time,
        end_time=rec.end_time,
        flags=rec.flags,
        packets_tx=rec.packets_tx,
        packets_rx=rec.packets_rx,
        vlan=rec.vlan,
        ip_version=rec.ip_version,
        ip_proto=rec.ip_proto,
        icmp_type=rec.icmp_type,
        icmp_code=rec.icmp_code,
        icmp_id=rec.icmp_id,
        flags_tx=rec.flags_tx,
        flags_rx=rec.flags_rx,
        end_reason=rec.end_reason.name,
        interface=interface,
        start_ns=rec.start_ns,
        end_ns=rec.end_ns,
    )


class FlowBatch:
    """Ended flows as columns (see FLOW_COLUMNS); cheap to concatenate and total."""

    __slots__ = ("cols",)

    def __init__(self, cols: dict[str, npt.NDArray[Any]]) -> None:
        self.cols = cols

    @staticmethod
    def empty() -> FlowBatch:
        return FlowBatch({k: np.zeros(0, dtype=t) for k, t in FLOW_COLUMNS.items()})

    @staticmethod
    def concat(parts: list[FlowBatch]) -> FlowBatch:
        parts = [p for p in parts if len(p)]
        if not parts:
            return FlowBatch.empty()
        if len(parts) == 1:
            return parts[0]
        return FlowBatch({k: np.concatenate([p.cols[k] for p in parts]) for k in FLOW_COLUMNS})

    def __len__(self) -> int:
        return len(self.cols["start_ns"])

    def take(self, idx: npt.NDArray[np.intp] | slice) -> FlowBatch:
        """The flows at idx (an index array or a slice), in that order."""
        return FlowBatch({k: v[idx] for k, v in self.cols.items()})

    def json_lines(self) -> bytes:
        """One line per flow, `json.dumps(record.to_json_dict())` for each of records(), as
        UTF-8. The compiled writer makes the same bytes without building the records (it was
        most of `flows --pcap --json`'s CPU); tests compare the two."""
        if _fastpath is None:
            return self.json_lines_python()
        cols = tuple(
            np.ascontiguousarray(self.cols[name], dtype=dtype)
            for name, dtype in FLOW_COLUMNS.items()
        )
        return _fastpath.flows_json(cols)

    def json_lines_python(self) -> bytes:
        """json_lines without the compiled writer: the reference it is tested against."""
        return "".join(json.dumps(r.to_json_dict()) + "\n" for r in self.records()).encode()

    @property
    def packets(self) -> int:
        return int(self.cols["pkts_ab"].sum() + self.cols["pkts_ba"].sum())

    @property
    def bytes(self) -> int:
        return int(self.cols["bytes_ab"].sum() + self.cols["bytes_ba"].sum())

    def totals_by_proto(self) -> dict[str, dict[str, int]]:
        """{proto name: {"flows", "packets", "bytes"}} over this batch."""
        out: dict[str, dict[str, int]] = {}
        proto = self.cols["proto"]
        pk = self.cols["pkts_ab"] + self.cols["pkts_ba"]
        by = self.cols["bytes_ab"] + self.cols["bytes_ba"]
        for p in np.unique(proto).tolist():
            m = proto == p
            out[PROTO_NAMES.get(p, str(p))] = {
                "flows": int(m.sum()),
                "packets": int(pk[m].sum()),
                "bytes": int(by[m].sum()),
            }
        return out

    def records(self) -> list[FlowRecord]:
        """The flows as FlowRecords, in batch order."""
        k = self.cols
        ib = k["init_b"]

        def pick(when_b: str, when_a: str) -> list[int]:
            """Initiator-side column: when_b where B initiated, else when_a."""
            return np.where(ib, k[when_b], k[when_a]).tolist()  # type: ignore[no-any-return]

        s_hi, s_lo = pick("b_hi", "a_hi"), pick("b_lo", "a_lo")
        d_hi, d_lo = pick("a_hi", "b_hi"), pick("a_lo", "b_lo")
        s_port, d_port = pick("port_b", "port_a"), pick("port_a", "port_b")
        p_tx, p_rx = pick("pkts_ba", "pkts_ab"), pick("pkts_ab", "pkts_ba")
        b_tx, b_rx = pick("bytes_ba", "bytes_ab"), pick("bytes_ab", "bytes_ba")
        f_tx, f_rx = pick("flags_ba", "flags_ab"), pick("flags_ab", "flags_ba")
        plain = ("ipver", "proto", "vlan", "icmp_type", "icmp_code", "start_ns", "end_ns", "reason")
        c = {name: k[name].tolist() for name in plain}
        out: list[FlowRecord] = []
        ntop = socket.inet_ntop
        for i in range(len(self)):
            v6 = c["ipver"][i] == 6
            if v6:
                src = ntop(socket.AF_INET6, (s_hi[i] << 64 | s_lo[i]).to_bytes(16, "big"))
                dst = ntop(socket.AF_INET6, (d_hi[i] << 64 | d_lo[i]).to_bytes(16, "big"))
            else:
                src = ntop(socket.AF_INET, s_lo[i].to_bytes(4, "big"))
                dst = ntop(socket.AF_INET, d_lo[i].to_bytes(4, "big"))
            proto = c["proto"][i]
            sp, dp = s_port[i], d_port[i]
            itype, icode, iid = c["icmp_type"][i], c["icmp_code"][i], 0
            if (proto == ICMP and not v6) or (proto == ICMPV6 and v6):
                iid = sp if sp < ICMP_KEY_BIT else 0
                sp, dp = 0, itype << 8 | icode
            out.append(
                FlowRecord(
                    src_ip=src,
                    dst_ip=dst,
                    src_port=sp,
                    dst_port=dp,
                    ip_proto=proto,
                    ip_version=c["ipver"][i],
                    vlan=c["vlan"][i],
                    packets_tx=p_tx[i],
                    packets_rx=p_rx[i],
                    bytes_tx=b_tx[i],
                    bytes_rx=b_rx[i],
                    flags_tx=f_tx[i],
                    flags_rx=f_rx[i],
                    start_ns=c["start_ns"][i],
                    end_ns=c["end_ns"][i],
                    icmp_type=itype,
                    icmp_code=icode,
                    icmp_id=iid,
                    end_reason=EndReason(c["reason"][i]),
                )
            )
        return out
