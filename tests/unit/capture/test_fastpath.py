"""The compiled record walk and JSON writer (appliance/capture/_fastpath.c) make exactly what
the pure-Python code they replace makes, on the same inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.capture import _fastpath
from appliance.capture.flows import FLOW_COLUMNS, FlowBatch
from appliance.capture.offline import iter_pcap_ordered, meter_pcap
from appliance.capture.pcap import PcapReader
from appliance.capture.synth import generate


@pytest.fixture(scope="module")
def synth_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fastpath") / "synth.pcap"
    generate(path, seed=11, packets=30_000, flows=1_500)
    return path


def test_native_walk_finds_the_records_the_python_walk_finds(synth_capture: Path) -> None:
    buf = bytearray(synth_capture.read_bytes()[24:])
    end = len(buf) - 7  # cut inside the last record: both must stop before it
    for limit in (1, 5, 1000, 10**9):
        want, want_pos = PcapReader._walk_le(buf, 0, end, limit)
        got, got_pos = PcapReader._walk_native(buf, 0, end, limit)
        assert list(got) == want and got_pos == want_pos


def test_native_walk_refuses_an_output_too_short() -> None:
    buf = bytearray(16 * 4)  # four records of caplen 0
    with pytest.raises(ValueError, match="too short"):
        _fastpath.walk_le(buf, 0, len(buf), 10, np.empty(2, dtype=np.int64))


def test_native_json_lines_equal_json_dumps_of_every_record(synth_capture: Path) -> None:
    flows, _ = meter_pcap(synth_capture)
    assert {"TCP", "UDP", "ICMP", "ICMPV6"} <= set(flows.totals_by_proto())
    # Both initiator sides, IPv4 and IPv6, ICMP keys with and without an echo id, odd protocols
    # and every end reason.
    cols = dict(flows.cols)
    n = len(flows)
    cols["init_b"] = np.arange(n) % 2 == 0
    cols["proto"] = cols["proto"].copy()
    cols["proto"][:7] = [132, 47, 200, 1, 58, 1, 58]
    cols["port_a"] = cols["port_a"].copy()
    cols["port_a"][3:5] = 0x10000 | 0x0800
    cols["reason"] = (np.arange(n) % 6 + 1).astype(np.uint8)
    batch = FlowBatch(cols)
    assert batch.json_lines() == batch.json_lines_python()
    # Non-contiguous columns (a slice with a step) are copied, not misread.
    stepped = batch.take(slice(1, None, 3))
    assert stepped.json_lines() == stepped.json_lines_python()
    assert FlowBatch.empty().json_lines() == b""


def test_native_json_refuses_an_unknown_end_reason() -> None:
    cols = {k: np.zeros(1, dtype=t) for k, t in FLOW_COLUMNS.items()}
    cols["reason"][0] = 9
    with pytest.raises(ValueError, match="9 is not a valid EndReason"):
        FlowBatch(cols).json_lines()
    with pytest.raises(ValueError, match="9 is not a valid EndReason"):
        FlowBatch(cols).json_lines_python()


def test_ordered_batches_hold_every_flow_once_in_end_order(synth_capture: Path) -> None:
    flows, _ = meter_pcap(synth_capture)
    parts = [
        b for b in iter_pcap_ordered(synth_capture, batch_size=2048) if isinstance(b, FlowBatch)
    ]
    ordered = FlowBatch.concat(parts)
    assert len(ordered) == len(flows)
    key = list(zip(ordered.cols["end_ns"].tolist(), ordered.cols["start_ns"].tolist(), strict=True))
    assert key == sorted(key)
    assert ordered.totals_by_proto() == flows.totals_by_proto()
