"""`infraspectre bench wal --json` runs end to end on a loop device and keeps its JSON shape.

Only the shape and the counter are checked here: figures are measured by running the bench
itself (docs/PERFORMANCE.md), never asserted in a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

KEYS = {"records_per_s", "device_bytes_per_record", "write_amplification", "fsyncs"}


def test_bench_wal_json_has_every_subject_and_workload(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "--log-level",
            "WARNING",
            "bench",
            "wal",
            "--json",
            "--records",
            "1000",
            "--paced-rate",
            "20",
            "--paced-seconds",
            "1",
            "--workdir",
            str(tmp_path),
            "--image-mib",
            "128",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=240,
    ).stdout
    result = json.loads(out)
    assert result["counter"] == "loop-device"
    for subject in ("ours", "sqlite_commit_each", "sqlite_group"):
        for workload in ("saturation", "paced"):
            entry = result[subject][workload]
            assert set(entry) >= KEYS, (subject, workload)
            assert entry["device_bytes_per_record"] > 0
            assert entry["fsyncs"] > 0
    assert result["ours"]["saturation"]["own_fdatasyncs"] >= 1
    assert not list(tmp_path.iterdir())  # image, mount point and loop device cleaned up
