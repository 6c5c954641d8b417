"""Sealing envelopes: canonical bytes, sign, verify, and the per-agent chain.

See the package docstring for the canonical-bytes rule.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from appliance.wire import ENVELOPE_VERSION, AgentHealth, Envelope, FlowEvent, InterfaceCounters


def canonical_bytes(env: Envelope) -> bytes:
    """The bytes that `sig` signs: env with sig cleared, serialized deterministically.

    The envelope is left as it was; the sig field is cleared and restored in place rather than
    copying the message, which halves the cost on the bus's verification path.
    """
    sig = env.sig
    if not sig:
        return env.SerializeToString(deterministic=True)
    env.sig = b""
    try:
        return env.SerializeToString(deterministic=True)
    finally:
        env.sig = sig


def sign_envelope(env: Envelope, key: SigningKey) -> None:
    """Set env.sig to the Ed25519 signature of its canonical bytes."""
    env.sig = b""
    env.sig = key.sign(env.SerializeToString(deterministic=True)).signature


def verify_envelope(env: Envelope, key: VerifyKey) -> bool:
    """True when env.sig is a valid signature of env's canonical bytes by key."""
    if len(env.sig) != 64:
        return False
    try:
        key.verify(canonical_bytes(env), env.sig)
    except BadSignatureError:
        return False
    return True


@dataclass(frozen=True)
class ChainReport:
    """What verify_chain found. `ok` means every signature is valid and every link holds."""

    checked: int
    bad_signature: tuple[int, ...]
    broken_links: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return not self.bad_signature and not self.broken_links


def verify_chain(
    envelopes: Iterable[Envelope], key: VerifyKey, prev_sig: bytes = b""
) -> ChainReport:
    """Verify signatures and prev_sig links of one agent's envelopes, in sequence order.

    prev_sig is the signature that precedes the first envelope (empty for the very first one).
    Returns the positions of envelopes with a bad signature and of those whose prev_sig is not
    the previous envelope's sig (a gap, a reorder or a splice).
    """
    bad: list[int] = []
    broken: list[int] = []
    n = 0
    for n, env in enumerate(envelopes, start=1):
        if not verify_envelope(env, key):
            bad.append(n - 1)
        if env.prev_sig != prev_sig:
            broken.append(n - 1)
        prev_sig = env.sig
    return ChainReport(checked=n, bad_signature=tuple(bad), broken_links=tuple(broken))


class Sealer:
    """Turns payloads into signed, chained envelopes for one agent identity.

    Not thread-safe: one sealer per producing thread, because the chain is a sequence.
    `seq` and `prev_sig` are the chain's state; a caller that persists them (the agent does)
    passes them back in after a restart so the chain continues.
    """

    def __init__(
        self,
        agent_id: str,
        key: SigningKey,
        *,
        seq: int = 0,
        prev_sig: bytes = b"",
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.agent_id = agent_id
        self.seq = seq
        self.prev_sig = prev_sig
        self._key = key
        self._clock_ns = clock_ns

    def seal(
        self,
        flow: FlowEvent | None = None,
        counters: InterfaceCounters | None = None,
        health: AgentHealth | None = None,
    ) -> Envelope:
        """Build, sign and chain the next envelope carrying a flow, counters or a health
        sample."""
        self.seq += 1
        env = Envelope(
            version=ENVELOPE_VERSION,
            ts_ns=self._clock_ns(),
            idempotency_key=uuid.uuid4().hex,
            agent_id=self.agent_id,
            seq=self.seq,
            prev_sig=self.prev_sig,
        )
        if flow is not None:
            env.flow.CopyFrom(flow)
        if counters is not None:
            env.counters.CopyFrom(counters)
        if health is not None:
            env.health.CopyFrom(health)
        sign_envelope(env, self._key)
        self.prev_sig = env.sig
        return env
