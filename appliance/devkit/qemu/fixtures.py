"""pytest plugin: boot a card image on an emulated board, drive it, keep its console logs.

Load it from a conftest (`from appliance.devkit.qemu.fixtures import *` or pytest_plugins at the
root). The suite provides the image; the plugin provides:

    boot_board(image, board="raspi3b", uplink_port=None, mirror=None, console_shell=True)
        -> Machine (console_shell=False: the console runs the provisioning responder)
    boot_board_shared(...)    the same, one per test module (for read-only checks)
        copies image to a fresh card in tmp_path (the image itself is never written), boots
        it and waits for the ready marker (and, on the default debug boot, a responsive
        shell). The Machine then runs
        console commands (machine.run("cmd") -> status, output), cuts the power
        (machine.power_cut()) and boots again from the same card (machine.boot()).
        Every machine is powered off at teardown.

    host_listener(), host_listener_shared() -> Listener
        a TCP server on the host loopback answering each connection's first bytes with
        b"pong:" + those bytes: the far end of the uplink's guestfwd.

    mirror_port_shared() -> MirrorPort
        the host end of the mirror NIC: .mirror goes to boot_board, .send(frame) puts an
        Ethernet frame on the guest's mirror interface.

When a test fails, the tail of each console log is added to its report, and the logs stay
in the test's tmp_path (console-N.log per boot, qemu-N.cmd with the exact command line).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from appliance.qemu import boards
from appliance.qemu.machine import Machine, Mirror

__all__ = [
    "Listener",
    "MirrorPort",
    "boot_board",
    "boot_board_shared",
    "host_listener",
    "host_listener_shared",
    "mirror_port_shared",
    "pytest_runtest_makereport",
]

#: Machines booted and not yet torn down: their consoles go into a failing test's report.
_ACTIVE: list[Machine] = []
#: Bounds for a boot under load on 2 shared cores (raspi3b under TCG is slow).
BOOT_TIMEOUT = 240.0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the console tails of the machines in use to a failed report."""
    report = yield
    if report.failed:
        for m in _ACTIVE:
            for n in range(1, m.boots + 1):
                log = m.workdir / f"console-{n}.log"
                if log.exists():
                    tail = log.read_text(errors="replace")[-3000:]
                    report.sections.append((f"console {m.board.name} boot {n}: {log}", tail))
    return report


class Boots:
    """The factory behind boot_board and boot_board_shared; power_all_off() at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.machines: list[Machine] = []

    def __call__(
        self,
        image: Path,
        board: str = "raspi3b",
        *,
        uplink_port: int | None = None,
        mirror: Mirror | None = None,
        console_shell: bool = True,
    ) -> Machine:
        n = len(self.machines) + 1
        card = self.workdir / f"card-{n}.img"
        _sparse_copy(image, card)
        machine = Machine(
            boards.load(board),
            card,
            self.workdir / f"{board}-{n}",
            uplink_port=uplink_port,
            mirror=mirror,
            console_shell=console_shell,
        )
        self.machines.append(machine)
        _ACTIVE.append(machine)
        machine.boot(BOOT_TIMEOUT)
        return machine

    def power_all_off(self) -> None:
        for machine in self.machines:
            machine.power_cut()
            if machine in _ACTIVE:
                _ACTIVE.remove(machine)


@pytest.fixture
def boot_board(tmp_path: Path) -> Iterator[Callable[..., Machine]]:
    """Factory: boot a copy of an image on a board and wait until it is ready (per test)."""
    boots = Boots(tmp_path)
    yield boots
    boots.power_all_off()


@pytest.fixture(scope="module")
def boot_board_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Machine]]:
    """Like boot_board, for a machine several tests of a module share (read-only checks)."""
    boots = Boots(tmp_path_factory.mktemp("board"))
    yield boots
    boots.power_all_off()


def _sparse_copy(src: Path, dst: Path) -> None:
    """Copy a card image keeping its holes (the data partition is mostly unwritten)."""
    block = 1 << 20
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(block):
            if chunk.count(0) == len(chunk):
                fout.seek(len(chunk), 1)
            else:
                fout.write(chunk)
        fout.truncate()


class Listener:
    """A loopback TCP server: each connection's first bytes come back prefixed with pong:."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = int(self._sock.getsockname()[1])
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                conn.settimeout(10)
                try:
                    data = conn.recv(1024)
                    conn.sendall(b"pong:" + data)
                except OSError:
                    pass

    def close(self) -> None:
        self._sock.close()


class MirrorPort:
    """The host end of a board's mirror NIC: frames sent here appear on the guest's mirror
    interface; the guest's own frames (ARP, ND) arrive on `port` and are drained."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.mirror = Mirror(host=self.port, qemu=_free_udp_port())
        self.received = 0
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                self._sock.recv(65536)
            except OSError:
                return
            self.received += 1

    def send(self, frame: bytes) -> None:
        """One Ethernet frame (destination MAC first, no FCS) onto the mirror port."""
        self._sock.sendto(frame, ("127.0.0.1", self.mirror.qemu))

    def close(self) -> None:
        self._sock.close()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mirror_port_shared() -> Iterator[MirrorPort]:
    """A mirror port for a module's shared machine (pass .mirror to boot_board_shared)."""
    port = MirrorPort()
    yield port
    port.close()


@pytest.fixture
def host_listener() -> Iterator[Listener]:
    """A loopback TCP server for the guest's uplink to reach (see Listener)."""
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def host_listener_shared() -> Iterator[Listener]:
    """host_listener for a module's shared machine."""
    listener = Listener()
    yield listener
    listener.close()
