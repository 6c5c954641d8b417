"""The device's side of provisioning: a responder on the serial console, never a shell.

Dialogue (the host drives it; see frames.py for the framing):

    host                                   device
    HELLO   {host_time_ns}            ->   INFO  {state, agent_id, version, hostname, clock_set}
    ENROLL  {agent_id, replace}       ->   CSR   {csr, signing_public}
    INSTALL {certificate, ca}         ->   DONE  {agent_id, certificate_sha256}
    anything refused                  ->   ERROR {reason}

States (appliance.fsm over TRANSITIONS below): UNPROVISIONED -> ENROLLING on ENROLL;
ENROLLING -> PROVISIONED on a valid INSTALL; PROVISIONED -> ENROLLING only on ENROLL with
`replace` (a technician re-keying a box on purpose). HELLO is answered in every state and moves
nothing. A request is checked against the table before it is acted on, and the state moves only
once the request has succeeded (a refused request changes nothing); a move the table does not
allow after that check would be a bug here, and raises fsm.IllegalTransition.

Invariants:
- Both private keys (the TLS client key, ECDSA P-256, and the Ed25519 record-signing key) are
  generated here and never sent; until INSTALL they exist only in memory.
- INSTALL is accepted only for a certificate whose key is the staged key, whose CN is the
  enrolled agent id and which the given CA signed. The files then land in the keys folder one
  by one, each written to a temporary name, fsynced and renamed; client.crt comes last because
  the agent treats its presence as "provisioned".
- HELLO moves the clock forward to the host's when it is behind (a Pi has no real-time clock
  and TLS needs a date inside the certificates' validity); never backward. The clock is then
  saved (and again at INSTALL) where the next boot takes its floor from, so a power cut
  cannot take the box back before its certificate.
- A retransmitted request (same kind and SEQ as the last one) gets the cached reply again and
  changes nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nacl.signing import SigningKey

from appliance.crypto.keys import write_private_file, write_signing_key
from appliance.fsm import Machine
from appliance.pki import PkiError, validate_agent_id
from appliance.provision.frames import Frame, Reader, encode
from appliance.provision.link import Link

#: the device's clock is moved to the host's when it is behind by more than this
CLOCK_SLACK_NS = 2_000_000_000
CERT, KEY, SIGNING_KEY, CA = "client.crt", "client.key", "ed25519.key", "ca.crt"


class State(enum.Enum):
    """Whether the box has an identity, or is being given one."""

    UNPROVISIONED = "unprovisioned"
    ENROLLING = "enrolling"
    PROVISIONED = "provisioned"


class Event(enum.Enum):
    """A request that succeeded (HELLO is not one: it moves nothing)."""

    ENROLL = "enroll"
    #: ENROLL with `replace`: the technician means to re-key a provisioned box
    ENROLL_REPLACE = "enroll_replace"
    INSTALL = "install"


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.UNPROVISIONED, Event.ENROLL): State.ENROLLING,
    (State.UNPROVISIONED, Event.ENROLL_REPLACE): State.ENROLLING,  # nothing to replace: enrol
    (State.ENROLLING, Event.ENROLL): State.ENROLLING,
    (State.ENROLLING, Event.ENROLL_REPLACE): State.ENROLLING,
    (State.ENROLLING, Event.INSTALL): State.PROVISIONED,
    (State.PROVISIONED, Event.ENROLL_REPLACE): State.ENROLLING,
}


class Refused(Exception):
    """A request the device answers with ERROR; the message is the reason."""


@dataclass(frozen=True)
class DeviceEdges:
    """What the responder touches outside itself (files, the system clock, the agent)."""

    keys_dir: Path
    version: str
    hostname: str
    clock_ns: Callable[[], int]
    set_clock_ns: Callable[[int], None]
    wake_agent: Callable[[], None]
    #: the agent id the box's settings (boot partition) give it; "" when they name none
    expected_agent_id: str = ""
    #: record the clock where the next boot reads its floor (rcS step 4), so that a power cut
    #: never takes the box back before its certificate's validity
    save_clock: Callable[[], None] = lambda: None


@dataclass
class _Staged:
    agent_id: str
    tls_key: ec.EllipticCurvePrivateKey
    signing_key: SigningKey
    reply: dict[str, Any]


def installed_agent_id(keys_dir: Path) -> str | None:
    """The CN of the installed client certificate, or None when the box has no identity."""
    try:
        cert = x509.load_pem_x509_certificate((keys_dir / CERT).read_bytes())
    except (OSError, ValueError):
        return None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else None


class Responder:
    """Answers provisioning frames; one instance per console, single-threaded."""

    def __init__(self, edges: DeviceEdges) -> None:
        self.edges = edges
        self.agent_id = installed_agent_id(edges.keys_dir)
        self._machine = Machine(
            "provisioning",
            TRANSITIONS,
            State.PROVISIONED if self.agent_id else State.UNPROVISIONED,
        )
        self._staged: _Staged | None = None
        self._last: tuple[str, int, bytes] | None = None

    @property
    def state(self) -> State:
        """Where the dialogue stands."""
        return self._machine.state

    def handle(self, frame: Frame) -> bytes:
        """The reply line to one request frame."""
        if self._last is not None and self._last[:2] == (frame.kind, frame.seq):
            return self._last[2]
        try:
            kind, body = self._dispatch(frame)
        except Refused as exc:
            kind, body = "ERROR", {"reason": str(exc)}
        reply = encode(kind, frame.seq, body)
        self._last = (frame.kind, frame.seq, reply)
        return reply

    def _dispatch(self, frame: Frame) -> tuple[str, dict[str, Any]]:
        if frame.kind == "HELLO":
            return "INFO", self._hello(frame.body)
        if frame.kind == "ENROLL":
            return "CSR", self._enroll(frame.body)
        if frame.kind == "INSTALL":
            if not self._machine.can(Event.INSTALL):
                raise Refused("no enrollment in progress: send ENROLL first")
            return "DONE", self._install(frame.body)
        raise Refused(f"{frame.kind} is not a request this device answers")

    # -- requests -------------------------------------------------------------------------------

    def _hello(self, body: dict[str, Any]) -> dict[str, Any]:
        host_ns = body.get("host_time_ns")
        clock_set = False
        if isinstance(host_ns, int) and host_ns - self.edges.clock_ns() > CLOCK_SLACK_NS:
            try:
                self.edges.set_clock_ns(host_ns)
                self.edges.save_clock()
                clock_set = True
            except OSError:
                clock_set = False
        return {
            "state": self.state.value,
            "agent_id": self.agent_id or "",
            "version": self.edges.version,
            "hostname": self.edges.hostname,
            "clock_set": clock_set,
        }

    def _enroll(self, body: dict[str, Any]) -> dict[str, Any]:
        agent_id = body.get("agent_id")
        if not isinstance(agent_id, str):
            raise Refused("ENROLL needs an agent_id")
        try:
            validate_agent_id(agent_id)
        except PkiError as exc:
            raise Refused(str(exc)) from None
        expected = self.edges.expected_agent_id
        if expected and agent_id != expected:
            raise Refused(
                f"this box's settings name it {expected}: enroll it as {expected} or change "
                "agent_id in the boot partition's infraspectre.txt"
            )
        event = Event.ENROLL_REPLACE if body.get("replace") is True else Event.ENROLL
        if not self._machine.can(event):  # a provisioned box, and no `replace`
            raise Refused(
                f"already provisioned as {self.agent_id}: replace its identity on purpose "
                "(provision --replace)"
            )
        if self._staged is not None and self._staged.agent_id == agent_id:
            self._machine.move(event)
            return self._staged.reply  # a new ENROLL for the same id: same keys, same CSR
        tls_key = ec.generate_private_key(ec.SECP256R1())
        signing_key = SigningKey.generate()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)]))
            .sign(tls_key, hashes.SHA256())
        )
        reply = {
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "signing_public": bytes(signing_key.verify_key).hex(),
        }
        self._staged = _Staged(agent_id, tls_key, signing_key, reply)
        self._machine.move(event)
        return reply

    def _install(self, body: dict[str, Any]) -> dict[str, Any]:
        staged = self._staged
        assert staged is not None
        cert_pem, ca_pem = body.get("certificate"), body.get("ca")
        if not isinstance(cert_pem, str) or not isinstance(ca_pem, str):
            raise Refused("INSTALL needs a certificate and a ca, both PEM")
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
            ca = x509.load_pem_x509_certificate(ca_pem.encode())
        except ValueError:
            raise Refused("the certificate or the CA is not PEM") from None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if cert.public_key().public_bytes(der, spki) != staged.tls_key.public_key().public_bytes(
            der, spki
        ):
            raise Refused("the certificate is not for this device's key (another box's?)")
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not cns or cns[0].value != staged.agent_id:
            raise Refused(f"the certificate does not name {staged.agent_id}")
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise Refused("the certificate was not signed by the given CA") from None
        now = dt.datetime.fromtimestamp(self.edges.clock_ns() / 1e9, dt.UTC)
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise Refused(
                f"the certificate is not valid at the box's time {now:%Y-%m-%d %H:%M}Z "
                "(send HELLO first: it sets the clock)"
            )
        self._write_identity(staged, cert_pem.encode(), ca_pem.encode())
        # the identity is in place whatever happens here: the saved clock is a second defence
        with contextlib.suppress(OSError):
            self.edges.save_clock()
        self._staged = None
        self.agent_id = staged.agent_id
        self._machine.move(Event.INSTALL)
        self.edges.wake_agent()
        return {
            "agent_id": staged.agent_id,
            "certificate_sha256": hashlib.sha256(cert.public_bytes(der)).hexdigest(),
        }

    def _write_identity(self, staged: _Staged, cert: bytes, ca: bytes) -> None:
        keys = self.edges.keys_dir
        keys.mkdir(parents=True, exist_ok=True)
        os.chmod(keys, 0o700)
        tls_pem = staged.tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            write_signing_key(keys / (SIGNING_KEY + ".new"), staged.signing_key)
            os.replace(keys / (SIGNING_KEY + ".new"), keys / SIGNING_KEY)
            for name, data in ((KEY, tls_pem), (CA, ca), (CERT, cert)):
                write_private_file(keys / (name + ".new"), data)
                if name in (CA, CERT):
                    os.chmod(keys / (name + ".new"), 0o644)
                os.replace(keys / (name + ".new"), keys / name)
            fd = os.open(keys, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise Refused(f"cannot write the identity to {keys}: {exc.strerror}") from None


#: what a human typing at the console is told (at most every BANNER_EVERY_S)
BANNER = (
    "InfraSpectre provisioning console ({state}{ident}). This console runs no shell: give the "
    "box its identity with `infraspectre provision --port PORT --pki DIR --agent-id ID` "
    "on the technician's computer.\r\n"
)
BANNER_EVERY_S = 5.0
REQUESTS = frozenset({"HELLO", "ENROLL", "INSTALL"})


def serve(
    link: Link,
    responder: Responder,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    stop: Callable[[], bool] = lambda: False,
    poll_s: float = 1.0,
) -> None:
    """Answer frames on link until stop() or the link closes (LinkClosed propagates)."""
    reader = Reader()
    noise_seen, banner_at = 0, -BANNER_EVERY_S

    def banner() -> None:
        nonlocal banner_at
        ident = f" as {responder.agent_id}" if responder.agent_id else ""
        link.write(BANNER.format(state=responder.state.value, ident=ident).encode())
        banner_at = monotonic()

    banner()
    while not stop():
        for frame in reader.feed(link.read(poll_s)):
            if frame.kind in REQUESTS:
                link.write(responder.handle(frame))
        if reader.noise_lines > noise_seen:
            noise_seen = reader.noise_lines
            if monotonic() - banner_at >= BANNER_EVERY_S:
                banner()
