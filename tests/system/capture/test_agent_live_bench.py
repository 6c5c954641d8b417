"""`infraspectre bench live` at a tiny rate: the real agent and softflowd on one tap port, both
measured (the figures themselves are the command's, in docs/PERFORMANCE.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_live_measures_both_tools_on_the_same_frames(tmp_path: Path) -> None:
    rate, seconds = 400, 3
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "bench", "live", "--json",
         "--rates", str(rate), "--duration", str(seconds), "--idle", "1", "--cache", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (step,) = json.loads(proc.stdout)["steps"]
    assert step["requested_pps"] == rate
    assert step["packets"] >= rate * seconds  # every replayed frame reached the tap port
    ours = step["ours"]
    # the agent metered what the tap port received (ARP aside, which its filter drops)
    assert ours["packets_metered"] >= 0.99 * step["packets"]
    assert ours["kernel_drops"] == 0 and ours["flows_started"] > 0
    assert ours["cpu_s"] > 0  # softflowd may stay under one clock tick at this rate
    for tool in ("ours", "softflowd"):
        assert step[tool]["rss_peak_kib"] > 1000, tool
        assert step[tool]["idle_cpu_ms_per_s"] >= 0, tool
        per_1k = step[tool]["cpu_s"] * 1e6 / step["packets"]
        assert abs(step[tool]["cpu_ms_per_1k_packets"] - per_1k) < 0.01 * per_1k + 0.01
    theirs = step["softflowd"]["rss_peak_kib"]
    assert step["rss_ratio"] == round(ours["rss_peak_kib"] / theirs, 2)
