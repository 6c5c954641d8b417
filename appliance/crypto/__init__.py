"""Envelope sealing: canonical bytes, Ed25519 signatures, the signature chain, key files.

Canonical bytes (the only bytes ever signed or verified):

- the Envelope with field `sig` (5) cleared, every other field as sent, `prev_sig` included;
- serialized with protobuf's deterministic mode, so a map or a field order can never make two
  serializations of one envelope differ on one implementation;
- an envelope carrying fields unknown to the verifier is verified over the bytes the verifier
  re-serializes, which keeps unknown fields; `version` gates such extensions anyway.

The seed design cleared `prev_sig` before signing, which left the chain unauthenticated: anyone
could splice envelopes. Here the chain is part of what is signed, so `verify_chain` can prove that
a sequence is complete and in order.
"""

from appliance.crypto.keys import (
    KeyFileError,
    load_signing_key,
    load_verify_key,
    parse_verify_key,
    write_signing_key,
    write_verify_key,
)
from appliance.crypto.seal import (
    ChainReport,
    Sealer,
    canonical_bytes,
    sign_envelope,
    verify_chain,
    verify_envelope,
)

__all__ = [
    "ChainReport",
    "KeyFileError",
    "Sealer",
    "canonical_bytes",
    "load_signing_key",
    "load_verify_key",
    "parse_verify_key",
    "sign_envelope",
    "verify_chain",
    "verify_envelope",
    "write_signing_key",
    "write_verify_key",
]
