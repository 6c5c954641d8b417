"""Offline metering: a capture file through the decoder and the meter, flows out.

The clock is the capture's own: after every batch the meter expires what the last packet's
time allows, and at the end of the file every open flow is ended (SHUTDOWN).

`iter_pcap_flows` yields FlowBatches as the meter ends them (a batch is in table order, which
is what the benches and totals want); `iter_pcap_ordered` yields FlowBatches in the order the
flows ended, by last packet (then first packet, then the key: END_ORDER_TIES), which is
what a person reading `flows` output expects, as from nfdump, and `iter_pcap_records` the
same as FlowRecords. They hold back a flow until no flow still open could end earlier: at
most about idle_timeout_s of capture time's flows, kept as columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from appliance.capture.config import MeterConfig
from appliance.capture.decode import Decoder, DecodeStats, PacketColumns
from appliance.capture.flows import FLOW_COLUMNS, FlowBatch, FlowRecord
from appliance.capture.meter import NONE_NS, FlowMeter, MeterStats
from appliance.capture.pcap import DEFAULT_BATCH, PcapReader

EXPIRE_EVERY_NS = 5_000_000_000
#: Decoded packets gathered before the meter runs (bigger groups, fewer table updates).
METER_BATCH = 16384


@dataclass
class OfflineSummary:
    """What metering a file saw (the flows themselves were yielded)."""

    frames: int
    decode: DecodeStats
    meter: MeterStats
    #: Bytes of a record cut short at the end of the file (0: the file ends cleanly).
    cut_bytes: int = 0


def iter_pcap_flows(
    path: Path, config: MeterConfig | None = None, batch_size: int = DEFAULT_BATCH
) -> Iterator[FlowBatch | OfflineSummary]:
    """Yield FlowBatches as flows end, then one OfflineSummary as the last item."""
    for item in _meter_file(path, config, batch_size):
        yield item if isinstance(item, OfflineSummary) else item[0]


def iter_pcap_ordered(
    path: Path, config: MeterConfig | None = None, batch_size: int = DEFAULT_BATCH
) -> Iterator[FlowBatch | OfflineSummary]:
    """Yield FlowBatches in the order the flows ended (last packet, then first packet, then
    END_ORDER_TIES), then one OfflineSummary as the last item."""
    held = FlowBatch.empty()
    for item in _meter_file(path, config, batch_size, in_end_order=True):
        if isinstance(item, OfflineSummary):
            if len(held):
                yield held
            yield item
            return
        batch, watermark = item
        held = _merge_in_end_order(held, batch)
        ready = int(np.searchsorted(held.cols["end_ns"], watermark, side="left"))
        if ready:
            yield held.take(slice(0, ready))
            held = held.take(slice(ready, None))


def _merge_in_end_order(held: FlowBatch, new: FlowBatch) -> FlowBatch:
    """held then new, in the canonical end order (END_ORDER: last packet, first packet, then
    the key columns and the reason), which does not depend on the order a table ended its
    flows, so the native meter writes the same lines (_fastpath.c's end_order). Consumes
    both: each column is built and its inputs dropped before the next, so the work needs one
    column's room, not a second copy of every held flow (at 100k held flows that copy was
    ~20 MB of peak RSS)."""
    if not len(new):
        return held
    end = np.concatenate([held.cols["end_ns"], new.cols["end_ns"]])
    start = np.concatenate([held.cols["start_ns"], new.cols["start_ns"]])
    order = np.lexsort((start, end))
    # Ties on (end, start) are few: only they are ordered by the other columns.
    e, s = end[order], start[order]
    tie = (e[1:] == e[:-1]) & (s[1:] == s[:-1])
    del end, start, e, s
    if tie.any():
        order = _break_ties(held, new, order, tie)
    out = {}
    for name in FLOW_COLUMNS:
        out[name] = np.concatenate([held.cols.pop(name), new.cols.pop(name)])[order]
    return FlowBatch(out)


#: The columns that order flows with the same (end_ns, start_ns), most significant first.
END_ORDER_TIES = (
    "vlan",
    "ipver",
    "proto",
    "a_hi",
    "a_lo",
    "b_hi",
    "b_lo",
    "port_a",
    "port_b",
    "reason",
)


def _break_ties(
    held: FlowBatch, new: FlowBatch, order: npt.NDArray[np.intp], tie: npt.NDArray[np.bool_]
) -> npt.NDArray[np.intp]:
    """order (by end, then start) with each run of equal (end, start) ordered by
    END_ORDER_TIES. tie[i]: positions i and i + 1 of order hold equal (end, start)."""
    in_run = np.zeros(len(order), dtype=np.bool_)
    in_run[:-1] |= tie
    in_run[1:] |= tie
    pos = np.flatnonzero(in_run)
    rows = order[pos]
    run = np.cumsum(np.concatenate(([True], ~tie[pos[:-1]])))  # a run id per tied position
    keys = [
        np.concatenate([held.cols[name], new.cols[name]])[rows] for name in reversed(END_ORDER_TIES)
    ]
    order = order.copy()
    order[pos] = rows[np.lexsort((*keys, run))]
    return order


def iter_pcap_records(
    path: Path, config: MeterConfig | None = None, batch_size: int = DEFAULT_BATCH
) -> Iterator[list[FlowRecord] | OfflineSummary]:
    """iter_pcap_ordered's flows as lists of FlowRecords, then the OfflineSummary."""
    for item in iter_pcap_ordered(path, config, batch_size):
        yield item if isinstance(item, OfflineSummary) else item.records()


def _meter_file(
    path: Path, config: MeterConfig | None, batch_size: int, in_end_order: bool = False
) -> Iterator[tuple[FlowBatch, int] | OfflineSummary]:
    """(ended flows, watermark) as flows end, then the summary. No flow ended later has a last
    packet before the watermark (FlowMeter.oldest_open_ns, else the clock). in_end_order: the
    flows open at the end come in end order, in pieces (FlowMeter.flush_in_end_order)."""
    decoder = Decoder()
    meter = FlowMeter(config)
    last_expire = 0
    size = min(METER_BATCH, batch_size)
    with PcapReader(path, batch_size) as reader:
        pending: list[PacketColumns] = []
        pending_n = 0
        for batch in reader.batches():
            cols = decoder.decode(batch)
            pending.append(cols)
            pending_n += len(cols)
            while pending_n >= size:
                head, pending = _split_rows(pending, size)
                pending_n -= size
                ended = meter.add(head)
                del head
                # Expiry timing never changes a record (meter docstring); a full table
                # expires what is due by itself. So: once every EXPIRE_EVERY_NS of capture
                # time.
                if meter.clock_ns - last_expire >= EXPIRE_EVERY_NS:
                    last_expire = meter.clock_ns
                    ended = FlowBatch.concat([ended, meter.expire(last_expire)])
                if len(ended):
                    yield ended, _watermark(meter)
        if pending:
            ended = meter.add(PacketColumns.concat(pending))
            if len(ended):
                yield ended, _watermark(meter)
        frames, cut = reader.frames, reader.cut_bytes
    if not in_end_order:
        last = meter.flush()
        if len(last):
            yield last, NONE_NS
    else:
        # In end order and in pieces: every piece's flows end no earlier than the last one's.
        for piece in meter.flush_in_end_order():
            yield piece, int(piece.cols["end_ns"][-1])
    yield OfflineSummary(frames=frames, decode=decoder.stats, meter=meter.stats, cut_bytes=cut)


def _split_rows(parts: list[PacketColumns], n: int) -> tuple[PacketColumns, list[PacketColumns]]:
    """The first n rows of parts (which hold at least n) and the rest. Rows are taken as
    views where one part holds them: the meter's batch is exactly n packets, whatever the
    decoder's chunks were, which bounds its working memory (METER_BATCH)."""
    head: list[PacketColumns] = []
    got = 0
    while got < n:
        part = parts[0]
        want = n - got
        if len(part) <= want:
            head.append(parts.pop(0))
            got += len(part)
        else:
            head.append(part.take(slice(0, want)))
            parts[0] = part.take(slice(want, None))
            got = n
    return (head[0] if len(head) == 1 else PacketColumns.concat(head)), parts


def _watermark(meter: FlowMeter) -> int:
    oldest = meter.oldest_open_ns
    return meter.clock_ns if oldest is None else oldest


def meter_pcap(
    path: Path, config: MeterConfig | None = None, batch_size: int = DEFAULT_BATCH
) -> tuple[FlowBatch, OfflineSummary]:
    """All flows of a capture file in one FlowBatch, and the summary."""
    parts: list[FlowBatch] = []
    summary: OfflineSummary | None = None
    for item in iter_pcap_flows(path, config, batch_size):
        if isinstance(item, OfflineSummary):
            summary = item
        else:
            parts.append(item)
    assert summary is not None
    return FlowBatch.concat(parts), summary
