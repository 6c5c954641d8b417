"""Canonical bytes, signatures and the chain."""

from pathlib import Path

import pytest
from nacl.signing import SigningKey

from appliance.crypto import (
    KeyFileError,
    Sealer,
    canonical_bytes,
    load_signing_key,
    load_verify_key,
    parse_verify_key,
    verify_chain,
    verify_envelope,
    write_signing_key,
    write_verify_key,
)
from appliance.wire import Envelope, FlowEvent


def _sealer() -> tuple[Sealer, SigningKey]:
    key = SigningKey(b"\x01" * 32)
    return Sealer("branch-1", key, clock_ns=lambda: 1_700_000_000_000_000_000), key


def test_sealed_envelope_verifies_and_carries_identity() -> None:
    sealer, key = _sealer()
    env = sealer.seal(FlowEvent(src_ip="192.0.2.1", dst_ip="198.51.100.2", bytes_tx=10))
    assert env.version == "v1" and env.agent_id == "branch-1" and env.seq == 1
    assert env.idempotency_key and len(env.sig) == 64
    assert verify_envelope(env, key.verify_key)


def test_canonical_bytes_exclude_sig_and_leave_envelope_unchanged() -> None:
    sealer, _ = _sealer()
    env = sealer.seal(FlowEvent(src_ip="192.0.2.1"))
    before = env.SerializeToString()
    canon = canonical_bytes(env)
    assert env.SerializeToString() == before
    unsigned = Envelope()
    unsigned.CopyFrom(env)
    unsigned.sig = b""
    assert canon == unsigned.SerializeToString(deterministic=True)


@pytest.mark.parametrize("field", ["prev_sig", "payload", "agent_id", "seq", "idempotency_key"])
def test_any_change_to_signed_fields_breaks_the_signature(field: str) -> None:
    sealer, key = _sealer()
    sealer.seal(FlowEvent(src_ip="192.0.2.1"))
    env = sealer.seal(FlowEvent(src_ip="192.0.2.1", bytes_tx=100))
    if field == "prev_sig":
        env.prev_sig = bytes(64)  # the seed left this unsigned; here it is covered
    elif field == "payload":
        env.flow.bytes_tx = 101
    elif field == "agent_id":
        env.agent_id = "branch-2"
    elif field == "seq":
        env.seq += 1
    else:
        env.idempotency_key = "other"
    assert not verify_envelope(env, key.verify_key)


def test_verify_chain_reports_gaps_and_bad_signatures() -> None:
    sealer, key = _sealer()
    envs = [sealer.seal(FlowEvent(src_port=i)) for i in range(5)]
    assert verify_chain(envs, key.verify_key).ok
    report = verify_chain([envs[0], envs[2], envs[3]], key.verify_key)
    assert report.broken_links == (1,) and not report.bad_signature
    envs[3].flow.src_port = 99
    report = verify_chain(envs, key.verify_key)
    assert report.bad_signature == (3,)


def test_sealer_continues_a_persisted_chain() -> None:
    sealer, key = _sealer()
    first = sealer.seal(FlowEvent())
    resumed = Sealer("branch-1", key, seq=sealer.seq, prev_sig=sealer.prev_sig)
    second = resumed.seal(FlowEvent())
    assert second.seq == 2 and second.prev_sig == first.sig
    assert verify_chain([first, second], key.verify_key).ok


def test_key_files_roundtrip_and_private_key_is_0600(tmp_path: Path) -> None:
    key = SigningKey.generate()
    write_signing_key(tmp_path / "k", key)
    write_verify_key(tmp_path / "k.pub", key.verify_key)
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    assert bytes(load_signing_key(tmp_path / "k")) == bytes(key)
    assert bytes(load_verify_key(tmp_path / "k.pub")) == bytes(key.verify_key)


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    write_signing_key(tmp_path / "k", SigningKey.generate())
    (tmp_path / "k").chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_signing_key(tmp_path / "k")


def test_verify_key_parses_hex_base64_and_rejects_garbage() -> None:
    vk = SigningKey.generate().verify_key
    import base64

    assert bytes(parse_verify_key(bytes(vk).hex(), "x")) == bytes(vk)
    assert bytes(parse_verify_key(base64.b64encode(bytes(vk)).decode(), "x")) == bytes(vk)
    with pytest.raises(KeyFileError, match="not an Ed25519 public key"):
        parse_verify_key("hello", "x")
