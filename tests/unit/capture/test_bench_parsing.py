"""The bench's readers of peer-tool output, and the synthetic capture's determinism."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from appliance.devkit.capture.bench import _concurrent_capture, _softflowd_flows, _softflowd_frames
from appliance.devkit.capture.livebench import _tcpreplay_rate
from appliance.devkit.capture.synth import generate
from appliance.errors import CommandError

SOFTFLOWD_OUT = """Number of active flows: 0
Packets processed: 999000
Fragments: 0
Ignored packets: 1000 (1000 non-IP, 0 too short)
Flows expired: 54009 (0 forced)
Flows exported: 54009 (100000 records) in 3359 packets (0 failures)
"""

TCPREPLAY_OUT = """Actual: 20000 packets (10161689 bytes) sent in 1.99 seconds
Rated: 5081093.4 Bps, 40.64 Mbps, 10000.49 pps
Statistics for network device: x0
	Successful packets:        20000
"""


def test_softflowd_summary_is_read() -> None:
    assert _softflowd_frames(SOFTFLOWD_OUT) == 1_000_000
    assert _softflowd_flows(SOFTFLOWD_OUT) == 54009


def test_tcpreplay_rate_is_read() -> None:
    assert _tcpreplay_rate(TCPREPLAY_OUT) == 10000
    assert _tcpreplay_rate("nothing useful") == 0


def test_same_seed_gives_the_same_capture_and_truth(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.pcap", tmp_path / "b.pcap", tmp_path / "c.pcap"
    ta = generate(a, seed=5, packets=3_000, flows=150)
    tb = generate(b, seed=5, packets=3_000, flows=150)
    generate(c, seed=6, packets=3_000, flows=150)
    assert a.read_bytes() == b.read_bytes() and ta == tb
    assert a.read_bytes() != c.read_bytes()
    assert ta.frames == 3_000 and sum(v["flows"] for v in ta.by_proto.values()) == 150


@pytest.mark.parametrize(
    ("concurrent", "packets", "message"),
    [
        (0, 1_000_000, "--concurrent 0: from 1 to 200000 flows"),
        (200_001, 1_000_000, "--concurrent 200001: from 1 to 200000 flows"),
        (100_000, 200_000, "each flow needs 3 to 1799 frames (--packets from 300000 to"),
    ],
)
def test_concurrent_capture_shape_is_checked_before_anything_runs(
    tmp_path: Path, concurrent: int, packets: int, message: str
) -> None:
    args = argparse.Namespace(concurrent=concurrent, packets=packets, seed=1, cache=tmp_path)
    with pytest.raises(CommandError, match=re.escape(message)):
        _concurrent_capture(args)
    assert list(tmp_path.iterdir()) == []
