"""`bench flows --board`: its argument checks, and the readers of what the guest prints (the
guest helper itself runs here on a real capture, as it does on the board)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.devkit.capture import boardbench
from appliance.devkit.capture.synth import generate
from appliance.errors import CommandError

SOFTFLOWD_OUT = """softflowd v1.1.0 starting data collection
Packets processed: 2997
Fragments: 0
Ignored packets: 3 (3 non-IP, 0 too short)
Flows expired: 160 (0 forced)
"""
OURS_ERR = (
    "flows: 150 flows, 3000 frames, 2997 IP packets, 1530010 IP bytes; non-IP 3 (0x0806: 3), "
    "malformed 0, fragments 0, evicted 0, peak table 150\n"
)
NFDUMP_CSV = """ts,te,td,sa,da,sp,dp,pr,flg,fwd,stos,ipkt,ibyt,opkt,obyt,in,out
2027-01-07 04:09,2027-01-07 04:10,0.189,10.0.0.54,10.1.0.5,1077,443,TCP,.AP.SF,0,0,29,19267,0,0,0,0
2027-01-07 04:09,2027-01-07 04:10,0.001,10.0.0.9,10.128.0.9,0,0,ICMP,........,0,0,1,84,0,0,0,0
2027-01-07 04:09,2027-01-07 04:10,0.001,fd00::9,fd00::1:9,0,0,ICMP6,........,0,0,2,208,0,0,0,0
Summary: total flows: 3, total bytes: 19559
"""


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "live": False, "memory": False, "packets": None, "repeat": None, "pcap": None,
        "truth": None,
    }  # fmt: skip
    base.update(kw)
    return argparse.Namespace(**base)


def test_board_defaults_are_a_few_hundred_thousand_frames_three_runs() -> None:
    assert boardbench.check_args(_args()) == (300_000, 3)
    assert boardbench.check_args(_args(packets=5000, repeat=1)) == (5000, 1)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"live": True}, "drop --live"),
        ({"memory": True}, "drop --live and --memory"),
        ({"packets": 10}, "--packets must be between"),
        ({"packets": 5_000_000}, "--packets must be between"),
        ({"repeat": 0}, "--repeat must be between"),
        ({"repeat": 50}, "--repeat must be between"),
        ({"pcap": Path("/nonexistent/x.pcap")}, "no such file"),
        ({"truth": Path("t.json")}, "--truth goes with --pcap"),
        ({"concurrent": 1000}, "drop --concurrent"),
    ],
)
def test_bad_arguments_are_one_line_errors(kw: dict[str, object], message: str) -> None:
    with pytest.raises(CommandError, match=message) as err:
        boardbench.check_args(_args(**kw))
    assert "\n" not in str(err.value)


def test_the_cli_refuses_a_board_without_a_definition() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "appliance", "bench", "flows", "--board", "pi5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "invalid choice: 'pi5'" in run.stderr


def test_gnu_time_lines_are_read_and_garbage_is_refused() -> None:
    assert boardbench.parse_time("12.50 0.75 40960 14.02\n") == (13.25, 14.02, 40960)
    with pytest.raises(CommandError, match="no resource usage"):
        boardbench.parse_time("Killed")
    with pytest.raises(CommandError, match="unreadable"):
        boardbench.parse_time("a b c d")


def test_summary_line_is_found_after_other_output() -> None:
    text = 'noise\nSUMMARY {"native": true}\r'
    assert boardbench.parse_summary(text.replace("\r", "")) == {"native": True}
    with pytest.raises(CommandError, match="summary is missing"):
        boardbench.parse_summary("Traceback (most recent call last): ...")


def _helper(tmp_path: Path, *args: str) -> dict[str, object]:
    script = tmp_path / "summary.py"
    script.write_text(boardbench.GUEST_HELPER)
    out = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return boardbench.parse_summary(out.stdout)


def test_guest_helper_totals_our_lines_and_softflowds_rows_like_the_host_bench(
    tmp_path: Path,
) -> None:
    pcap = tmp_path / "c.pcap"
    truth = generate(pcap, seed=3, packets=2000, flows=100)
    lines = tmp_path / "flows.jsonl"
    with lines.open("wb") as out:
        subprocess.run(
            [sys.executable, "-m", "appliance", "flows", "--pcap", str(pcap), "--json"],
            stdout=out,
            check=True,
            timeout=300,
        )
    ours = _helper(tmp_path, "jsonl", str(lines))
    assert ours["by_proto"] == truth.by_proto
    run = boardbench.ours_run("1.0 0.5 2048 3.0", OURS_ERR, ours)
    assert (run["cpu_seconds"], run["seconds"], run["peak_rss_kib"]) == (1.5, 3.0, 2048)
    assert (run["frames"], run["flows"], run["peak_flows"]) == (3000, 150, 150)
    inproc = _helper(tmp_path, "inproc", str(pcap))
    assert inproc["by_proto"] == truth.by_proto and inproc["frames"] == truth.frames
    csv = tmp_path / "nf.csv"
    csv.write_text(NFDUMP_CSV)
    sf = _helper(tmp_path, "csv", str(csv))
    assert sf["records"] == 3
    assert sf["by_proto"] == {
        "ICMP": {"records": 1, "packets": 1, "bytes": 84},
        "ICMPV6": {"records": 1, "packets": 2, "bytes": 208},
        "TCP": {"records": 1, "packets": 29, "bytes": 19267},
    }
    sf_run = boardbench.softflowd_run("0.2 0.1 1024 0.5", SOFTFLOWD_OUT, sf)
    assert (sf_run["frames"], sf_run["flows"], sf_run["netflow_records"]) == (3000, 160, 3)


def test_softflowd_that_read_nothing_is_an_error() -> None:
    with pytest.raises(CommandError, match="softflowd read no packets"):
        boardbench.softflowd_run("0 0 1 0.1", "pcap: cannot open", {"records": 0, "by_proto": {}})


def test_report_has_the_host_benchs_ratios() -> None:
    by = {"TCP": {"flows": 1, "packets": 10, "bytes": 100}}
    ours = [
        {"seconds": s, "cpu_seconds": s, "peak_rss_kib": 2000, "frames": 100, "flows": 1,
         "packets": 10, "non_ip": 0, "by_proto": by, "peak_flows": 1, "sha256": "a",
         "packets_per_s": round(100 / s)}
        for s in (2.0, 4.0, 3.0)
    ]  # fmt: skip
    sf = [
        {"seconds": s, "cpu_seconds": s, "peak_rss_kib": 1000, "frames": 100, "flows": 1,
         "by_proto": {"TCP": {"records": 2, "packets": 10, "bytes": 104}},
         "packets_per_s": round(100 / s)}
        for s in (1.0, 1.5, 2.0)
    ]  # fmt: skip
    truth = argparse.Namespace(by_proto=by, frames=100, non_ip=0)
    result = boardbench.report(ours, [dict(r) for r in ours], sf, (1000, 500), truth)
    assert result["ratio"] == round(33 / 67, 3)  # medians: 3.0 s against 1.5 s
    assert result["ratio_cpu"] == 0.5 and result["rss_ratio"] == 2.0
    assert result["matches_truth"] and result["softflowd_packets_match_truth"]
    assert result["runs_identical_output"]
    json.dumps(result)
