"""The WAL's edge to the disk: a small file-operations protocol and its real implementation.

The log (appliance.wal.log and its parts) does all its I/O through a `Storage`, so tests can
pass a simulated disk that loses unsynced writes, tears pages, flips bits or runs out of space
(appliance.devkit.wal.simdisk), and the real `FileStorage` stays a thin layer over os.pwrite and
os.fdatasync.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Protocol

_ZERO_CHUNK = 1024 * 1024


class StorageFile(Protocol):
    """An open, fixed-size file. Owned by the WAL that opened it; closed by it.

    pwrite writes all of data at offset or raises OSError (ENOSPC, EIO); sync makes every
    completed pwrite durable (fdatasync) or raises OSError, after which the WAL must assume the
    unsynced writes of this file are lost.
    """

    def pread(self, size: int, offset: int) -> bytes: ...

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None: ...

    def sync(self) -> None: ...

    def size(self) -> int: ...

    def close(self) -> None: ...


class Storage(Protocol):
    """A directory of named fixed-size files, used by exactly one WAL at a time.

    lock() is called first and raises OSError if another process holds the directory.
    create(name, size) returns a zero-filled file that is durable (data and directory entry)
    when it returns, or raises OSError (ENOSPC) leaving nothing behind. remove() is used only
    when the configured bound shrank below what is on disk.
    """

    def lock(self) -> None: ...

    def unlock(self) -> None: ...

    def names(self) -> list[str]: ...

    def open(self, name: str) -> StorageFile: ...

    def create(self, name: str, size: int) -> StorageFile: ...

    def remove(self, name: str) -> None: ...


class OsFile:
    """A StorageFile over a file descriptor: pread/pwrite/fdatasync, nothing cached."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            if n <= 0:  # pragma: no cover - the kernel reports ENOSPC as an error, not 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[n:]
            offset += n

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        os.close(self.fd)


class FileStorage:
    """Storage in a real directory (created if missing); segments are pre-zeroed on creation.

    Pre-zeroing (rather than fallocate) means later overwrites need no block allocation and no
    extent conversion, so steady-state fdatasync writes data pages only, no metadata.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self._lock_fd = fd
        for name in os.listdir(self.path):
            if name.endswith(".tmp"):
                os.unlink(self.path / name)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def names(self) -> list[str]:
        return sorted(n for n in os.listdir(self.path) if not n.endswith(".tmp"))

    def open(self, name: str) -> StorageFile:
        return OsFile(os.open(self.path / name, os.O_RDWR | os.O_CLOEXEC))

    def create(self, name: str, size: int) -> StorageFile:
        tmp = self.path / (name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            zeros = bytes(min(size, _ZERO_CHUNK))
            done = 0
            while done < size:
                chunk = zeros[: size - done]
                OsFile(fd).pwrite(chunk, done)
                done += len(chunk)
            os.fdatasync(fd)
            os.rename(tmp, self.path / name)
            self._sync_dir()
        except OSError:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return OsFile(fd)

    def remove(self, name: str) -> None:
        os.unlink(self.path / name)
        self._sync_dir()

    def _sync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_only() -> OSError:
    return OSError(errno.EROFS, "the WAL is open read-only")


class ReadOnlyFile(OsFile):
    """A StorageFile opened O_RDONLY whose writes and syncs raise EROFS."""

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        raise _read_only()

    def sync(self) -> None:
        raise _read_only()


class ReadOnlyFileStorage(FileStorage):
    """Storage over an existing WAL directory that changes nothing in it, for inspection.

    Unlike FileStorage.lock() it creates no directory and deletes no `.tmp` file (crash
    leftovers are the writer's to clean up); the directory is locked shared, so it cannot be
    inspected while an agent holds it (exclusive) and an agent cannot open it meanwhile.
    create() and remove() raise EROFS, files are opened O_RDONLY.
    """

    def lock(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self._lock_fd = fd

    def open(self, name: str) -> StorageFile:
        return ReadOnlyFile(os.open(self.path / name, os.O_RDONLY | os.O_CLOEXEC))

    def create(self, name: str, size: int) -> StorageFile:
        raise _read_only()

    def remove(self, name: str) -> None:
        raise _read_only()
