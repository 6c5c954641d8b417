"""Per-envelope admission checks: pure functions of the envelope, the peer and the clock.

The checks run in this order and the first failure is the reason returned (INVALID):
version known; idempotency key present (<= 128 bytes); serialized size <= max_env_bytes;
timestamp set and not more than max_future_skew in the future; agent_id equal to the peer
certificate's CN; a payload present; Ed25519 signature valid over the canonical bytes
(which include prev_sig) with the trust map's key for that agent.

`check_fields` is every check but the signature; the batched path runs it per envelope and then
verifies the signatures of the survivors together (appliance.crypto.batch).
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl.signing import VerifyKey

from appliance.bus.store import Row
from appliance.crypto import verify_envelope
from appliance.wire import SUPPORTED_VERSIONS, Envelope

MAX_KEY_BYTES = 128
BAD_SIGNATURE = "bad signature"


@dataclass(frozen=True)
class Limits:
    """The configurable bounds of check_envelope."""

    max_env_bytes: int
    max_future_skew_ns: int


def check_envelope(
    env: Envelope, size: int, cn: str, key: VerifyKey, now_ns: int, limits: Limits
) -> str | None:
    """None when env is acceptable from the peer cn, else a one-line reason."""
    reason = check_fields(env, size, cn, now_ns, limits)
    if reason is None and not verify_envelope(env, key):
        return BAD_SIGNATURE
    return reason


def check_fields(env: Envelope, size: int, cn: str, now_ns: int, limits: Limits) -> str | None:
    """check_envelope without the signature: None when the fields are acceptable."""
    if env.version not in SUPPORTED_VERSIONS:
        return f"unknown envelope version {env.version!r}"
    if not env.idempotency_key:
        return "missing idempotency key"
    if len(env.idempotency_key.encode()) > MAX_KEY_BYTES:
        return f"idempotency key longer than {MAX_KEY_BYTES} bytes"
    if size > limits.max_env_bytes:
        return f"envelope of {size} bytes exceeds max_env_bytes {limits.max_env_bytes}"
    if env.ts_ns == 0:
        return "missing timestamp"
    if env.ts_ns > now_ns + limits.max_future_skew_ns:
        ahead = (env.ts_ns - now_ns) / 1e9
        return f"timestamp {ahead:.0f} s in the future (clock skew?)"
    if env.agent_id != cn:
        return f"agent_id {env.agent_id!r} does not match the certificate CN {cn!r}"
    if not env.HasField("flow") and not env.HasField("counters"):
        return "envelope carries no payload"
    return None


def envelope_row(env: Envelope, raw: bytes, received_ns: int) -> Row:
    """The store row of an accepted envelope (column order of store.COLUMNS)."""
    if env.HasField("flow"):
        f = env.flow
        return (
            env.agent_id, env.idempotency_key, env.seq, env.ts_ns, received_ns, "flow",
            f.src_ip, f.dst_ip, f.src_port, f.dst_port, f.proto, f.bytes_tx, f.bytes_rx,
            f.packets_tx, f.packets_rx, f.start_time, f.end_time, f.vlan, raw,
        )  # fmt: skip
    return (
        env.agent_id, env.idempotency_key, env.seq, env.ts_ns, received_ns, "counters",
        None, None, None, None, None, None, None, None, None, None, None, None, raw,
    )  # fmt: skip
