"""The `infraspectre` entry point: what any command's failure looks like to a user."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from testsupport.capture_helpers import MS, T0, eth, frame_bytes

from appliance.capture.pcap import write_pcap
from appliance.cli import main


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """`infraspectre flows --pcap X | head`: head exits, the next write gets EPIPE."""
    pcap = tmp_path / "many.pcap"
    frames = [
        eth() / IP(src="192.0.2.1", dst="198.51.100.9") / UDP(sport=1024 + i, dport=53)
        for i in range(200)
    ]
    write_pcap(pcap, [(T0 + i * MS, frame_bytes(f)) for i, f in enumerate(frames)])
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "appliance", "flows", "--pcap", str(pcap)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception" not in proc.stderr, proc.stderr


def test_an_unexpected_error_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import appliance.bus.cli as bus_cli

    def boom(args: object) -> int:
        raise ValueError("something\nnobody expected")

    monkeypatch.setattr(bus_cli, "_query", boom)
    assert main(["bus", "query"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ValueError" in err and "--log-level DEBUG" in err
