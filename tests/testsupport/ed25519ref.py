"""A slow, obviously-correct Ed25519 in affine coordinates, for crafting edge cases in tests.

It signs with a chosen nonce and a chosen R, builds small-order points and encodes
non-canonical values: signatures no honest signer (and no library API) produces, which the
batch verifier must treat as libsodium does. Never used outside tests.
"""

from __future__ import annotations

import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

Point = tuple[int, int]
IDENTITY: Point = (0, 1)


def inv(x: int) -> int:
    return pow(x, P - 2, P)


def add(p: Point, q: Point) -> Point:
    (x1, y1), (x2, y2) = p, q
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * inv(1 + t) % P, (y1 * y2 + x1 * x2) * inv(1 - t) % P)


def neg(p: Point) -> Point:
    return (-p[0] % P, p[1])


def mul(k: int, p: Point) -> Point:
    out = IDENTITY
    while k:
        if k & 1:
            out = add(out, p)
        p = add(p, p)
        k >>= 1
    return out


def x_from_y(y: int, sign: int) -> int | None:
    """The x with this sign bit on the curve at y, or None."""
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == (-u) % P:
        x = x * SQRT_M1 % P
    if v * x * x % P != u:
        return None
    if x == 0 and sign:
        return None
    return x if x & 1 == sign else P - x


def encode(p: Point) -> bytes:
    return (p[1] | (p[0] & 1) << 255).to_bytes(32, "little")


def decode(b: bytes) -> Point:
    n = int.from_bytes(b, "little")
    y = n & ((1 << 255) - 1)
    x = x_from_y(y, n >> 255)
    assert x is not None and y < P, "not a canonical point encoding"
    return (x, y)


BASE = decode(bytes.fromhex("58" + "66" * 31))


def h_scalar(r: bytes, a: bytes, msg: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + msg).digest(), "little") % L


def secret_scalar(seed: bytes) -> int:
    """The clamped scalar a of a 32-byte seed, as RFC 8032 derives it."""
    a = bytearray(hashlib.sha512(seed).digest()[:32])
    a[0] &= 248
    a[31] &= 127
    a[31] |= 64
    return int.from_bytes(a, "little")


def sign_raw(a: int, public: bytes, r_point: Point, r: int, msg: bytes) -> bytes:
    """R || S with S = r + h a, for any R the caller chose (honest signers have R = rB)."""
    r_bytes = encode(r_point)
    s = (r + h_scalar(r_bytes, public, msg) * a) % L
    return r_bytes + s.to_bytes(32, "little")


def torsion_point_of_order_8() -> Point:
    """A point T with 8T = 0 and 4T != 0 (it lies outside the prime-order subgroup)."""
    y = 2
    while True:
        x = x_from_y(y, 0)
        if x is not None:
            t = mul(L, (x, y))  # kills the prime-order part
            if mul(4, t) != IDENTITY:
                return t
        y += 1
