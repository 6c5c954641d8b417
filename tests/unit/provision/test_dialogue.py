"""The whole provisioning dialogue, host and device, over in-memory links: clean, lossy, noisy,
refused."""

from __future__ import annotations

import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from appliance.crypto import load_signing_key, load_verify_key
from appliance.fsm import IllegalTransition, Machine
from appliance.pki import PkiError, init_pki, issue_agent, load_trust_map, sign_csr
from appliance.provision.device import TRANSITIONS, DeviceEdges, Event, Responder, State, serve
from appliance.provision.frames import Frame, Reader, encode
from appliance.provision.host import Provisioner, ProvisionError, Timing

FAST = Timing(first_answer_s=5.0, attempt_s=0.3, enroll_attempt_s=3.0, attempts=6)
NOW_NS = time.time_ns()  # certificates are issued from the real clock


class End:
    """One end of an in-memory cable; tamper may change or drop what this end sends."""

    def __init__(
        self, inbox: queue.Queue[bytes], outbox: queue.Queue[bytes], tamper: Callable[..., bytes]
    ) -> None:
        self.inbox, self.outbox, self.tamper = inbox, outbox, tamper
        self.sent: list[bytes] = []

    def read(self, timeout_s: float) -> bytes:
        try:
            return self.inbox.get(timeout=max(timeout_s, 0.001))
        except queue.Empty:
            return b""

    def write(self, data: bytes) -> None:
        self.sent.append(data)
        data = self.tamper(data)
        if data:
            self.outbox.put(data)


@dataclass
class Box:
    """A device: its keys folder, clock, and what the responder did to the outside."""

    keys: Path
    clock_ns: int = NOW_NS
    clock_sets: list[int] = field(default_factory=list)
    wakes: int = 0
    clock_saves: int = 0
    expected_agent_id: str = ""

    def edges(self) -> DeviceEdges:
        def set_clock(ns: int) -> None:
            self.clock_sets.append(ns)
            self.clock_ns = ns

        def wake() -> None:
            self.wakes += 1

        def save_clock() -> None:
            self.clock_saves += 1

        return DeviceEdges(
            keys_dir=self.keys, version="9.9", hostname="rpi", clock_ns=lambda: self.clock_ns,
            set_clock_ns=set_clock, wake_agent=wake, expected_agent_id=self.expected_agent_id,
            save_clock=save_clock,
        )  # fmt: skip


def clean(data: bytes) -> bytes:
    return data


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    init_pki(d, [])
    return d


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(keys=tmp_path / "box" / "keys")


@pytest.fixture
def cable(box: Box) -> Iterator[Callable[..., tuple[End, End]]]:
    """Wire a host end to a serving device; the device thread stops at teardown."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def wire(
        to_box: Callable[[bytes], bytes] = clean, to_host: Callable[[bytes], bytes] = clean
    ) -> tuple[End, End]:
        a: queue.Queue[bytes] = queue.Queue()
        b: queue.Queue[bytes] = queue.Queue()
        host, device = End(b, a, to_box), End(a, b, to_host)
        responder = Responder(box.edges())
        t = threading.Thread(
            target=serve, args=(device, responder), kwargs={"stop": stop.is_set, "poll_s": 0.02}
        )
        t.start()
        threads.append(t)
        return host, device

    yield wire
    stop.set()
    for t in threads:
        t.join(timeout=5)


def _frames(chunks: list[bytes]) -> list[Frame]:
    return Reader().feed(b"".join(chunks))


def test_fresh_box_gets_an_identity_the_agent_can_use(pki: Path, box: Box, cable) -> None:  # type: ignore[no-untyped-def]
    host, device = cable()
    done = Provisioner(host, pki, timing=FAST, clock_ns=lambda: NOW_NS).run("branch-9")
    assert done.agent_id == "branch-9"
    # the files, with the modes the agent insists on
    assert stat.S_IMODE(box.keys.stat().st_mode) == 0o700
    for name, mode in (("client.key", 0o600), ("ed25519.key", 0o600), ("client.crt", 0o644)):
        assert stat.S_IMODE((box.keys / name).stat().st_mode) == mode, name
    assert (box.keys / "ca.crt").read_bytes() == (pki / "ca.crt").read_bytes()
    cert = x509.load_pem_x509_certificate((box.keys / "client.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "branch-9"
    key = serialization.load_pem_private_key((box.keys / "client.key").read_bytes(), None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
    # the host trusts exactly the key the box signs with
    signing = load_signing_key(box.keys / "ed25519.key")
    assert load_trust_map(pki / "trust_map.yaml").get("branch-9") == signing.verify_key
    assert load_verify_key(done.signing_public) == signing.verify_key
    assert box.wakes == 1
    # no private key crossed the cable
    said = b"".join(device.sent) + b"".join(host.sent)
    seed_hex = bytes(signing).hex().encode()
    assert seed_hex not in said
    assert b"PRIVATE KEY" not in said
    for frame in _frames(device.sent):
        assert "PRIVATE" not in str(frame.body)


def test_the_boxs_clock_is_moved_forward_never_back(pki: Path, box: Box, cable) -> None:  # type: ignore[no-untyped-def]
    box.clock_ns = 0  # a Pi just booted: 1970
    host, _ = cable()
    done = Provisioner(host, pki, timing=FAST, clock_ns=lambda: NOW_NS).run("branch-9")
    assert done.clock_set and box.clock_sets == [NOW_NS]
    assert box.clock_saves == 2  # when set, and with the identity: the next boot's floor
    responder = Responder(box.edges())
    later = NOW_NS + 10**12
    box.clock_ns = later
    reply = Reader().feed(responder.handle(Frame("HELLO", 1, {"host_time_ns": NOW_NS})))[0]
    assert reply.body["clock_set"] is False and box.clock_ns == later


def test_lost_replies_and_corrupted_requests_are_retransmitted_without_acting_twice(
    pki: Path,
    box: Box,
    cable,  # type: ignore[no-untyped-def]
) -> None:
    lost: set[bytes] = set()

    def lossy_replies(data: bytes) -> bytes:
        kind = data.split(b" ")[1]  # the first reply of each kind (INFO, CSR, DONE) vanishes
        if data.startswith(b"@IS1 ") and kind not in lost:
            lost.add(kind)
            return b""
        return data

    flips = {"n": 0}

    def damaged_requests(data: bytes) -> bytes:
        flips["n"] += 1
        if flips["n"] % 2:  # every other request arrives with a flipped byte and noise
            raw = bytearray(data)
            raw[len(raw) // 2] ^= 0x20
            return b"\x00garbage\r\n" + bytes(raw)
        return data

    host, device = cable(to_box=damaged_requests, to_host=lossy_replies)
    Provisioner(host, pki, timing=FAST, clock_ns=lambda: NOW_NS).run("branch-9")
    csrs = {f.body["csr"] for f in _frames(device.sent) if f.kind == "CSR"}
    assert len(csrs) == 1, "ENROLL made keys once, retransmissions got the cached CSR"
    signing = load_signing_key(box.keys / "ed25519.key")
    assert load_trust_map(pki / "trust_map.yaml").get("branch-9") == signing.verify_key
    assert box.wakes == 1
    assert lost == {b"INFO", b"CSR", b"DONE"}


def test_a_provisioned_box_is_re_keyed_only_on_purpose(pki: Path, box: Box, cable) -> None:  # type: ignore[no-untyped-def]
    host, _ = cable()
    Provisioner(host, pki, timing=FAST, clock_ns=lambda: NOW_NS).run("branch-9")
    first_key = (box.keys / "ed25519.key").read_bytes()
    host, _ = cable()
    with pytest.raises(ProvisionError, match="already provisioned as branch-9: pass --replace"):
        Provisioner(host, pki, timing=FAST, clock_ns=lambda: NOW_NS).run("branch-9")
    assert (box.keys / "ed25519.key").read_bytes() == first_key
    host, _ = cable()
    Provisioner(host, pki, timing=FAST, clock_ns=lambda: NOW_NS).run("branch-9", replace=True)
    assert (box.keys / "ed25519.key").read_bytes() != first_key
    signing = load_signing_key(box.keys / "ed25519.key")
    assert load_trust_map(pki / "trust_map.yaml").get("branch-9") == signing.verify_key


def test_the_boxs_settings_pin_its_agent_id(pki: Path, box: Box, cable) -> None:  # type: ignore[no-untyped-def]
    box.expected_agent_id = "branch-7"
    host, _ = cable()
    with pytest.raises(ProvisionError, match="settings name it branch-7"):
        Provisioner(host, pki, timing=FAST, clock_ns=lambda: NOW_NS).run("branch-9")
    assert not box.keys.exists()
    trust = pki / "trust_map.yaml"
    assert "branch-9" not in (yaml.safe_load(trust.read_text()) or {}).get("agents", {})


def test_no_answer_is_a_clear_error(pki: Path) -> None:
    silent: queue.Queue[bytes] = queue.Queue()
    host = End(silent, queue.Queue(), clean)
    host.inbox.put(b"U-Boot 2024.01\r\nStarting kernel ...\r\n")
    timing = Timing(first_answer_s=0.5, attempt_s=0.1)
    with pytest.raises(ProvisionError, match=r"no answer from the box.*2 other lines"):
        Provisioner(host, pki, timing=timing).run("branch-9")


def test_bad_agent_id_is_refused_before_anything_is_sent(pki: Path) -> None:
    host = End(queue.Queue(), queue.Queue(), clean)
    with pytest.raises(PkiError, match="invalid"):
        Provisioner(host, pki, timing=FAST).run("../etc")
    assert host.sent == []


# -- the device alone: requests a host should never send, or a forged answer -----------------


def _enrolled(box: Box, agent_id: str = "branch-9") -> tuple[Responder, str]:
    responder = Responder(box.edges())
    reply = Reader().feed(responder.handle(Frame("ENROLL", 1, {"agent_id": agent_id})))[0]
    assert reply.kind == "CSR"
    assert responder.state is State.ENROLLING
    return responder, reply.body["csr"]


def _install(responder: Responder, cert: bytes, ca: bytes, seq: int = 2) -> Frame:
    body = {"certificate": cert.decode(), "ca": ca.decode()}
    return Reader().feed(responder.handle(Frame("INSTALL", seq, body)))[0]


def test_install_before_enroll_is_refused(box: Box, pki: Path) -> None:
    responder = Responder(box.edges())
    reply = _install(responder, b"x", (pki / "ca.crt").read_bytes())
    assert reply.kind == "ERROR" and "send ENROLL first" in reply.body["reason"]


def test_a_certificate_for_another_key_is_refused(box: Box, pki: Path) -> None:
    responder, _ = _enrolled(box)
    other = issue_agent(pki, "branch-9")  # same CN, a key the box does not hold
    reply = _install(responder, other.client_cert.read_bytes(), (pki / "ca.crt").read_bytes())
    assert reply.kind == "ERROR" and "not for this device's key" in reply.body["reason"]
    assert not (box.keys / "client.crt").exists() and responder.state is State.ENROLLING


def test_a_certificate_from_another_ca_is_refused(box: Box, pki: Path, tmp_path: Path) -> None:
    responder, csr = _enrolled(box)
    rogue = tmp_path / "rogue"
    init_pki(rogue, [])
    cert = sign_csr(rogue, csr.encode(), "branch-9")
    reply = _install(responder, cert, (pki / "ca.crt").read_bytes())
    assert reply.kind == "ERROR" and "not signed by the given CA" in reply.body["reason"]
    assert not (box.keys / "client.crt").exists()


def test_a_certificate_not_yet_valid_by_the_boxs_clock_is_refused(box: Box, pki: Path) -> None:
    box.clock_ns = 0
    responder, csr = _enrolled(box)
    cert = sign_csr(pki, csr.encode(), "branch-9")
    reply = _install(responder, cert, (pki / "ca.crt").read_bytes())
    assert reply.kind == "ERROR" and "send HELLO first" in reply.body["reason"]


def test_a_retransmitted_install_is_answered_from_the_cache(box: Box, pki: Path) -> None:
    box.clock_ns = time.time_ns()
    responder, csr = _enrolled(box)
    cert = sign_csr(pki, csr.encode(), "branch-9")
    first = _install(responder, cert, (pki / "ca.crt").read_bytes(), seq=5)
    again = _install(responder, cert, (pki / "ca.crt").read_bytes(), seq=5)
    assert first == again and first.kind == "DONE"
    assert box.wakes == 1


def test_unknown_requests_and_bad_ids_get_an_error(box: Box) -> None:
    responder = Responder(box.edges())
    for body in ({}, {"agent_id": 5}, {"agent_id": "a/b"}):
        reply = Reader().feed(responder.handle(Frame("ENROLL", 3, body)))[0]
        assert reply.kind == "ERROR", body
    reply = Reader().feed(responder.handle(Frame("DONE", 4, {})))[0]
    assert reply.kind == "ERROR" and "not a request" in reply.body["reason"]
    assert responder.state is State.UNPROVISIONED


def test_the_dialogue_table_rekeys_only_on_purpose_and_refuses_illegal_moves() -> None:
    provisioned = Machine("provisioning", TRANSITIONS, State.PROVISIONED)
    assert not provisioned.can(Event.ENROLL) and not provisioned.can(Event.INSTALL)
    assert provisioned.move(Event.ENROLL_REPLACE) is State.ENROLLING
    fresh = Machine("provisioning", TRANSITIONS, State.UNPROVISIONED)
    with pytest.raises(IllegalTransition, match="from UNPROVISIONED on INSTALL"):
        fresh.move(Event.INSTALL)
    assert fresh.state is State.UNPROVISIONED


def test_a_human_at_the_console_is_told_what_it_is(box: Box) -> None:
    inbox: queue.Queue[bytes] = queue.Queue()
    out: queue.Queue[bytes] = queue.Queue()
    device = End(inbox, out, clean)
    inbox.put(b"root\r\n")
    inbox.put(b"ls -la\r\n")
    stop = threading.Event()
    t = threading.Thread(
        target=serve,
        args=(device, Responder(box.edges())),
        kwargs={"stop": stop.is_set, "poll_s": 0.02},
    )
    t.start()
    time.sleep(0.3)
    stop.set()
    t.join()
    said = b"".join(device.sent).decode()
    assert said.startswith("InfraSpectre provisioning console (unprovisioned)")
    assert "runs no shell" in said
    assert said.count("provisioning console") == 1  # banner rate-limited
    assert encode("HELLO", 1, {}) not in device.sent
