"""Who is calling: the peer certificate's CN, and the trust map that says whom we accept.

The TLS layer has already verified the client certificate against the org CA (require_client_auth)
before any handler runs; this module maps the CN it carried to an Ed25519 key. The trust map is
swapped atomically on reload: handlers read `current` once per call, so a reload never changes
the key mid-call, and a failed reload keeps the previous map.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from appliance.errors import CommandError
from appliance.pki.trustmap import TrustMap, load_trust_map

log = logging.getLogger(__name__)


def peer_cn(context: grpc.ServicerContext) -> str | None:
    """The common name of the verified client certificate, or None."""
    values = context.auth_context().get("x509_common_name")
    if not values:
        return None
    first: bytes = values[0]  # type: ignore[assignment]  # grpc-stubs types values wrongly
    return first.decode("utf-8", "replace")


class TrustHolder:
    """The trust map in force, reloadable from its file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current: TrustMap = load_trust_map(path)

    def reload(self) -> bool:
        """Load the file again; on any error keep the current map and return False."""
        try:
            fresh = load_trust_map(self.path)
        except CommandError as exc:
            log.error("trust map reload failed, keeping %d agents: %s", len(self.current), exc)
            return False
        self.current = fresh
        log.info("trust map reloaded: %d agents", len(fresh))
        return True
