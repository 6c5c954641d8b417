"""The device's system clock and its boot floor, shared by the agent and provisioning.

The floor file (`/data/clock` on the device) holds one line, the UNIX time in whole seconds;
rcS step 4 never lets the clock start earlier than it, rcK writes it at an orderly shutdown,
provisioning and the agent's clock follower write it after moving the clock forward.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def set_system_clock(ns: int) -> None:
    """Step CLOCK_REALTIME to ns (needs CAP_SYS_TIME: root on the device)."""
    time.clock_settime_ns(time.CLOCK_REALTIME, ns)


def save_clock_floor(path: Path) -> None:
    """Write the current time to the floor file atomically (temporary name, fsync, rename)."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{int(time.time())}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
