"""The rpi image on QEMU's Raspberry Pi 3 B: what the issue's acceptance asks of a booted card.

One machine is shared by the read-only checks of this module; the power-cut test boots its
own card.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import __version__
from appliance.devkit.capture.synth import generate
from appliance.devkit.qemu.fixtures import Listener, MirrorPort
from appliance.image import manifest, settings
from appliance.image.build import Result
from appliance.image.lock import normalise
from appliance.image.lock import read as read_lock
from appliance.qemu.console import ConsoleTimeout
from appliance.qemu.machine import GUESTFWD_ADDR, GUESTFWD_PORT, Machine

ROOT = Path(__file__).resolve().parents[2]
# a cold build (downloads) or a boot on a loaded 2-core host can exceed the default 300 s
pytestmark = pytest.mark.timeout(900)


AGENT_ID = "branch-042"


@pytest.fixture(scope="module")
def pi(  # type: ignore[no-untyped-def]
    boot_board_shared, rpi_image: Path, host_listener_shared: Listener,
    mirror_port_shared: MirrorPort, tmp_path_factory: pytest.TempPathFactory,
) -> Machine:  # fmt: skip
    """raspi3b booting a copy of the image configured as `image configure` would."""
    card = tmp_path_factory.mktemp("configured") / "card.img"
    shutil.copyfile(rpi_image, card)
    settings.configure(card, {"agent_id": AGENT_ID, "bus": f"{GUESTFWD_ADDR}:50051"}, [])
    return boot_board_shared(
        card,
        "raspi3b",
        uplink_port=host_listener_shared.port,
        mirror=mirror_port_shared.mirror,
    )


def test_runtime_dependencies_import_in_the_guest(pi: Machine) -> None:
    result = pi.run(
        "python3 -c 'import appliance, grpc, nacl, pyroute2, prometheus_client, google.protobuf'",
        timeout=180,
    )
    assert result.status == 0, result.output


def test_guest_infraspectre_version_equals_the_hosts(pi: Machine) -> None:
    host = subprocess.run(
        [sys.executable, "-m", "appliance", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert host == f"infraspectre {__version__}"
    result = pi.run("infraspectre --version", timeout=180)
    assert (result.status, result.output.strip()) == (0, host)


def test_guest_python_distributions_are_the_locked_versions(pi: Machine) -> None:
    lock = read_lock(ROOT / "requirements.lock")
    names = " ".join(sorted(lock))
    script = "import sys, importlib.metadata as m; [print(n, m.version(n)) for n in sys.argv[1:]]"
    result = pi.run(f'python3 -c "{script}" {names}', timeout=120)
    assert result.status == 0, result.output
    found = dict(line.split() for line in result.output.splitlines() if line.strip())
    assert {normalise(k): v for k, v in found.items()} == lock


def test_guest_meters_with_the_c_fast_path_byte_for_byte_as_the_host(
    pi: Machine, tmp_path: Path
) -> None:
    # the card carries appliance/capture/_fastpath.c built for aarch64 (image build): pcap,
    # decode and flows use it whenever it imports, and fall back to numpy and Python when not
    # (the bench, `bench flows --board`, also checks the modules' choice on the board)
    native = pi.run("python3 -c 'import appliance.capture._fastpath as f; print(f.__file__)'")
    assert native.status == 0, native.output
    assert native.output.endswith("/capture/_fastpath.cpython-311-aarch64-linux-gnu.so")
    # the same capture metered on the host and on the card: the same JSON lines, byte for byte
    pcap = tmp_path / "mixed.pcap"
    generate(pcap, seed=11, packets=1000, flows=50)  # TCP, UDP, ICMP, VLAN, IPv6, ARP
    host = subprocess.run(
        [sys.executable, "-m", "appliance", "flows", "--pcap", str(pcap), "--json"],
        capture_output=True,
        check=True,
        timeout=300,
    ).stdout
    assert host.count(b"\n") == 50
    pi.put_file("/tmp/mixed.pcap.gz", gzip.compress(pcap.read_bytes(), 9, mtime=0))
    guest = pi.run(
        "gunzip -f /tmp/mixed.pcap.gz && infraspectre flows --pcap /tmp/mixed.pcap --json "
        "> /tmp/mixed.jsonl 2> /tmp/mixed.err && sha256sum /tmp/mixed.jsonl",
        timeout=300,
    )
    assert guest.status == 0, guest.output
    assert guest.output.split()[0] == hashlib.sha256(host).hexdigest(), guest.output


def test_root_is_read_only(pi: Machine) -> None:
    mounts = pi.run("grep ' / ' /proc/mounts")
    assert re.search(r" / squashfs ro[ ,]", mounts.output), mounts.output
    write = pi.run("touch /usr/should-not-exist")
    assert write.status != 0
    assert "Read-only file system" in write.output


def test_data_is_f2fs_mounted_noatime(pi: Machine) -> None:
    mounts = pi.run("grep ' /data ' /proc/mounts")
    assert re.search(r" /data f2fs rw,.*noatime", mounts.output), mounts.output


def test_uplink_reaches_the_guestfwd_port_and_nothing_else(
    pi: Machine, host_listener_shared: Listener
) -> None:
    lease = pi.run(
        "i=0; while [ ! -s /run/appliance/uplink ] && [ $i -lt 120 ]; do sleep 0.5; "
        "i=$((i+1)); done; cat /run/appliance/uplink",
        timeout=90,
    )
    assert "usb0 10.0.2.15" in lease.output, lease.output
    probe = (
        "import socket, sys\n"
        "for host, port in [(sys.argv[1], int(sys.argv[2])), ('10.0.2.2', int(sys.argv[3])),"
        " ('203.0.113.1', 80)]:\n"
        "    try:\n"
        "        s = socket.create_connection((host, port), 4)\n"
        "        s.sendall(b'hello')\n"
        "        print(host, 'open', s.recv(64).decode())\n"
        "    except OSError as e:\n"
        "        print(host, 'blocked', type(e).__name__)\n"
    )
    pi.put_file("/tmp/probe.py", probe.encode())
    result = pi.run(
        f"python3 /tmp/probe.py {GUESTFWD_ADDR} {GUESTFWD_PORT} {host_listener_shared.port}",
        timeout=120,
    )
    lines = dict(line.split(" ", 1) for line in result.output.splitlines() if " " in line)
    assert lines[GUESTFWD_ADDR] == "open pong:hello", result.output
    assert lines["10.0.2.2"].startswith("blocked"), result.output
    assert lines["203.0.113.1"].startswith("blocked"), result.output
    assert host_listener_shared.connections == 1


def test_mirror_port_frames_reach_the_promiscuous_mirror_interface(
    pi: Machine, mirror_port_shared: MirrorPort
) -> None:
    # rcS sets it up in the background once USB has enumerated it: wait, bounded
    flags = pi.run(
        "i=0; while [ $(( $(cat /sys/class/net/usb1/flags 2>/dev/null || echo 0) & 0x100 )) = 0 ]"
        " && [ $i -lt 80 ]; do sleep 0.5; i=$((i+1)); done; cat /sys/class/net/usb1/flags",
        timeout=60,
    )
    assert int(flags.output, 16) & 0x100, "usb1 is not promiscuous"  # IFF_PROMISC
    before = int(pi.run("cat /sys/class/net/usb1/statistics/rx_packets").output)
    # frames for a MAC that is not the guest's, as a switch's SPAN port delivers them
    frame = bytes.fromhex("02aabbccddee02112233445508004500") + bytes(50)
    for _ in range(100):
        mirror_port_shared.send(frame)
    counted = pi.run(
        "i=0; while [ $i -lt 40 ]; do n=$(cat /sys/class/net/usb1/statistics/rx_packets); "
        f"[ $n -ge {before + 100} ] && break; sleep 0.25; i=$((i+1)); done; echo $n",
        timeout=60,
    )
    assert int(counted.output) - before == 100


#: net_device flags (linux/if.h)
IFF_UP, IFF_NOARP, IFF_PROMISC, IFF_MULTICAST = 0x1, 0x80, 0x100, 0x1000
RECEIVE_ONLY = (
    "cat /sys/class/net/usb1/flags /proc/sys/net/ipv6/conf/usb1/disable_ipv6 "
    "/proc/sys/net/ipv4/conf/usb1/rp_filter; ip addr show dev usb1 | grep -c inet"
)


def _assert_receive_only(output: str) -> None:
    flags, ipv6_off, rp_filter, addresses = output.split()
    flags_set = int(flags, 16)
    assert flags_set & (IFF_UP | IFF_NOARP | IFF_PROMISC) == IFF_UP | IFF_NOARP | IFF_PROMISC
    assert not flags_set & IFF_MULTICAST
    assert (ipv6_off, rp_filter, addresses) == ("1", "1", "0")


def test_mirror_port_is_up_receive_only_and_silent(
    pi: Machine, mirror_port_shared: MirrorPort
) -> None:
    _assert_receive_only(pi.run(RECEIVE_ONLY).output)
    assert pi.run("cat /sys/class/net/usb1/statistics/tx_packets").output == "0"
    assert mirror_port_shared.received == 0  # nothing reached the host side either


def test_mirror_adapter_appearing_late_comes_up_receive_only(
    pi: Machine, mirror_port_shared: MirrorPort
) -> None:
    # unbinding and binding the USB adapter's driver makes a new usb1 appear, as a late
    # adapter does: down, with the kernel's defaults (IPv6 on); the mirror-ports service
    # must bring it up receive-only
    log = "/run/log/mirror-ports.log"
    seen = pi.run(f"grep -c 'usb1 appeared' {log}").output
    replug = pi.run(
        "dev=$(basename $(readlink /sys/class/net/usb1/device)); "
        "drv=$(readlink -f /sys/class/net/usb1/device/driver); "
        "echo -n $dev > $drv/unbind; i=0; "
        "while [ -e /sys/class/net/usb1 ] && [ $i -lt 40 ]; do sleep 0.25; i=$((i+1)); done; "
        "[ -e /sys/class/net/usb1 ] && echo still-there; echo -n $dev > $drv/bind; i=0; "
        "while [ $(( $(cat /sys/class/net/usb1/flags 2>/dev/null || echo 0) & 1 )) = 0 ] "
        f"&& [ $i -lt 80 ]; do sleep 0.25; i=$((i+1)); done; grep -c 'usb1 appeared' {log}",
        timeout=60,
    )
    assert replug.output.splitlines()[-1] == str(int(seen) + 1), replug.output
    assert "mirror-ports: usb1 appeared: up, receive-only" in pi.run(f"cat {log}").output
    _assert_receive_only(pi.run(RECEIVE_ONLY).output)
    assert mirror_port_shared.received == 0


def test_first_boot_settings_on_the_boot_partition_are_applied(pi: Machine) -> None:
    assert pi.run("hostname").output == AGENT_ID
    applied = pi.run("cat /run/appliance/settings").output.splitlines()
    # the file's lines first, then the kernel command line's (the harness's uplink): later wins
    assert applied.index(f"bus={GUESTFWD_ADDR}:50051") < applied.index("uplink=usb0")


def test_clock_never_runs_earlier_than_the_image_build(pi: Machine, rpi_build: Result) -> None:
    epoch = manifest.read(rpi_build.manifest)["source_date_epoch"]
    assert int(pi.run("date +%s").output) >= epoch


def test_unprovisioned_box_runs_the_agent_which_asks_for_its_identity(pi: Machine) -> None:
    # The supervisor starts the real agent; without an identity in /data/keys it refuses with
    # one line and the supervisor retries with backoff (imports are slow on an emulated Pi).
    # Service output goes to /run/log/agent.log, never to the console.
    log = pi.run(
        "i=0; while ! grep -q 'provision the box' /run/log/agent.log 2>/dev/null "
        "&& [ $i -lt 480 ]; do sleep 0.5; i=$((i+1)); done; cat /run/log/agent.log",
        timeout=300,
    ).output
    assert "infraspectre: cannot read the agent certificate /data/keys/client.crt" in log
    assert "supervise: starting agent" in log


def test_supervisor_restarts_a_crashing_service_with_doubling_capped_backoff(
    pi: Machine,
) -> None:
    conf = "command=\"sh -c 'exit 3'\"\ncheck=true\nbackoff='1 4'\n"
    pi.put_file("/tmp/flaky.conf", conf.encode())
    pi.run("/usr/lib/appliance/supervise /tmp/flaky.conf >/dev/null 2>&1 & echo $! >/tmp/flaky.pid")
    waited = pi.run(
        "i=0; while [ $(cat /run/log/flaky.log 2>/dev/null | grep -c restarting) -lt 4 ] "
        "&& [ $i -lt 120 ]; do "
        "sleep 0.5; i=$((i+1)); done; kill $(cat /tmp/flaky.pid); cat /run/log/flaky.log",
        timeout=90,
    )
    delays = re.findall(r"exited with status 3 after \d+s; restarting in (\d+)s", waited.output)
    assert delays[:4] == ["1", "2", "4", "4"], waited.output


def _console_answers(pi: Machine, tries: int = 3) -> None:
    """Until the console's shell runs a command: stopping the supervisor of the test before
    can make the shell restart, and a line typed meanwhile is lost (seen in a board run)."""
    for attempt in range(tries):
        try:
            pi.run("true", timeout=60)
            return
        except ConsoleTimeout:
            if attempt == tries - 1:
                raise


def test_supervisor_woken_by_usr1_restarts_the_service_without_waiting(pi: Machine) -> None:
    _console_answers(pi)
    conf = "command=\"sh -c 'exit 4'\"\ncheck=true\nbackoff='300 600'\n"
    pi.put_file("/tmp/sleepy.conf", conf.encode())
    pi.run("/usr/lib/appliance/supervise /tmp/sleepy.conf >/dev/null 2>&1 & echo $! >/tmp/s.pid")
    wait_for = (
        "i=0; while [ $(cat /run/log/sleepy.log 2>/dev/null | grep -c '{0}') -lt {1} ] "
        "&& [ $i -lt 120 ]; do sleep 0.5; i=$((i+1)); done; cat /run/log/sleepy.log"
    )
    pi.run(wait_for.format("restarting in 300s", 1), timeout=90)
    assert pi.run("kill -USR1 $(cat /run/appliance/sleepy.supervise)").status == 0
    # the exact start line: "woken: starting sleepy now" comes first and must not end the wait
    # (the console's shell may restart after this test: no test after it uses that console)
    log = pi.run(wait_for.format("supervise: starting sleepy", 2), timeout=90).output
    pi.run("kill $(cat /tmp/s.pid)")
    assert "supervise: woken: starting sleepy now" in log, log
    assert log.count("supervise: starting sleepy") >= 2, log


def test_data_survives_a_power_cut_and_a_reboot(boot_board, rpi_image: Path) -> None:  # type: ignore[no-untyped-def]
    pi = boot_board(rpi_image, "raspi3b")
    assert pi.run("echo before-power-cut > /data/survivor && sync").status == 0
    pi.power_cut()
    pi.boot()
    assert pi.run("cat /data/survivor").output == "before-power-cut"
    # an orderly reboot must leave /data clean without an explicit sync
    assert pi.run("echo before-reboot > /data/survivor2").status == 0
    pi.console.send("reboot")
    pi.wait_off(timeout=120)
    pi.boot()
    result = pi.run("cat /data/survivor /data/survivor2")
    assert result.output.split() == ["before-power-cut", "before-reboot"]
