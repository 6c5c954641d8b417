"""The `infraspectre` entry point: what any command's failure looks like to a user."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from testsupport.capture_helpers import MS, T0, eth, frame_bytes

from appliance import cli
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


def _broken_inputs(tmp: Path) -> dict[str, list[str]]:
    """Each subcommand this suite touched, given something broken."""
    from testsupport.card_helpers import write_card

    pcap = tmp / "capture.pcap"
    pcap.write_bytes(b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + bytes(4096))
    card = write_card(tmp / "card.img")
    return {
        "flows missing file": ["flows", "--pcap", str(tmp / "nope.pcap")],
        "bus query on a pcap": ["bus", "query", "--db", str(pcap)],
        "bus tail on a pcap": ["bus", "tail", "--db", str(pcap)],
        "bus query bad proto": ["bus", "query", "--db", str(pcap), "--proto", "FOO"],
        "bus query bad address": ["bus", "query", "--db", str(pcap), "--address", "999.1.1.1"],
        "bus query bad time": ["bus", "query", "--db", str(pcap), "--since", "yesterday"],
        "bus tail no folder": ["bus", "tail", "--db", str(tmp / "none" / "bus.sqlite")],
        "bus reload no bus": ["bus", "reload"],
        "wal inspect no wal": ["wal", "inspect", str(tmp / "nothing")],
        "wal inspect a file": ["wal", "inspect", str(pcap)],
        "image flash a pcap": ["image", "flash", str(pcap), str(tmp / "t.img"), "--force"],
        "image flash bad bus": [
            "image",
            "flash",
            str(card),
            str(tmp / "t.img"),
            "--force",
            "--bus",
            "nohost",
        ],
        "image configure a pcap": ["image", "configure", str(pcap), "--agent-id", "a"],
        "image configure bad id": ["image", "configure", str(card), "--agent-id", "a;b"],
        "image build bad epoch": ["image", "build", "--board", "rpi", "--out", str(tmp / "o")],
        "config check a pcap": ["config", "check", str(pcap)],
        "config check no file": ["config", "check", str(tmp / "none.yaml")],
        "bus query bad where": ["bus", "query", "--db", str(pcap), "--where", "port >"],
        "bus tail bad where": ["bus", "tail", "--db", str(pcap), "--where", "ip < 1.2.3.4"],
        "flows on a card image": ["flows", "--pcap", str(card)],
    }


@pytest.mark.parametrize(
    "case",
    [
        "flows missing file", "bus query on a pcap", "bus tail on a pcap", "bus query bad proto",
        "bus query bad address", "bus query bad time", "bus tail no folder", "bus reload no bus",
        "wal inspect no wal", "wal inspect a file", "image flash a pcap",
        "image flash bad bus", "image configure a pcap", "image configure bad id",
        "image build bad epoch", "config check a pcap", "config check no file",
        "bus query bad where", "bus tail bad where", "flows on a card image",
    ],
)  # fmt: skip
def test_every_touched_subcommand_fails_in_one_line_on_broken_input(
    case: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("IS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "last tuesday")
    argv = _broken_inputs(tmp_path)[case]
    status = main(argv)
    err = capsys.readouterr().err
    assert status != 0, err
    assert len(err.splitlines()) == 1 and err.startswith("infraspectre: "), err
    assert "unexpected" not in err, err  # a foreseen failure, said in the user's terms
    assert not (tmp_path / "t.img").exists()


def test_wal_inspect_of_a_wal_the_agent_holds_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.wal import Wal, WalConfig

    wal = Wal.open(WalConfig(path=tmp_path), background=False)
    try:
        assert main(["wal", "inspect", str(tmp_path)]) == 1
    finally:
        wal.close()
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "in use by another process" in err


def test_the_devkit_adds_exactly_the_commands_the_card_answers_without_it() -> None:
    from appliance.devkit import commands

    sub = argparse.ArgumentParser().add_subparsers()
    commands.register(sub)
    assert set(sub.choices) == set(cli.DEV_COMMANDS)
