"""Verifying many envelopes of one agent at once: the bus's verification path.

One libsodium verification costs 60-76 us on our 2-core machines, most of the bus's CPU per
envelope. `verify_many` checks a whole batch with one Ed25519 batch equation
(`_ed25519_batch.c`, about 12 us per signature) and falls back to libsodium, one envelope at a
time, only when the batch fails, to name the envelopes that are bad. The answers are
libsodium's except for one case the C file's header describes (a small-order component added to
R by the key's own holder), which nobody without the private key can produce.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from nacl.signing import VerifyKey

try:
    from appliance.crypto import _ed25519_batch
except ImportError as exc:  # the device image ships no compiler output; only the bus needs it
    raise ImportError(
        "the bus needs the native batch verifier appliance/crypto/_ed25519_batch.c: "
        "build it with `make venv` (pip install -e .)"
    ) from exc
from appliance.crypto.seal import canonical_bytes, verify_envelope
from appliance.wire import Envelope

SIG_BYTES = 64


def verify_many(envs: Sequence[Envelope], key: VerifyKey) -> list[bool]:
    """Whether each envelope's sig is a valid signature of its canonical bytes by key.

    Thread-safe; the batch equation runs without the GIL, so callers split a large batch across
    threads to use every core.
    """
    public = bytes(key)
    valid = [len(env.sig) == SIG_BYTES for env in envs]
    candidates = [env for env, ok in zip(envs, valid, strict=True) if ok]
    sigs = b"".join(env.sig for env in candidates)
    digests = b"".join(
        hashlib.sha512(env.sig[:32] + public + canonical_bytes(env)).digest() for env in candidates
    )
    if _ed25519_batch.verify(public, sigs, digests):
        return valid
    return [ok and verify_envelope(env, key) for env, ok in zip(envs, valid, strict=True)]
