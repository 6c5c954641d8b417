"""The concurrent-flows capture of `bench flows --concurrent`: its truth against our meter."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from appliance.capture.flows import EndReason
from appliance.capture.offline import iter_pcap_records, meter_pcap
from appliance.devkit.capture.synth import cached_concurrent_capture, generate_concurrent


def test_concurrent_capture_truth_is_what_the_meter_finds(tmp_path: Path) -> None:
    path, truth = cached_concurrent_capture(tmp_path, seed=4, flows=400, rounds=5)
    flows, summary = meter_pcap(path)
    assert flows.totals_by_proto() == truth.by_proto
    assert summary.frames == truth.frames == 2_000 and summary.decode.non_ip_total == 0
    # Every flow is open from its first round to the end of the file, all at once.
    assert summary.meter.peak_flows == 400
    assert summary.meter.flows_ended == {"SHUTDOWN": 400}
    records = [r for item in iter_pcap_records(path) if isinstance(item, list) for r in item]
    assert len(records) == 400
    assert {(r.packets_tx, r.packets_rx) for r in records} == {(3, 2)}
    assert all(r.end_reason is EndReason.SHUTDOWN for r in records)
    # The mix: TCP (handshake, data, no FIN) and UDP, IPv4 and IPv6, some tagged.
    kinds = Counter((r.proto, r.ip_version, r.vlan != 0) for r in records)
    assert {k[:2] for k in kinds} == {("TCP", 4), ("TCP", 6), ("UDP", 4), ("UDP", 6)}
    assert any(tagged for _, _, tagged in kinds)
    tcp = [r for r in records if r.proto == "TCP"]
    assert {r.flags_tx for r in tcp} == {0x02 | 0x10 | 0x18} and {r.flags_rx for r in tcp} == {
        0x12 | 0x18
    }
    # Cached: the second call reads the same file and truth back.
    assert cached_concurrent_capture(tmp_path, seed=4, flows=400, rounds=5) == (path, truth)


def test_concurrent_capture_refuses_a_shape_it_cannot_make(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rounds must be 3 to 1799"):
        generate_concurrent(tmp_path / "x.pcap", seed=1, flows=10, rounds=2)
    with pytest.raises(ValueError, match="flows must be at least 1"):
        generate_concurrent(tmp_path / "x.pcap", seed=1, flows=0, rounds=3)
