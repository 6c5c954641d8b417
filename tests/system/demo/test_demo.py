"""`make demo` end to end: namespaces, a tc mirror, the real agent and bus, real traffic; the
figures it prints must add up, and nothing may be left behind."""

import subprocess
import sys


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_demo_captures_real_traffic_end_to_end_and_tears_down() -> None:
    before = _netns()
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "demo", "--burst", "10"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "sent 14 conversations; the bus stored 14 of them, 14 with exactly" in out.stdout
    assert "signature chain of" in out.stdout and ": intact" in out.stdout
    assert "agent exited 0, bus exited 0" in out.stdout
    assert "the tap port m1 transmitted 0 frames" in out.stdout
    rows = [
        line for line in out.stdout.splitlines() if line[:2] == "20" and "demo-branch-1" in line
    ]
    assert any(" UDP " in r and ":30000 " in r for r in rows)  # the tail showed the flows
    fleet = out.stdout[out.stdout.index("the fleet as the bus sees it") :].splitlines()
    box = next(line for line in fleet if line.startswith("demo-branch-1"))
    assert " ok " in box and "0.1.0" in box  # seen, with a health record (its version)
    assert _netns() == before
