"""A simulated disk for the WAL's fault tests: power loss, torn pages, bit flips, ENOSPC.

It implements the Storage protocol in memory and keeps, per file, what a real disk keeps: the
*durable* bytes (what survives power loss) and the *current* bytes (what reads see). pwrite
changes the current bytes and marks pages dirty; sync() makes them durable. power_loss() keeps
each dirty page old, new or torn (a mix of old and new 512-byte sectors), as an SD card may.
"""

from __future__ import annotations

import errno
import os
import random
from dataclasses import dataclass, field

SECTOR = 512
PAGE = 4096


class PowerCut(BaseException):
    """Raised by a SimDisk I/O call when the simulated power goes (see cut_after)."""


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@dataclass
class _SimData:
    durable: bytearray
    current: bytearray
    dirty: set[int] = field(default_factory=set)


class SimFile:
    """A StorageFile over a SimDisk file."""

    def __init__(self, disk: SimDisk, name: str) -> None:
        self._disk = disk
        self.name = name

    def pread(self, size: int, offset: int) -> bytes:
        data = self._disk.files[self.name].current
        return bytes(data[offset : offset + size])

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        disk = self._disk
        disk.count_io()
        disk.writes += 1
        if disk.fail_writes:
            disk.fail_writes -= 1
            raise _err(disk.fail_errno)
        f = disk.files[self.name]
        end = offset + len(data)
        if end > len(f.current):
            raise _err(errno.ENOSPC)  # fixed-size files never grow
        f.current[offset:end] = data
        f.dirty.update(range(offset // PAGE, (end + PAGE - 1) // PAGE))
        disk.bytes_written += len(data)

    def sync(self) -> None:
        disk = self._disk
        disk.count_io()
        if disk.fail_syncs:
            disk.fail_syncs -= 1
            raise _err(errno.EIO)
        f = disk.files[self.name]
        for page in f.dirty:
            f.durable[page * PAGE : (page + 1) * PAGE] = f.current[page * PAGE : (page + 1) * PAGE]
        f.dirty.clear()
        disk.syncs += 1

    def size(self) -> int:
        return len(self._disk.files[self.name].current)

    def close(self) -> None:
        pass


class SimDisk:
    """In-memory Storage with fault knobs (see the module docstring).

    capacity: total bytes of files it can hold (create beyond it raises ENOSPC).
    fail_writes / fail_syncs: the next N pwrite / sync calls raise (fail_errno / EIO).
    cut_after: after this many more pwrite/sync calls, the next one raises PowerCut instead of
    happening (a BaseException, so no error handling in the WAL can swallow it); follow it
    with power_loss() and reopen, as after a real cut in the middle of any operation.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.files: dict[str, _SimData] = {}
        self.capacity = capacity
        self.locked = False
        self.fail_writes = 0
        self.fail_errno = errno.ENOSPC
        self.fail_syncs = 0
        self.cut_after: int | None = None
        self.writes = 0
        self.syncs = 0
        self.bytes_written = 0

    # Storage protocol
    def lock(self) -> None:
        if self.locked:
            raise _err(errno.EWOULDBLOCK)
        self.locked = True

    def unlock(self) -> None:
        self.locked = False

    def names(self) -> list[str]:
        return sorted(self.files)

    def open(self, name: str) -> SimFile:
        if name not in self.files:
            raise _err(errno.ENOENT)
        return SimFile(self, name)

    def create(self, name: str, size: int) -> SimFile:
        if self.capacity is not None and self.used_bytes() + size > self.capacity:
            raise _err(errno.ENOSPC)
        self.files[name] = _SimData(bytearray(size), bytearray(size))
        self.bytes_written += size
        return SimFile(self, name)

    def remove(self, name: str) -> None:
        del self.files[name]

    # the simulation
    def count_io(self) -> None:
        if self.cut_after is not None:
            if self.cut_after <= 0:
                self.cut_after = None
                raise PowerCut
            self.cut_after -= 1

    def used_bytes(self) -> int:
        """Bytes of all files (what `du` would say of the WAL directory)."""
        return sum(len(f.current) for f in self.files.values())

    def power_loss(self, rng: random.Random, *, tear: bool = True) -> None:
        """Lose what was not synced: each dirty page ends old, new or (tear) torn by sector."""
        for f in self.files.values():
            for page in sorted(f.dirty):
                lo, hi = page * PAGE, (page + 1) * PAGE
                fate = rng.choice(("old", "new", "torn") if tear else ("old", "new"))
                if fate == "new":
                    f.durable[lo:hi] = f.current[lo:hi]
                elif fate == "torn":
                    for s in range(lo, hi, SECTOR):
                        if rng.random() < 0.5:
                            f.durable[s : s + SECTOR] = f.current[s : s + SECTOR]
            f.dirty.clear()
            f.current[:] = f.durable
        self.locked = False

    def flip_bit(self, name: str, offset: int, bit: int = 0) -> None:
        """Flip one bit of a file, durably (bit rot on the card)."""
        f = self.files[name]
        f.current[offset] ^= 1 << bit
        f.durable[offset] ^= 1 << bit
