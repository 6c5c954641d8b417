"""The byte pipes provisioning runs over: a serial port on the host, the console on the device.

A Link moves raw bytes; frames.py makes frames of them. Both ends are passed into the host's
Provisioner and the device's serve loop, so the dialogue is tested over in-memory pipes.
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import tty
from collections.abc import Iterator
from typing import Any, Protocol

from appliance.errors import CommandError


class LinkClosed(CommandError):
    """The other end went away (the cable was pulled, QEMU exited)."""


class Link(Protocol):
    """A bidirectional byte stream. read() returns b"" when nothing arrived within timeout_s
    and raises LinkClosed at end of stream; write() sends everything or raises."""

    def read(self, timeout_s: float) -> bytes: ...

    def write(self, data: bytes) -> None: ...


class SerialLink:
    """A pyserial port: a device path (/dev/ttyUSB0) or any pyserial URL (socket://host:port)."""

    def __init__(self, port: str, baudrate: int = 115200) -> None:
        import serial  # pyserial, imported only where a port is opened

        try:
            self._port: Any = serial.serial_for_url(port, baudrate=baudrate, timeout=0)
        except (serial.SerialException, ValueError) as exc:
            raise CommandError(f"cannot open {port}: {exc}") from None
        self._errors: tuple[type[BaseException], ...] = (serial.SerialException, OSError)
        self.name = port

    def read(self, timeout_s: float) -> bytes:
        self._port.timeout = timeout_s
        try:
            first = self._port.read(1)
            if not first:
                return b""
            self._port.timeout = 0
            return bytes(first) + bytes(self._port.read(65536))
        except self._errors as exc:
            raise LinkClosed(f"{self.name}: {exc}") from None

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except self._errors as exc:
            raise LinkClosed(f"{self.name}: {exc}") from None

    def close(self) -> None:
        self._port.close()


class FdLink:
    """Two file descriptors (the device's console: standard input and output)."""

    def __init__(self, fd_in: int, fd_out: int) -> None:
        self.fd_in = fd_in
        self.fd_out = fd_out

    def read(self, timeout_s: float) -> bytes:
        ready, _, _ = select.select([self.fd_in], [], [], timeout_s)
        if not ready:
            return b""
        try:
            data = os.read(self.fd_in, 65536)
        except OSError as exc:
            raise LinkClosed(f"console: {exc.strerror}") from None
        if not data:
            raise LinkClosed("console: end of input")
        return data

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd_out, view)
            except OSError as exc:
                raise LinkClosed(f"console: {exc.strerror}") from None
            view = view[n:]


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put a terminal in raw mode (no echo, no line editing, no CR/LF translation) for the
    duration; a non-terminal (a pipe in tests) is left as it is."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
