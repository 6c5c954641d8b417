"""The console protocol against a real shell: output and exit status between the markers.

A loopback server stands in for QEMU's serial port: it echoes each typed line back (as a
terminal with echo on does) and runs it with the host's /bin/sh, so the marker parsing meets
both the echoed input and the real output.
"""

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.qemu.console import Console, ConsoleTimeout


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"booting...\r\nINFRASPECTRE-READY\r\n")
            pending = b""
            while data := conn.recv(4096):
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    conn.sendall(line + b"\r\n")  # the terminal's echo
                    out = subprocess.run(
                        ["/bin/sh", "-c", line.decode()], capture_output=True, check=False
                    )
                    conn.sendall((out.stdout + out.stderr).replace(b"\n", b"\r\n"))
                    conn.sendall(b"# ")

    threading.Thread(target=serve, daemon=True).start()
    con = Console.connect(server.getsockname()[1], tmp_path / "console.log")
    yield con
    con.close()
    server.close()


def test_run_returns_output_and_exit_status(console: Console) -> None:
    console.wait_for("INFRASPECTRE-READY", 5)
    result = console.run("echo one; echo two; (exit 3)", timeout=5)
    assert (result.status, result.output) == (3, "one\ntwo")


def test_the_echoed_command_line_is_not_taken_for_output(console: Console) -> None:
    assert console.run("true", timeout=5).output == ""
    assert console.run("printf 'a b'", timeout=5).output == "a b"


def test_sync_waits_for_the_shell(console: Console) -> None:
    console.sync(5)
    assert console.run("echo ok", timeout=5).output == "ok"


def test_wait_for_reports_what_it_missed_and_the_tail(console: Console) -> None:
    with pytest.raises(ConsoleTimeout, match=r"'never' not seen.*INFRASPECTRE-READY"):
        console.wait_for("never", 0.5)


def test_everything_lands_in_the_log(console: Console, tmp_path: Path) -> None:
    console.run("echo logged", timeout=5)
    assert b"logged" in (tmp_path / "console.log").read_bytes()


def test_multi_line_commands_are_refused(console: Console) -> None:
    with pytest.raises(ValueError, match="one command line"):
        console.run("echo a\necho b")
