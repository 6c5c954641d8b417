"""Names on the NATS side: an agent's subject, a record's message id, a chain's bucket key.

- Subject: `<prefix>.<agent>`, the agent id kept as it is when it is made only of
  `A-Z a-z 0-9 _ -`, else `x<hex of its UTF-8>` (a subject token cannot hold `.`, `*`, `>` or
  white space); distinct agents always get distinct subjects.
- `Nats-Msg-Id`: 32 hex digits of BLAKE2b-128 over the length-prefixed agent id and idempotency
  key: the (agent, key) pair, fixed length, safe for a header whatever the key holds.
- Chain key: `c.<key id>.<16 hex digits of BLAKE2b-64 of the agent id>`.
- Headers of each stream message: `Is-Key-Id` (the trust-map key the bus verified with) and
  `Is-Received-Ns` (the accepting replica's clock); the payload is the envelope's bytes as
  received (signed, so the store consumer stores exactly what the agent sealed).
"""

from __future__ import annotations

import hashlib
import re

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
KEY_ID_HEADER = "Is-Key-Id"
RECEIVED_HEADER = "Is-Received-Ns"
MSG_ID_HEADER = "Nats-Msg-Id"


def subject(prefix: str, agent: str) -> str:
    """The subject of an agent's envelopes."""
    token = agent if _TOKEN.match(agent) and not agent.startswith("x") else _hex_token(agent)
    return f"{prefix}.{token}"


def _hex_token(agent: str) -> str:
    return "x" + agent.encode().hex()


def msg_id(agent: str, key: str) -> str:
    """The Nats-Msg-Id of (agent, idempotency key)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (agent.encode(), key.encode()):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.hexdigest()


def chain_key(agent: str, key_id: str) -> str:
    """The chain bucket's key of one (agent, key id)."""
    return f"c.{key_id}.{hashlib.blake2b(agent.encode(), digest_size=8).hexdigest()}"
