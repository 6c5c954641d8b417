"""The trust map: which agent ids the bus accepts, and each one's Ed25519 public key.

File format (the seed's layout, YAML):

    agents:
      branch-0042: agents/branch-0042/ed25519.pub     # a key file, relative to this file's folder
      branch-0043: 8f1c...e0                          # or the key inline: 64 hex or 44 base64 chars

A trust map is immutable once loaded; the bus swaps in a freshly loaded one on SIGHUP, so a reload
never races a verification. Loading validates every entry: one bad entry refuses the whole file,
with its agent id named, and the previous map stays in force.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from nacl.signing import VerifyKey

from appliance.crypto.keys import KeyFileError, load_verify_key, parse_verify_key
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


def load_trust_map(path: Path) -> TrustMap:
    """Load and validate a trust map file."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TrustMapError(f"cannot read trust map {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise TrustMapError(f"trust map {path} is not valid YAML") from exc
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
        try:
            if _INLINE_KEY.match(value.strip()):
                keys[agent_id] = parse_verify_key(value, f"agents.{agent_id}")
            else:
                key_path = Path(value)
                if not key_path.is_absolute():
                    key_path = path.parent / key_path
                keys[agent_id] = load_verify_key(key_path)
        except KeyFileError as exc:
            raise TrustMapError(f"trust map {path}: agents.{agent_id}: {exc}") from exc
    return TrustMap(keys=keys, source=path)


def add_trust_entry(path: Path, agent_id: str, key_ref: str) -> None:
    """Add or replace one agent's entry, rewriting the file atomically (host side only)."""
    doc: dict[str, object] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text())
        if isinstance(loaded, dict):
            doc = loaded
    agents = doc.get("agents")
    if not isinstance(agents, dict):
        agents = {}
    agents[agent_id] = key_ref
    doc["agents"] = dict(sorted(agents.items()))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        "# agent id -> Ed25519 public key (file path or inline base64)\n"
        + yaml.safe_dump(doc, default_flow_style=False, sort_keys=True)
    )
    os.replace(tmp, path)
