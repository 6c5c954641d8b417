"""Revoked client certificates: what `infraspectre pki revoke` writes and the bus refuses.

File format (YAML), `revoked.yaml` next to the trust map, written only by `pki revoke`:

    revoked:
      - serial: 5f1a0c...          # the certificate's serial number, hex
        agent: branch-0042         # the CN it was issued to (for people; matching is by serial)
        revoked_at: "2026-11-29T19:00:00+00:00"

Invariants:
- Matching is by serial number alone. That is sound because the bus accepts only certificates
  of the one org CA (TLS checks the chain first), and that CA draws every serial at random
  (159 bits, `x509.random_serial_number`).
- Revoking an agent revokes every client certificate the CA signed for its id up to now (the
  copies under DIR/issued/ID/, plus DIR/agents/ID/client.crt), and removes it from the trust map.
  A certificate issued later for the same id (re-provisioning) is not revoked.
- The revocation list is written before the trust map entry is removed: a crash between the two
  leaves the stolen certificate refused, never the reverse. Both writes are atomic renames.
- Entries are never removed by the tool. A missing file revokes nothing; an unreadable or
  malformed file is an error, and the bus keeps the previous list in force on reload.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from appliance.pki.ca import PkiError, issued_dir, validate_agent_id
from appliance.pki.trustmap import (
    TrustMapError,
    read_agent_entries,
    read_yaml,
    remove_trust_entry,
    write_yaml_atomically,
)

HEADER = "# certificates the bus refuses even if their agent id is trusted again (pki revoke)\n"


class RevocationError(PkiError):
    """The revocation list cannot be read or written; the message names the file."""


@dataclass(frozen=True)
class RevocationList:
    """Serial numbers of revoked certificates, as loaded from one file at one time."""

    serials: frozenset[int] = frozenset()
    source: Path | None = None

    def __contains__(self, serial: object) -> bool:
        return serial in self.serials

    def __len__(self) -> int:
        return len(self.serials)


@dataclass(frozen=True)
class Revoked:
    """What one `pki revoke` did."""

    agent_id: str
    serials: tuple[int, ...]
    left_trust_map: bool


def _entries(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    doc = read_yaml(path, "revocation list", RevocationError)
    entries = (doc or {}).get("revoked") if isinstance(doc, dict | None) else None
    if entries is None:
        entries = []
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("serial"), str) for e in entries
    ):
        raise RevocationError(
            f"revocation list {path}: expected revoked: a list of entries with a hex serial"
        )
    return entries


def load_revocations(path: Path) -> RevocationList:
    """Load and validate a revocation list (a missing file revokes nothing)."""
    serials = set()
    for i, entry in enumerate(_entries(path)):
        try:
            serials.add(int(entry["serial"], 16))
        except ValueError:
            raise RevocationError(
                f"revocation list {path}: revoked[{i}].serial {entry['serial']!r} is not hex"
            ) from None
    return RevocationList(frozenset(serials), path)


def _serial(path: Path) -> int:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).serial_number
    except OSError as exc:
        raise RevocationError(f"cannot read certificate {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise RevocationError(f"{path} is not a PEM certificate") from exc


def agent_certificates(directory: Path, agent_id: str) -> list[Path]:
    """Every client certificate on record for agent_id in a PKI directory."""
    found = sorted(issued_dir(directory, agent_id).glob("*.crt"))
    local = directory / "agents" / agent_id / "client.crt"
    return [*found, local] if local.exists() else found


def revoke_agent(
    directory: Path,
    agent_id: str,
    *,
    trust_map: Path | None = None,
    extra_certs: tuple[Path, ...] = (),
) -> Revoked:
    """Revoke every certificate on record for agent_id and remove it from the trust map.

    The revocation list lives next to the trust map (DIR/trust_map.yaml by default).
    """
    validate_agent_id(agent_id)
    trust = trust_map or directory / "trust_map.yaml"
    revoked_path = trust.parent / "revoked.yaml"
    known = load_revocations(revoked_path).serials  # validates the file before any change
    entries = _entries(revoked_path)
    try:
        trusted = agent_id in read_agent_entries(trust)
    except TrustMapError as exc:
        raise RevocationError(str(exc)) from exc
    certs = [*agent_certificates(directory, agent_id), *extra_certs]
    serials = list(dict.fromkeys(_serial(p) for p in certs))
    fresh = [s for s in serials if s not in known]
    if not trusted and not fresh:
        raise RevocationError(
            f"agent {agent_id!r} is not in {trust} and has no unrevoked certificate on record "
            f"in {directory}: nothing to revoke"
        )
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if fresh:
        entries += [{"serial": f"{s:x}", "agent": agent_id, "revoked_at": now} for s in fresh]
        write_yaml_atomically(revoked_path, HEADER, {"revoked": entries})
    left = remove_trust_entry(trust, agent_id) if trusted else False
    return Revoked(agent_id, tuple(fresh), left)
