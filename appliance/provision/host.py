"""The host's side of provisioning: drive the dialogue of device.py over a Link.

The technician's machine holds the org PKI (`pki init`). For one box it:
1. HELLO until the box answers (it may still be booting), which also sets the box's clock;
2. ENROLL with the agent id: the box makes its keys and answers with a CSR and its Ed25519
   public key (the private keys never cross the cable);
3. signs the CSR with the org CA (pki.sign_csr: ECDSA P-256, CN = agent id) and keeps the
   certificate and the public key under DIR/agents/ID/;
4. INSTALL the certificate and the CA certificate; DONE names the certificate's SHA-256, which
   must be the one signed here.

The trust map gets the box's key before INSTALL for a fresh box (a box that installed its
identity is then always one the bus knows, even if DONE is lost for good), but only after DONE
when re-keying (`replace`): until the box has switched, the bus must keep accepting the key it
still signs with.

Every request is retransmitted with the same SEQ until its reply comes (the box answers a
retransmission from its cache); the first SEQ is random so that no reply cached from an
earlier session can be mistaken for this one's.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.crypto import parse_verify_key, write_verify_key
from appliance.crypto.keys import KeyFileError
from appliance.errors import CommandError
from appliance.pki import add_trust_entry, sign_csr, validate_agent_id
from appliance.provision.frames import MAX_SEQ, Frame, Reader, encode
from appliance.provision.link import Link


class ProvisionError(CommandError):
    """Provisioning stopped; the message says where and what to do."""


@dataclass(frozen=True)
class Timing:
    """How long to wait: for the first answer (the box may be booting), and per attempt."""

    first_answer_s: float = 180.0
    attempt_s: float = 3.0
    #: ENROLL makes two key pairs and a CSR: slow on an emulated board
    enroll_attempt_s: float = 20.0
    attempts: int = 6


@dataclass(frozen=True)
class Provisioned:
    """What a successful run did."""

    agent_id: str
    device_version: str
    clock_set: bool
    certificate: Path
    signing_public: Path
    trust_map: Path


class Provisioner:
    """One box over one link, with the PKI in pki_dir."""

    def __init__(
        self,
        link: Link,
        pki_dir: Path,
        *,
        timing: Timing = Timing(),
        say: Callable[[str], None] = lambda line: None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.link = link
        self.pki_dir = pki_dir
        self.timing = timing
        self.say = say
        self.clock_ns = clock_ns
        self.reader = Reader()
        self._seq = secrets.randbelow(MAX_SEQ // 2)

    def run(self, agent_id: str, *, replace: bool = False) -> Provisioned:
        validate_agent_id(agent_id)
        ca_path = self.pki_dir / "ca.crt"
        try:
            ca_pem = ca_path.read_text()
        except OSError as exc:
            raise ProvisionError(
                f"cannot read {ca_path} ({exc.strerror}): run `pki init`"
            ) from None
        info = self._request("HELLO", lambda: {"host_time_ns": self.clock_ns()}, "INFO", first=True)
        state, current = info.get("state"), info.get("agent_id") or ""
        self.say(
            f"box answered: {state}{' as ' + current if current else ''}, "
            f"version {info.get('version')}, host name {info.get('hostname')}"
            + (", clock set" if info.get("clock_set") else "")
        )
        if state == "provisioned" and not replace:
            raise ProvisionError(
                f"the box is already provisioned as {current}: pass --replace to give it a new "
                "identity"
            )
        csr = self._request(
            "ENROLL", lambda: {"agent_id": agent_id, "replace": replace}, "CSR", enroll=True
        )
        try:
            signing_public = parse_verify_key(str(csr.get("signing_public", "")), "the box's key")
        except KeyFileError as exc:
            raise ProvisionError(f"the box sent no usable Ed25519 public key: {exc}") from None
        cert_pem = sign_csr(self.pki_dir, str(csr.get("csr", "")).encode(), agent_id)
        agent_dir = self.pki_dir / "agents" / agent_id
        agent_dir.mkdir(parents=True, exist_ok=True)
        cert_path, pub_path = agent_dir / "client.crt", agent_dir / "ed25519.pub"
        cert_path.write_bytes(cert_pem)
        write_verify_key(pub_path, signing_public)
        trust_map = self.pki_dir / "trust_map.yaml"
        if not replace:  # before INSTALL: see the module docstring
            add_trust_entry(trust_map, agent_id, f"agents/{agent_id}/ed25519.pub")
        self.say(f"signed {agent_id}'s certificate")
        done = self._request(
            "INSTALL", lambda: {"certificate": cert_pem.decode(), "ca": ca_pem}, "DONE"
        )
        der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
        if done.get("certificate_sha256") != hashlib.sha256(der).hexdigest():
            raise ProvisionError("the box installed another certificate than the one signed here")
        if replace:
            add_trust_entry(trust_map, agent_id, f"agents/{agent_id}/ed25519.pub")
        self.say(f"trust map {trust_map} updated")
        return Provisioned(
            agent_id=agent_id,
            device_version=str(info.get("version")),
            clock_set=bool(info.get("clock_set")),
            certificate=cert_path,
            signing_public=pub_path,
            trust_map=trust_map,
        )

    def _request(
        self,
        kind: str,
        body: Callable[[], dict[str, Any]],
        expect: str,
        *,
        first: bool = False,
        enroll: bool = False,
    ) -> dict[str, Any]:
        """Send kind until the reply for its SEQ comes; its body, or ProvisionError."""
        self._seq += 1
        seq = self._seq
        t = self.timing
        per_attempt = t.enroll_attempt_s if enroll else t.attempt_s
        deadline = time.monotonic() + (t.first_answer_s if first else per_attempt * t.attempts)
        while time.monotonic() < deadline:
            self.link.write(encode(kind, seq, body()))
            reply = self._await(seq, min(per_attempt, deadline - time.monotonic()))
            if reply is None:
                continue
            if reply.kind == "ERROR":
                raise ProvisionError(f"the box refused {kind}: {reply.body.get('reason')}")
            if reply.kind != expect:
                raise ProvisionError(f"the box answered {kind} with {reply.kind}, not {expect}")
            return reply.body
        if first:
            raise ProvisionError(
                "no answer from the box: is it powered, is the cable on its console, is it "
                f"unprovisioned or in its provisioning console? ({self.reader.noise_lines} "
                f"other lines, {self.reader.corrupt} corrupt frames seen)"
            )
        raise ProvisionError(
            f"the box stopped answering during {kind} ({self.reader.corrupt} corrupt frames "
            "seen): run provision again"
        )

    def _await(self, seq: int, timeout_s: float) -> Frame | None:
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for frame in self.reader.feed(self.link.read(left)):
                if frame.seq == seq and frame.kind in ("INFO", "CSR", "DONE", "ERROR"):
                    return frame
