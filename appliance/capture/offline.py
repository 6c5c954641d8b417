"""Offline metering: a capture file through the decoder and the meter, flows out.

The clock is the capture's own: after every batch the meter expires what the last packet's
time allows, and at the end of the file every open flow is ended (SHUTDOWN).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.capture.config import MeterConfig
from appliance.capture.decode import Decoder, DecodeStats, PacketColumns
from appliance.capture.flows import FlowBatch
from appliance.capture.meter import FlowMeter, MeterStats
from appliance.capture.pcap import DEFAULT_BATCH, PcapReader

EXPIRE_EVERY_NS = 5_000_000_000
#: Decoded packets gathered before the meter runs (bigger groups, fewer table updates).
METER_BATCH = 32768


@dataclass
class OfflineSummary:
    """What metering a file saw (the flows themselves were yielded)."""

    frames: int
    decode: DecodeStats
    meter: MeterStats


def iter_pcap_flows(
    path: Path, config: MeterConfig | None = None, batch_size: int = DEFAULT_BATCH
) -> Iterator[FlowBatch | OfflineSummary]:
    """Yield FlowBatches as flows end, then one OfflineSummary as the last item."""
    decoder = Decoder()
    meter = FlowMeter(config)
    last_expire = 0
    with PcapReader(path, batch_size) as reader:
        pending: list[PacketColumns] = []
        pending_n = 0
        for batch in reader.batches():
            cols = decoder.decode(batch)
            pending.append(cols)
            pending_n += len(cols)
            if pending_n < min(METER_BATCH, batch_size):
                continue
            ended = meter.add(PacketColumns.concat(pending) if len(pending) > 1 else cols)
            pending, pending_n = [], 0
            if len(ended):
                yield ended
            # Expiry timing never changes a record (meter docstring); a full table expires
            # what is due by itself. So: once every EXPIRE_EVERY_NS of capture time.
            if meter.clock_ns - last_expire >= EXPIRE_EVERY_NS:
                last_expire = meter.clock_ns
                expired = meter.expire(last_expire)
                if len(expired):
                    yield expired
        if pending:
            ended = meter.add(PacketColumns.concat(pending))
            if len(ended):
                yield ended
        frames = reader.frames
    last = meter.flush()
    if len(last):
        yield last
    yield OfflineSummary(frames=frames, decode=decoder.stats, meter=meter.stats)


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
