"""`make demo` end to end: real processes, real mTLS, and the counts it prints must add up."""

import subprocess
import sys


def test_demo_publishes_stores_and_tears_down() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "demo", "--flows", "24", "--seconds", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "published 24 signed flows: 24 OK" in out.stdout
    assert "tampered copy answered INVALID (bad signature)" in out.stdout
    assert "bus stored 24, each once" in out.stdout
    rows = [
        line for line in out.stdout.splitlines() if line[:2] == "20" and "demo-branch-1" in line
    ]
    assert len(rows) == 24
