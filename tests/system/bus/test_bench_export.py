"""`bench export --json`: a small run over each transport reports the documented keys and
accounts for every flow (each delivered once, each at the collector once). Nothing here asserts
a rate or a ratio: those are figures for docs/PERFORMANCE.md, not pass/fail on a shared machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

KEYS = (
    "ingest_flows_per_s", "export_flows_per_s", "ratio", "target_ratio", "kept_up",
    "lag_records_max", "lag_seconds_max", "behind_flows_max", "lag_records_at_ingest_end",
    "drain_s", "lag_samples", "collector_records", "all_delivered_once",
)  # fmt: skip


@pytest.mark.parametrize(("extra", "records"), [([], 3000), (["--tcp", "--mode", "uniflow"], 6000)])
def test_bench_export_accounts_for_every_flow(extra: list[str], records: int) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "--log-level", "WARNING", "bench", "export",
         "--json", "--flows", "3000", "--batch-size", "250", "--clients", "2",
         "--sample-s", "0.05", *extra],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    for key in KEYS:
        assert key in report, key
    assert report["flows"] == report["delivered"] == 3000
    assert report["collector_records"] == records  # uniflow: both directions of every flow
    assert report["resent"] == report["dropped"] == 0
    # export / ingest rate = ingest time / export time (both from one clock; rounded to ms)
    assert report["ratio"] == pytest.approx(report["ingest_s"] / report["export_s"], abs=0.005)
    assert report["export_s"] >= report["ingest_s"]  # delivered only after being stored


def test_bench_export_refuses_bad_arguments_in_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "bench", "export", "--flows", "10",
         "--batch-size", "500"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "infraspectre: --flows must be at least --batch-size, and --batch-size positive"
    ]
