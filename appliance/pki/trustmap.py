"""The trust map: which agent ids the bus accepts, and each one's Ed25519 public key.

File format (the seed's layout, YAML):

    agents:
      branch-0042: agents/branch-0042/ed25519.pub     # a key file, relative to this file's folder
      branch-0043: 8f1c...e0                          # or the key inline: 64 hex or 44 base64 chars

A trust map is immutable once loaded; the bus swaps in a freshly loaded one on SIGHUP, so a reload
never races a verification. Loading validates every entry: one bad entry refuses the whole file,
with its agent id named, and the previous map stays in force. A key outside Ed25519's prime-order
subgroup (small order, or with a torsion component) is such a bad entry (crypto/keys.py says why).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from nacl.signing import VerifyKey

from appliance.crypto.keys import (
    KeyFileError,
    load_verify_key,
    parse_verify_key,
    require_prime_order,
)
from appliance.errors import CommandError

_INLINE_KEY = re.compile(r"^(?:[0-9a-fA-F]{64}|[A-Za-z0-9+/]{43}=)$")


class TrustMapError(CommandError):
    """The trust map cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class TrustMap:
    """agent id -> Ed25519 verify key, as loaded from one file at one time."""

    keys: Mapping[str, VerifyKey]
    source: Path | None = None

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self.keys

    def get(self, agent_id: str) -> VerifyKey | None:
        return self.keys.get(agent_id)

    def __len__(self) -> int:
        return len(self.keys)


def read_yaml(path: Path, what: str, error: type[CommandError] = TrustMapError) -> Any:
    """The YAML document in a file, or an error of one line naming what it is and where."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML") from exc


def load_trust_map(path: Path) -> TrustMap:
    """Load and validate a trust map file."""
    doc = read_yaml(path, "trust map")
    if doc is None:
        doc = {}
    if not isinstance(doc, dict) or set(doc) - {"agents"}:
        raise TrustMapError(f"trust map {path}: expected one top-level key, agents")
    agents = doc.get("agents") or {}
    if not isinstance(agents, dict):
        raise TrustMapError(f"trust map {path}: agents must be a mapping of id to key")
    keys: dict[str, VerifyKey] = {}
    for agent_id, value in agents.items():
        if not isinstance(agent_id, str) or not isinstance(value, str):
            raise TrustMapError(
                f"trust map {path}: agents.{agent_id}: expected a key path or inline key"
            )
        keys[agent_id] = _entry_key(path, agent_id, value)
    return TrustMap(keys=keys, source=path)


def _entry_key(path: Path, agent_id: str, value: str) -> VerifyKey:
    """The key one entry of the trust map at path names, checked as loading checks it."""
    try:
        if _INLINE_KEY.match(value.strip()):
            key = parse_verify_key(value, f"agents.{agent_id}")
        else:
            key_path = Path(value)
            if not key_path.is_absolute():
                key_path = path.parent / key_path
            key = load_verify_key(key_path)
        return require_prime_order(key, "key")
    except KeyFileError as exc:
        raise TrustMapError(f"trust map {path}: agents.{agent_id}: {exc}") from exc


def read_agent_entries(path: Path) -> dict[str, object]:
    """The agents mapping of a trust map file as written (no key is loaded); {} if absent."""
    if not path.exists():
        return {}
    loaded = read_yaml(path, "trust map")
    agents = loaded.get("agents") if isinstance(loaded, dict) else None
    return dict(agents) if isinstance(agents, dict) else {}


def write_yaml_atomically(path: Path, header: str, doc: object) -> None:
    """Replace path with header + doc as YAML: readers see the old file or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(header + yaml.safe_dump(doc, default_flow_style=False, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        raise TrustMapError(f"cannot write {path}: {exc.strerror}") from exc


def _write_agents(path: Path, agents: Mapping[str, object]) -> None:
    write_yaml_atomically(
        path,
        "# agent id -> Ed25519 public key (file path or inline base64)\n",
        {"agents": dict(sorted(agents.items()))},
    )


def add_trust_entry(path: Path, agent_id: str, key_ref: str) -> None:
    """Add or replace one agent's entry, rewriting the file atomically (host side only).

    The key is checked first, as the bus will check it: an entry the bus would refuse (which
    would make it refuse the whole file) is never written.
    """
    _entry_key(path, agent_id, key_ref)
    agents = read_agent_entries(path)
    agents[agent_id] = key_ref
    _write_agents(path, agents)


def remove_trust_entry(path: Path, agent_id: str) -> bool:
    """Remove one agent's entry (atomic rewrite); False if it had none."""
    agents = read_agent_entries(path)
    if agents.pop(agent_id, None) is None:
        return False
    _write_agents(path, agents)
    return True
