"""`bench pipeline --json` runs end to end and reports the documented keys (not timed)."""

import json
import subprocess
import sys


def test_bench_pipeline_json_shape_and_exactly_once() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "--log-level", "WARNING", "bench", "pipeline",
         "--flows", "3000", "--batch-size", "500", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["flows_per_s"] > 0 and report["agent_rss_mb"] > 0
    assert report["agent_cpu_s_per_1k_flows"] > 0
    assert report["stored"] == 3000 and report["all_stored_once"] is True
