"""Who is calling: the peer certificate's CN and serial, and the lists that say whom we accept.

The TLS layer has already verified the client certificate against the org CA (require_client_auth)
before any handler runs; this module maps the CN it carried to an Ed25519 key and tells whether
the certificate itself was revoked. The trust map and the revocation list are swapped together,
atomically, on reload: the gate reads `snapshot` once per call, so a reload never changes the key
mid-call, and a reload that fails for either file keeps both previous lists.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from appliance.errors import CommandError
from appliance.pki.revocation import RevocationList, load_revocations
from appliance.pki.trustmap import TrustMap, load_trust_map

log = logging.getLogger(__name__)


def _first(context: grpc.ServicerContext, key: str) -> bytes | None:
    values = context.auth_context().get(key)
    if not values:
        return None
    first: bytes = values[0]  # type: ignore[assignment]  # grpc-stubs types values wrongly
    return first


def peer_cn(context: grpc.ServicerContext) -> str | None:
    """The common name of the verified client certificate, or None."""
    first = _first(context, "x509_common_name")
    return None if first is None else first.decode("utf-8", "replace")


def peer_serial(context: grpc.ServicerContext) -> int | None:
    """The serial number of the verified client certificate, or None."""
    pem = _first(context, "x509_pem_cert")
    return None if pem is None else _serial_of(pem)


@functools.lru_cache(maxsize=1024)
def _serial_of(pem: bytes) -> int | None:
    # An agent presents the same certificate on every call: parse it once.
    try:
        return x509.load_pem_x509_certificate(pem).serial_number
    except ValueError:
        return None


@dataclass(frozen=True)
class Trust:
    """The trust map and the revocation list in force, loaded together."""

    agents: TrustMap
    revoked: RevocationList


class TrustHolder:
    """The trust map and revocation list in force, reloadable from their files."""

    def __init__(self, path: Path, revocation_path: Path | None = None) -> None:
        self.path = path
        self.revocation_path = revocation_path
        self.snapshot: Trust = self._load()

    def _load(self) -> Trust:
        revoked = (
            load_revocations(self.revocation_path) if self.revocation_path else RevocationList()
        )
        return Trust(load_trust_map(self.path), revoked)

    @property
    def current(self) -> TrustMap:
        """The trust map in force."""
        return self.snapshot.agents

    def reload(self) -> bool:
        """Load both files again; on any error keep the current lists and return False."""
        try:
            fresh = self._load()
        except CommandError as exc:
            log.error("trust map reload failed, keeping %d agents: %s", len(self.current), exc)
            return False
        self.snapshot = fresh
        log.info(
            "trust map reloaded: %d agents, %d revoked certificates",
            len(fresh.agents),
            len(fresh.revoked),
        )
        return True
