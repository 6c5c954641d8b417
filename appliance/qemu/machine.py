"""One emulated board: a QEMU process booting a card image, and its lifecycle.

    OFF --power_on()--> BOOTING --wait_ready()--> READY
     ^                     |                        |
     +---- power_cut() ----+------------------------+   (SIGKILL: the power is cut)
     +---- the guest halts or reboots (-no-reboot: QEMU exits) --+

At every power-on the harness plays the Pi firmware (appliance.qemu.bootfiles): it boots what
config.txt names, or tryboot.txt when the previous boot ended with the kernel's
"Restarting system with command '0 tryboot'" (the firmware's one-shot flag, consumed by that
power-on: a power cut or reset during the trial boot brings config.txt back).

Networking, always explicit (`-nic none` first: QEMU's default NIC is unrestricted):
- uplink: user-mode networking with restrict=on; the only way out is a guestfwd from
  10.0.2.100:50051 to a host port, spawned per connection through socat (the cmd: form; the
  plain tcp: form splices every guest connection into one host connection);
- mirror (optional): a UDP socket pair on the host loopback, one datagram per Ethernet frame.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from appliance.errors import CommandError
from appliance.fsm import Machine as StateMachine
from appliance.qemu import bootfiles, qemu10
from appliance.qemu.boards import BoardSpec
from appliance.qemu.console import CommandResult, Console

#: Guest-side address and port of the uplink's only destination (the bus, on the host).
GUESTFWD_ADDR = "10.0.2.100"
GUESTFWD_PORT = 50051
#: The line the image prints on the console when the system is up.
READY_MARKER = "INFRASPECTRE-READY"
#: Kernel argument of a debug boot: the console is a root shell instead of the provisioning
#: responder (overlays/base/usr/lib/appliance/console). The harness boots so by default.
CONSOLE_SHELL_ARG = "infraspectre.console=shell"
#: The kernel's last line before a reset or power-off (printed at emergency level). A panic
#: counts: a Pi resets after it (panic=10 on the card's command line), which QEMU's raspi3b,
#: having no reset controller, cannot do itself.
RESET_LINE = re.compile(
    r"reboot: (Restarting system|Power down|System halted)|Kernel panic - not syncing"
)


class State(enum.Enum):
    """Where a board is in its lifecycle (see the module docstring)."""

    OFF = "off"
    BOOTING = "booting"
    READY = "ready"


class Event(enum.Enum):
    POWER_ON = "power on"
    READY = "ready marker and shell seen"
    OFF = "power cut, halt or reset"


#: The allowed transitions (appliance.fsm); anything else is a harness bug and raises
#: fsm.IllegalTransition. Powering on a board that is on is the one refusal a user can cause
#: (power_on checks it first and says so in one line).
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.OFF, Event.POWER_ON): State.BOOTING,
    (State.BOOTING, Event.READY): State.READY,
    (State.BOOTING, Event.OFF): State.OFF,
    (State.READY, Event.OFF): State.OFF,
    (State.OFF, Event.OFF): State.OFF,
}


@dataclasses.dataclass(frozen=True)
class Mirror:
    """Host UDP ports of the mirror NIC: QEMU sends to `host`, listens on `qemu`."""

    host: int
    qemu: int


def qemu_command(
    board: BoardSpec,
    boot: bootfiles.BootFiles,
    image: Path,
    *,
    serial: str,
    uplink_port: int | None = None,
    mirror: Mirror | None = None,
    snapshot: bool = False,
    cmdline_extra: tuple[str, ...] = (),
    qemu: str = "qemu-system-aarch64",
) -> list[str]:
    """The QEMU command line booting boot's files on board with image as the card.

    serial is the console's -serial backend (tcp:...,server=on,wait=on or mon:stdio).
    """
    extra = [f"infraspectre.uplink={board.uplink_interface}"]
    if mirror is not None:
        extra.append(f"infraspectre.mirror={board.mirror_interface}")
    cmdline = bootfiles.board_cmdline(
        boot.cmdline, board.console, [*extra, *board.cmdline_extra, *cmdline_extra]
    )
    uplink = "user,id=up,restrict=on"
    if uplink_port is not None:
        uplink += (
            f",guestfwd=tcp:{GUESTFWD_ADDR}:{GUESTFWD_PORT}"
            f"-cmd:socat STDIO TCP:127.0.0.1:{uplink_port}"
        )
    cmd = [qemu, *board.machine, "-display", "none", "-monitor", "none"]
    cmd += ["-no-reboot", "-nic", "none", "-kernel", str(boot.kernel)]
    cmd += ["-initrd", str(boot.initrd), "-append", cmdline]
    if board.dtb and boot.dtb is not None:
        cmd += ["-dtb", str(boot.dtb)]
    cmd += [*board.serial_before, "-serial", serial]
    drive = str(image) + (",snapshot=on" if snapshot else "")
    cmd += [a.replace("{image}", drive) for a in board.disk]
    cmd += ["-netdev", uplink, *board.uplink]
    if mirror is not None:
        cmd += [
            "-netdev",
            f"socket,id=mirror,udp=127.0.0.1:{mirror.host},localaddr=127.0.0.1:{mirror.qemu}",
            *board.mirror,
        ]
    return cmd


class Machine:
    """A board booting image; workdir holds the boot files, console logs and QEMU's stderr."""

    def __init__(
        self,
        board: BoardSpec,
        image: Path,
        workdir: Path,
        *,
        uplink_port: int | None = None,
        mirror: Mirror | None = None,
        cmdline_extra: tuple[str, ...] = (),
        snapshot: bool = False,
        qemu: str = "qemu-system-aarch64",
        console_shell: bool = True,
    ) -> None:
        self.board = board
        self.image = image
        self.workdir = workdir
        self.uplink_port = uplink_port
        self.mirror = mirror
        self.console_shell = console_shell
        if console_shell:  # a debug boot: the console is a root shell, not the responder
            cmdline_extra = (*cmdline_extra, CONSOLE_SHELL_ARG)
        self.cmdline_extra = cmdline_extra
        self.snapshot = snapshot
        self.qemu = qemu
        self._lifecycle: StateMachine[State, Event] = StateMachine(
            f"{board.name} board", TRANSITIONS, State.OFF
        )
        self.boots = 0
        #: time.monotonic() when the current boot became READY (0.0: not yet)
        self.ready_at = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._console: Console | None = None
        self._console_port = 0
        self._boot: bootfiles.BootFiles | None = None
        #: the firmware's one-shot tryboot flag: set by a reboot that asked for it
        self.tryboot_pending = False
        #: per boot: (config file that decided, os_prefix), for tests and failure reports
        self.boot_choices: list[tuple[str, str]] = []

    @property
    def state(self) -> State:
        """Where the board is in its lifecycle."""
        return self._lifecycle.state

    @property
    def console(self) -> Console:
        if self._console is None:
            raise CommandError(f"{self.board.name} is off")
        return self._console

    @property
    def console_log(self) -> Path:
        """The console log of the current (or last) boot."""
        return self.workdir / f"console-{self.boots}.log"

    def command(self, console_port: int | None, console_stdio: bool = False) -> list[str]:
        """QEMU's argument list for this board (console on TCP port, or stdio)."""
        if self._boot is None:
            self._boot = self.choose_boot()
        serial = "mon:stdio" if console_stdio else f"tcp:127.0.0.1:{console_port},server=on,wait=on"
        cmd = qemu_command(
            self.board,
            self._boot,
            self.image,
            serial=serial,
            uplink_port=self.uplink_port,
            mirror=self.mirror,
            snapshot=self.snapshot,
            cmdline_extra=self.cmdline_extra,
            qemu=self.qemu,
        )
        if self.board.qemu == "qemu10":  # the pinned QEMU 10 from the cache, with its -L
            cmd[:1] = qemu10.command()
        return cmd

    def choose_boot(self) -> bootfiles.BootFiles:
        """What the firmware boots now (consuming the tryboot flag), extracted off the card."""
        tryboot, self.tryboot_pending = self.tryboot_pending, False
        boot = bootfiles.extract(self.image, self.workdir / "boot", self.board.dtb, tryboot=tryboot)
        self.boot_choices.append((boot.config, boot.prefix))
        if self.board.dtb_fixups:
            boot = bootfiles.emulation_dtb(boot, self.board.dtb_disable, self.board.dtb_delete)
        return boot

    def power_on(self) -> None:
        """Start QEMU and connect to its console (the guest starts once connected)."""
        if not self._lifecycle.can(Event.POWER_ON):
            raise CommandError(f"{self.board.name} is already on")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.boots += 1
        self._boot = None  # the firmware reads the card again at every power-on
        port = _free_port()
        cmd = self.command(port)
        (self.workdir / f"qemu-{self.boots}.cmd").write_text(" ".join(cmd) + "\n")
        stderr = (self.workdir / f"qemu-{self.boots}.stderr").open("wb")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        stderr.close()
        self._console_port = port
        try:
            self._console = Console.connect(port, self.console_log)
        except CommandError:
            self.power_cut()
            raise CommandError(f"QEMU did not start: {self._stderr_tail()}") from None
        self._lifecycle.move(Event.POWER_ON)

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Wait for the ready marker (and a responsive shell on a debug boot); seconds since
        power-on."""
        start = time.monotonic()
        self.console.wait_for(READY_MARKER, timeout)
        if self.console_shell:
            self.console.sync(max(10.0, timeout - (time.monotonic() - start)))
            self.console.run("stty -echo", timeout=10)
        self._lifecycle.move(Event.READY)
        self.ready_at = time.monotonic()
        return time.monotonic() - start

    def boot(self, timeout: float = 180.0) -> float:
        """Power on and wait until ready; seconds from power-on to a responsive shell."""
        self.power_on()
        return self.wait_ready(timeout)

    def release_console(self) -> int:
        """Disconnect the harness from the console so that another program (the technician's
        `provision --port socket://127.0.0.1:PORT`) can use it; returns PORT. QEMU keeps
        listening; what the guest prints meanwhile is not logged."""
        self.console.close()
        self._console = None
        return self._console_port

    def attach_console(self) -> Console:
        """Connect the harness to the console again after release_console()."""
        if self._console is None:
            self._console = Console.connect(self._console_port, self.console_log)
        return self._console

    def run(self, command: str, timeout: float = 60.0) -> CommandResult:
        """Run a shell command on the guest's console."""
        return self.console.run(command, timeout)

    def put_file(self, path: str, data: bytes, timeout: float = 60.0) -> None:
        """Write data to path on the guest (through the console, base64 in short lines)."""
        encoded = base64.b64encode(data).decode()
        self.run(f": > {path}.b64", timeout)
        for i in range(0, len(encoded), 512):
            self.run(f"echo {encoded[i : i + 512]} >> {path}.b64", timeout)
        result = self.run(f"base64 -d {path}.b64 > {path} && rm {path}.b64", timeout)
        if result.status != 0:
            raise CommandError(f"cannot write {path} on the guest: {result.output}")

    def wait_off(self, timeout: float = 60.0) -> None:
        """Wait until the guest has halted or reset after a `reboot` or `poweroff`.

        virt ends QEMU itself (-no-reboot); QEMU's raspi3b models no reset or power
        controller, so there the kernel's last words end it: once the kernel says it
        restarts or powers down, the card is quiet and the harness cuts the power.
        """
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while self._proc.poll() is None:
            if RESET_LINE.search(self.console.text()):
                break
            if time.monotonic() > deadline:
                raise CommandError(f"{self.board.name} did not power off in {timeout:.0f} s")
            time.sleep(0.2)
        self.power_cut()

    def power_cut(self) -> None:
        """Kill QEMU at once: what pulling the power does to the card."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._off()

    def _off(self) -> None:
        if self._console is not None:
            self._console.close()
            self._console = None
            # only a reboot that asked for it sets the flag; it survives the reset that
            # follows (here: the harness ending QEMU), and nothing else
            log = self.console_log
            text = log.read_text(errors="replace") if log.exists() else ""
            self.tryboot_pending = bool(bootfiles.TRYBOOT_LINE.search(text))
        self._proc = None
        self._lifecycle.move(Event.OFF)

    def _stderr_tail(self) -> str:
        path = self.workdir / f"qemu-{self.boots}.stderr"
        text = path.read_text(errors="replace").strip() if path.exists() else ""
        return text.splitlines()[-1] if text else "no message"


def _free_port() -> int:
    """A TCP port on 127.0.0.1 for the console, free a moment ago (the harness is the only
    runtime user; the development kit has its own, appliance.devkit.localprocs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
