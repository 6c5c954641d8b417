"""Ed25519 batch verification (appliance/crypto/_ed25519_batch.c and batch.py) against libsodium.

Every case is judged by libsodium too: the batch must accept exactly what libsodium accepts,
except the one documented difference (a small-order component in R, which only the key's
holder can add).
"""

from __future__ import annotations

import hashlib
import os
import random
import threading

import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from testsupport import ed25519ref as ref

from appliance.crypto import Sealer, verify_envelope
from appliance.crypto._ed25519_batch import verify
from appliance.crypto.batch import verify_many
from appliance.wire import FlowEvent

SEED = bytes(range(32))
KEY = SigningKey(SEED)
PUBLIC = bytes(KEY.verify_key)
A = ref.secret_scalar(SEED)


def digest(sig: bytes, msg: bytes, public: bytes = PUBLIC) -> bytes:
    return hashlib.sha512(sig[:32] + public + msg).digest()


def batch(items: list[tuple[bytes, bytes]], public: bytes = PUBLIC) -> bool:
    """The C batch verifier over (msg, sig) pairs."""
    sigs = b"".join(sig for _, sig in items)
    return verify(public, sigs, b"".join(digest(sig, msg, public) for msg, sig in items))


def sodium(msg: bytes, sig: bytes, public: bytes = PUBLIC) -> bool:
    try:
        VerifyKey(public).verify(msg, sig)
    except (BadSignatureError, ValueError):
        return False
    return True


def signed(n: int, rng: random.Random) -> list[tuple[bytes, bytes]]:
    msgs = [rng.randbytes(rng.randrange(0, 300)) for _ in range(n)]
    return [(m, KEY.sign(m).signature) for m in msgs]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000])
def test_valid_batch_is_accepted(n: int) -> None:
    assert batch(signed(n, random.Random(n)))


@pytest.mark.parametrize("where", ["R", "S", "message", "digest"])
def test_one_bad_signature_fails_the_whole_batch(where: str) -> None:
    items = signed(50, random.Random(7))
    msg, sig = items[31]
    if where == "R":
        items[31] = (msg, bytes([sig[0] ^ 4]) + sig[1:])
    elif where == "S":
        items[31] = (msg, sig[:40] + bytes([sig[40] ^ 1]) + sig[41:])
    elif where == "message":
        items[31] = (msg + b"!", sig)
    if where == "digest":  # the caller hashed something else than what was signed
        sigs = b"".join(s for _, s in items)
        digests = [digest(s, m) for m, s in items]
        digests[31] = digest(sig, msg + b"?")
        assert not verify(PUBLIC, sigs, b"".join(digests))
    else:
        assert not sodium(*items[31])
        assert not batch(items)


def test_another_key_is_refused() -> None:
    other = bytes(SigningKey(b"\x02" * 32).verify_key)
    assert not batch(signed(10, random.Random(1)), public=other)


def test_random_mutations_agree_with_libsodium() -> None:
    rng = random.Random(2026)
    for msg, sig in signed(300, rng):
        raw = bytearray(sig)
        for _ in range(rng.randrange(1, 3)):
            raw[rng.randrange(64)] ^= 1 << rng.randrange(8)
        mutated = bytes(raw)
        assert batch([(msg, mutated)]) == sodium(msg, mutated)


def test_garbage_signatures_are_refused() -> None:
    rng = random.Random(3)
    for _ in range(200):
        msg, sig = rng.randbytes(40), rng.randbytes(64)
        assert not batch([(msg, sig)])
        assert not sodium(msg, sig)


def test_s_not_below_the_group_order_is_refused() -> None:
    """S + L satisfies the equation as well as S does: only the canonical check stops it."""
    msg, sig = b"flow", KEY.sign(b"flow").signature
    s = int.from_bytes(sig[32:], "little") + ref.L
    assert s < 2**256
    forged = sig[:32] + s.to_bytes(32, "little")
    assert not sodium(msg, forged)
    assert not batch([(msg, forged)])


def test_small_order_r_is_refused() -> None:
    """R = 0 and S = h a is a valid equation; libsodium refuses small-order R, and so do we."""
    msg = b"counters"
    forged = ref.sign_raw(A, PUBLIC, ref.IDENTITY, 0, msg)
    assert ref.mul(int.from_bytes(forged[32:], "little"), ref.BASE) == ref.mul(
        ref.h_scalar(forged[:32], PUBLIC, msg) * A, ref.BASE
    )
    assert not sodium(msg, forged)
    assert not batch([(msg, forged)])


def test_small_order_public_key_is_refused() -> None:
    """With A = 0, S = r and R = rB sign every message: refused outright."""
    public = ref.encode(ref.IDENTITY)
    r = 12345
    forged = ref.encode(ref.mul(r, ref.BASE)) + r.to_bytes(32, "little")
    assert not sodium(b"anything", forged, public)
    assert not batch([(b"anything", forged)], public=public)


def test_non_canonical_encodings_are_refused() -> None:
    msg, sig = b"x", KEY.sign(b"x").signature
    y_too_big = (ref.P + 1).to_bytes(32, "little")  # y = 1 + p
    assert not batch([(msg, y_too_big + sig[32:])])
    assert not batch([(msg, sig)], public=y_too_big)
    negative_zero = (1 | 1 << 255).to_bytes(32, "little")  # x = -0
    assert not batch([(msg, negative_zero + sig[32:])])
    not_on_curve = (2).to_bytes(32, "little")
    assert ref.x_from_y(2, 0) is None
    assert not batch([(msg, sig)], public=not_on_curve)


def test_torsion_in_r_is_the_one_documented_difference() -> None:
    """R' = rB + T (T of order 8), S' = r + H(R'||A||M) a: libsodium's cofactorless equation
    refuses it, the cofactored batch equation accepts it. Only the key's holder can make it."""
    msg, r = b"torsion", 987654321
    r_point = ref.add(ref.mul(r, ref.BASE), ref.torsion_point_of_order_8())
    crafted = ref.sign_raw(A, PUBLIC, r_point, r, msg)
    assert not sodium(msg, crafted)
    assert batch([(msg, crafted)])
    # and an honest signature through the same reference signer is valid for both
    honest = ref.sign_raw(A, PUBLIC, ref.mul(r, ref.BASE), r, msg)
    assert sodium(msg, honest) and batch([(msg, honest)])


def test_empty_batch_and_malformed_arguments() -> None:
    assert verify(PUBLIC, b"", b"")
    with pytest.raises(ValueError, match="32 bytes"):
        verify(PUBLIC[:31], b"", b"")
    with pytest.raises(ValueError, match="n \\* 64"):
        verify(PUBLIC, b"\x00" * 64, b"")
    with pytest.raises(ValueError, match="at most"):
        verify(PUBLIC, b"\x00" * 64 * 65537, b"\x00" * 64 * 65537)


def test_threads_verify_concurrently_and_correctly() -> None:
    good = signed(300, random.Random(5))
    bad = list(good)
    bad[100] = (bad[100][0] + b"x", bad[100][1])
    results: list[tuple[bool, bool]] = []

    def work() -> None:
        for _ in range(5):
            results.append((batch(good), batch(bad)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(True, False)] * 20


def test_verify_many_names_exactly_the_bad_envelopes() -> None:
    sealer = Sealer("branch-1", KEY)
    envs = [sealer.seal(FlowEvent(src_ip="192.0.2.1", bytes_tx=i)) for i in range(40)]
    envs[3].flow.bytes_tx += 1  # tampered payload
    envs[17].sig = envs[17].sig[:63]  # truncated signature
    envs[25].sig = os.urandom(64)
    valid = verify_many(envs, KEY.verify_key)
    assert [i for i, ok in enumerate(valid) if not ok] == [3, 17, 25]
    assert valid == [verify_envelope(env, KEY.verify_key) for env in envs]
    assert verify_many(envs[4:17], KEY.verify_key) == [True] * 13
    assert verify_many([], KEY.verify_key) == []


def test_mixed_batches_are_accepted_exactly_when_libsodium_accepts_every_signature() -> None:
    rng = random.Random(77)
    for _ in range(120):
        items = signed(rng.randrange(1, 24), rng)
        for _ in range(rng.choice([0, 0, 1, 2])):
            i = rng.randrange(len(items))
            msg, sig = items[i]
            raw = bytearray(sig)
            raw[rng.randrange(64)] ^= 1 << rng.randrange(8)
            items[i] = (msg, bytes(raw))
        assert batch(items) == all(sodium(m, s) for m, s in items)
