"""Our own command as local child processes (benches, the demo, tests): a free loopback port,
and `infraspectre ...` started, awaited until it prints its ready line, and always stopped."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from appliance.errors import CommandError

#: `infraspectre` run by the current interpreter, quiet below WARNING.
CLI = (sys.executable, "-m", "appliance", "--log-level", "WARNING")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_bus_sections(
    pki_dir: Path, data_dir: Path, port: int, **eventbus: object
) -> dict[str, dict[str, object]]:
    """The `eventbus` and `storage` sections of a bus on 127.0.0.1:port using the PKI that
    `pki init pki_dir` wrote; metrics and health off unless eventbus says otherwise."""
    section: dict[str, object] = {
        "host": "127.0.0.1", "port": port, "metrics_port": -1, "health_port": -1,
        "tls": {"cert_dir": str(pki_dir)},
    }  # fmt: skip
    section.update(eventbus)
    return {"eventbus": section, "storage": {"data_dir": str(data_dir)}}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cli_process(args: Sequence[str], what: str) -> Iterator[subprocess.Popen[str]]:
    """Run `infraspectre ARGS`, wait for its first stdout line to say "ready", yield it; on
    exit terminate it (kill after 15 s) whatever happened."""
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if "ready" not in proc.stdout.readline():
            raise CommandError(f"the {what} did not start (see the messages above)")
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[str]) -> None:
    """Terminate proc if it still runs; kill it after 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
