"""Offline metering: a capture file through the decoder and the meter, flows out.

The clock is the capture's own: after every batch the meter expires what the last packet's
time allows, and at the end of the file every open flow is ended (SHUTDOWN).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.capture.config import MeterConfig
from appliance.capture.decode import Decoder, DecodeStats
from appliance.capture.flows import FlowBatch
from appliance.capture.meter import FlowMeter, MeterStats
from appliance.capture.pcap import DEFAULT_BATCH, PcapReader


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
    with PcapReader(path, batch_size) as reader:
        for batch in reader.batches():
            cols = decoder.decode(batch)
            ended = meter.add(cols)
            if len(ended):
                yield ended
            expired = meter.expire(meter.clock_ns)
            if len(expired):
                yield expired
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
