"""The guest's serial console over TCP: a log of everything, waiting for text, running commands.

QEMU serves the console on 127.0.0.1:PORT (`-serial tcp:...,server=on,wait=on`: it waits for
this client before starting the guest, so no early output is lost). A reader thread appends
every byte to a log file and to a buffer that waiters search.

Running a command on the guest's shell: the harness sends one line

    echo @@""B7; COMMAND; echo "@@""E7 $?"

and reads what appears between `@@B7` and `@@E7 STATUS`. The quotes split the markers in the
echoed input, so only the shell's output matches, whether the terminal echoes or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import threading
import time
from pathlib import Path

from appliance.errors import CommandError


class ConsoleTimeout(CommandError):
    """Expected console output did not appear in time; str() says what and shows the tail."""


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """Output (CR LF normalised, without the markers) and exit status of a console command."""

    status: int
    output: str


class Console:
    """A connected serial console. close() stops the reader; the log file stays."""

    def __init__(self, sock: socket.socket, log: Path) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._closed = False
        self._serial = 0
        self.log = log
        self._log = log.open("ab", buffering=0)
        self._reader = threading.Thread(target=self._read, name="console-reader", daemon=True)
        self._reader.start()

    @classmethod
    def connect(cls, port: int, log: Path, timeout: float = 10.0) -> Console:
        """Connect to QEMU's console server, retrying while QEMU starts listening."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=2)
                sock.settimeout(None)
                return cls(sock, log)
            except OSError:
                if time.monotonic() > deadline:
                    raise CommandError(f"QEMU's console on port {port} did not answer") from None
                time.sleep(0.05)

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    self._closed = True
                    self._cond.notify_all()
                    return
                self._buf += data
                self._log.write(data)
                self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """True once QEMU has closed the console (the guest powered off or QEMU died)."""
        with self._cond:
            return self._closed

    def mark(self) -> int:
        """The current end of the output: wait_for(..., since=mark) ignores what came before."""
        with self._cond:
            return len(self._buf)

    def text(self, since: int = 0) -> str:
        """Console output from offset since, decoded leniently."""
        with self._cond:
            return self._buf[since:].decode(errors="replace")

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float, since: int = 0
    ) -> re.Match[str]:
        """Wait until pattern (text or regex) appears after offset since; return the match."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = regex.search(self._buf[since:].decode(errors="replace"))
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    why = "the console closed" if self._closed else f"{timeout:.0f} s passed"
                    tail = self._buf[-400:].decode(errors="replace")
                    raise ConsoleTimeout(
                        f"{regex.pattern!r} not seen on the console ({why}); last output: {tail!r}"
                    )
                self._cond.wait(min(left, 1.0))

    def send(self, line: str) -> None:
        """Type one line on the console."""
        self._sock.sendall(line.encode() + b"\n")

    def sync(self, timeout: float) -> None:
        """Wait until the shell answers (it may start after the ready marker)."""
        deadline = time.monotonic() + timeout
        while True:
            self._serial += 1
            since = self.mark()
            self.send(f'echo @@""S{self._serial}')
            try:
                self.wait_for(
                    f"@@S{self._serial}", min(3.0, max(0.1, deadline - time.monotonic())), since
                )
                return
            except ConsoleTimeout:
                if time.monotonic() > deadline or self.closed:
                    raise

    def run(self, command: str, timeout: float = 60.0) -> CommandResult:
        """Run one shell command line on the guest; its output and exit status."""
        if "\n" in command:
            raise ValueError("one command line at a time")
        self._serial += 1
        n = self._serial
        since = self.mark()
        self.send(f'echo @@""B{n}; {command}; echo "@@""E{n} $?"')
        end = self.wait_for(re.compile(rf"@@E{n} (\d+)"), timeout, since)
        text = self.text(since)
        begin = text.find(f"@@B{n}")
        body = text[begin + len(f"@@B{n}") : end.start()] if begin >= 0 else ""
        body = body.replace("\r\n", "\n").replace("\r", "").strip("\n")
        return CommandResult(int(end.group(1)), body)

    def close(self) -> None:
        """Disconnect; the reader ends when the socket closes."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._reader.join(timeout=5)
        self._log.close()
