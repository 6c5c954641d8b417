/*
 * Ed25519 batch verification for the bus: many signatures by ONE public key, checked together.
 *
 * Why: the bus verifies every envelope, and one libsodium verification costs about 60-76 us
 * here; that alone held the 2-core machine below 20,000 envelopes/s. Checked as a batch, the
 * per-signature cost is one point decompression and a 128-bit scalar multiplication share.
 *
 * Contract (verify(public_key, sigs, digests) -> bool):
 * - public_key: 32 bytes A. sigs: n*64 bytes, (R_i || S_i). digests: n*64 bytes,
 *   SHA-512(R_i || A || M_i), computed by the caller.
 * - True means every signature is valid, with a false-accept probability below 2^-128 per
 *   call (random 128-bit coefficients z_i from getrandom). False means at least one is not, or
 *   an input is malformed; the caller then checks each signature alone to name the bad ones.
 * - Checks per signature, as libsodium does: S canonical (S < L); R a canonical encoding of a
 *   curve point that is not of small order. Once per call: A canonical, on the curve, not of
 *   small order.
 * - The equation is the cofactored one, [8]([sum z_i S_i]B - [sum z_i h_i]A - sum [z_i]R_i) = 0
 *   with h_i = digest_i mod L. It accepts everything libsodium's cofactorless equation accepts;
 *   it differs only for signatures made by the key's holder with a small-order component added
 *   to R, which no one without the private key can produce.
 * - No secrets are handled (verification only), so the code is variable-time. The GIL is
 *   released while computing; inputs are copied first.
 *
 * Arithmetic: field elements mod p = 2^255 - 19 in five 51-bit limbs ("weakly reduced": every
 * limb below 2^52 between operations); points in extended twisted Edwards coordinates with the
 * addition and doubling formulas of Hisil, Wong, Carter and Dawson (2008) for a = -1; the
 * multi-scalar product by Straus's method with width-5 signed windows (odd multiples 1..15P).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

typedef unsigned __int128 u128;

#define MASK51 ((UINT64_C(1) << 51) - 1)
#define WINDOW 5
#define TABLE (1 << (WINDOW - 2)) /* odd multiples 1P, 3P, ..., 15P */
#define NAF_LEN 257
#define MAX_BATCH 65536 /* keeps the scalar accumulators below their bit widths */

/* ---- field arithmetic mod p ------------------------------------------------------------- */

typedef struct {
    uint64_t v[5];
} fe;

static const fe FE_ZERO = {{0, 0, 0, 0, 0}};
static const fe FE_ONE = {{1, 0, 0, 0, 0}};
/* d = -121665/121666, 2d, and sqrt(-1) = 2^((p-1)/4), each mod p */
static const fe FE_D = {{0x34dca135978a3ULL, 0x1a8283b156ebdULL, 0x5e7a26001c029ULL,
                         0x739c663a03cbbULL, 0x52036cee2b6ffULL}};
static const fe FE_D2 = {{0x69b9426b2f159ULL, 0x35050762add7aULL, 0x3cf44c0038052ULL,
                          0x6738cc7407977ULL, 0x2406d9dc56dffULL}};
static const fe FE_SQRTM1 = {{0x61b274a0ea0b0ULL, 0x0d5a5fc8f189dULL, 0x7ef5e9cbd0c60ULL,
                              0x78595a6804c9eULL, 0x2b8324804fc1dULL}};

static inline void fe_carry(fe *r) {
    uint64_t c;
    c = r->v[0] >> 51; r->v[0] &= MASK51; r->v[1] += c;
    c = r->v[1] >> 51; r->v[1] &= MASK51; r->v[2] += c;
    c = r->v[2] >> 51; r->v[2] &= MASK51; r->v[3] += c;
    c = r->v[3] >> 51; r->v[3] &= MASK51; r->v[4] += c;
    c = r->v[4] >> 51; r->v[4] &= MASK51; r->v[0] += 19 * c;
}

static inline void fe_add(fe *r, const fe *a, const fe *b) {
    for (int i = 0; i < 5; i++) r->v[i] = a->v[i] + b->v[i];
    fe_carry(r);
}

/* a - b as a + 4p - b: 4p's limbs exceed any weakly reduced limb, so nothing underflows. */
static inline void fe_sub(fe *r, const fe *a, const fe *b) {
    r->v[0] = a->v[0] + (UINT64_C(0x1fffffffffffb4)) - b->v[0];
    for (int i = 1; i < 5; i++) r->v[i] = a->v[i] + UINT64_C(0x1ffffffffffffc) - b->v[i];
    fe_carry(r);
}

static inline void fe_neg(fe *r, const fe *a) { fe_sub(r, &FE_ZERO, a); }

static inline void fe_reduce_wide(fe *r, u128 t0, u128 t1, u128 t2, u128 t3, u128 t4) {
    uint64_t r0, r1, r2, r3, r4;
    r0 = (uint64_t)t0 & MASK51; t1 += (uint64_t)(t0 >> 51);
    r1 = (uint64_t)t1 & MASK51; t2 += (uint64_t)(t1 >> 51);
    r2 = (uint64_t)t2 & MASK51; t3 += (uint64_t)(t2 >> 51);
    r3 = (uint64_t)t3 & MASK51; t4 += (uint64_t)(t3 >> 51);
    r4 = (uint64_t)t4 & MASK51;
    u128 c = (u128)r0 + (t4 >> 51) * 19;
    r0 = (uint64_t)c & MASK51;
    r1 += (uint64_t)(c >> 51);
    r->v[0] = r0; r->v[1] = r1; r->v[2] = r2; r->v[3] = r3; r->v[4] = r4;
}

static void fe_mul(fe *r, const fe *a, const fe *b) {
    const uint64_t a0 = a->v[0], a1 = a->v[1], a2 = a->v[2], a3 = a->v[3], a4 = a->v[4];
    const uint64_t b0 = b->v[0], b1 = b->v[1], b2 = b->v[2], b3 = b->v[3], b4 = b->v[4];
    const uint64_t b1_19 = 19 * b1, b2_19 = 19 * b2, b3_19 = 19 * b3, b4_19 = 19 * b4;
    u128 t0 = (u128)a0 * b0 + (u128)a1 * b4_19 + (u128)a2 * b3_19 + (u128)a3 * b2_19 +
              (u128)a4 * b1_19;
    u128 t1 = (u128)a0 * b1 + (u128)a1 * b0 + (u128)a2 * b4_19 + (u128)a3 * b3_19 +
              (u128)a4 * b2_19;
    u128 t2 = (u128)a0 * b2 + (u128)a1 * b1 + (u128)a2 * b0 + (u128)a3 * b4_19 +
              (u128)a4 * b3_19;
    u128 t3 = (u128)a0 * b3 + (u128)a1 * b2 + (u128)a2 * b1 + (u128)a3 * b0 + (u128)a4 * b4_19;
    u128 t4 = (u128)a0 * b4 + (u128)a1 * b3 + (u128)a2 * b2 + (u128)a3 * b1 + (u128)a4 * b0;
    fe_reduce_wide(r, t0, t1, t2, t3, t4);
}

static void fe_sq(fe *r, const fe *a) {
    const uint64_t a0 = a->v[0], a1 = a->v[1], a2 = a->v[2], a3 = a->v[3], a4 = a->v[4];
    const uint64_t a0_2 = 2 * a0, a1_2 = 2 * a1;
    const uint64_t a1_38 = 38 * a1, a2_38 = 38 * a2, a3_38 = 38 * a3;
    const uint64_t a3_19 = 19 * a3, a4_19 = 19 * a4;
    u128 t0 = (u128)a0 * a0 + (u128)a1_38 * a4 + (u128)a2_38 * a3;
    u128 t1 = (u128)a0_2 * a1 + (u128)a2_38 * a4 + (u128)a3_19 * a3;
    u128 t2 = (u128)a0_2 * a2 + (u128)a1 * a1 + (u128)a3_38 * a4;
    u128 t3 = (u128)a0_2 * a3 + (u128)a1_2 * a2 + (u128)a4_19 * a4;
    u128 t4 = (u128)a0_2 * a4 + (u128)a1_2 * a3 + (u128)a2 * a2;
    fe_reduce_wide(r, t0, t1, t2, t3, t4);
}

static void fe_sqn(fe *r, const fe *a, int n) {
    fe_sq(r, a);
    for (int i = 1; i < n; i++) fe_sq(r, r);
}

static inline uint64_t load64(const uint8_t *s) {
    uint64_t w = 0;
    for (int i = 7; i >= 0; i--) w = (w << 8) | s[i];
    return w;
}

static inline void store64(uint8_t *s, uint64_t w) {
    for (int i = 0; i < 8; i++) s[i] = (uint8_t)(w >> (8 * i));
}

/* The low 255 bits of s (the sign bit of a point encoding is the caller's). */
static void fe_frombytes(fe *r, const uint8_t s[32]) {
    const uint64_t w0 = load64(s), w1 = load64(s + 8), w2 = load64(s + 16), w3 = load64(s + 24);
    r->v[0] = w0 & MASK51;
    r->v[1] = ((w0 >> 51) | (w1 << 13)) & MASK51;
    r->v[2] = ((w1 >> 38) | (w2 << 26)) & MASK51;
    r->v[3] = ((w2 >> 25) | (w3 << 39)) & MASK51;
    r->v[4] = (w3 >> 12) & MASK51;
}

/* The canonical encoding (value < p). */
static void fe_tobytes(uint8_t s[32], const fe *a) {
    fe t = *a;
    fe_carry(&t);
    fe_carry(&t); /* now t < 2^255 + 19 < 2p */
    uint64_t q = (t.v[0] + 19) >> 51;
    q = (t.v[1] + q) >> 51;
    q = (t.v[2] + q) >> 51;
    q = (t.v[3] + q) >> 51;
    q = (t.v[4] + q) >> 51; /* 1 when t >= p */
    t.v[0] += 19 * q;
    uint64_t c;
    c = t.v[0] >> 51; t.v[0] &= MASK51; t.v[1] += c;
    c = t.v[1] >> 51; t.v[1] &= MASK51; t.v[2] += c;
    c = t.v[2] >> 51; t.v[2] &= MASK51; t.v[3] += c;
    c = t.v[3] >> 51; t.v[3] &= MASK51; t.v[4] += c;
    t.v[4] &= MASK51; /* drops 2^255: t - p when q was 1 */
    store64(s, t.v[0] | (t.v[1] << 51));
    store64(s + 8, (t.v[1] >> 13) | (t.v[2] << 38));
    store64(s + 16, (t.v[2] >> 26) | (t.v[3] << 25));
    store64(s + 24, (t.v[3] >> 39) | (t.v[4] << 12));
}

static int fe_iszero(const fe *a) {
    uint8_t s[32];
    fe_tobytes(s, a);
    uint8_t acc = 0;
    for (int i = 0; i < 32; i++) acc |= s[i];
    return acc == 0;
}

static int fe_isnegative(const fe *a) {
    uint8_t s[32];
    fe_tobytes(s, a);
    return s[0] & 1;
}

/* z^((p-5)/8) = z^(2^252 - 3), for the square root in point decompression. */
static void fe_pow22523(fe *r, const fe *z) {
    fe z2, z9, z11, e5, e10, e20, e40, e50, e100, e200, t;
    fe_sq(&z2, z);                 /* 2 */
    fe_sqn(&t, &z2, 2);            /* 8 */
    fe_mul(&z9, &t, z);            /* 9 */
    fe_mul(&z11, &z9, &z2);        /* 11 */
    fe_sq(&t, &z11);               /* 22 */
    fe_mul(&e5, &t, &z9);          /* 31 = 2^5 - 1 */
    fe_sqn(&t, &e5, 5);
    fe_mul(&e10, &t, &e5);         /* 2^10 - 1 */
    fe_sqn(&t, &e10, 10);
    fe_mul(&e20, &t, &e10);        /* 2^20 - 1 */
    fe_sqn(&t, &e20, 20);
    fe_mul(&e40, &t, &e20);        /* 2^40 - 1 */
    fe_sqn(&t, &e40, 10);
    fe_mul(&e50, &t, &e10);        /* 2^50 - 1 */
    fe_sqn(&t, &e50, 50);
    fe_mul(&e100, &t, &e50);       /* 2^100 - 1 */
    fe_sqn(&t, &e100, 100);
    fe_mul(&e200, &t, &e100);      /* 2^200 - 1 */
    fe_sqn(&t, &e200, 50);
    fe_mul(&t, &t, &e50);          /* 2^250 - 1 */
    fe_sqn(&t, &t, 2);             /* 2^252 - 4 */
    fe_mul(r, &t, z);              /* 2^252 - 3 */
}

/* ---- points ----------------------------------------------------------------------------- */

typedef struct { fe X, Y, Z, T; } ge_p3;     /* x = X/Z, y = Y/Z, x*y = T/Z */
typedef struct { fe X, Y, Z; } ge_p2;        /* x = X/Z, y = Y/Z */
typedef struct { fe X, Y, Z, T; } ge_p1p1;   /* x = X/Z, y = Y/T (a sum before conversion) */
typedef struct { fe YplusX, YminusX, Z, T2d; } ge_cached;

static void p1p1_to_p2(ge_p2 *r, const ge_p1p1 *p) {
    fe_mul(&r->X, &p->X, &p->T);
    fe_mul(&r->Y, &p->Y, &p->Z);
    fe_mul(&r->Z, &p->Z, &p->T);
}

static void p1p1_to_p3(ge_p3 *r, const ge_p1p1 *p) {
    fe_mul(&r->X, &p->X, &p->T);
    fe_mul(&r->Y, &p->Y, &p->Z);
    fe_mul(&r->Z, &p->Z, &p->T);
    fe_mul(&r->T, &p->X, &p->Y);
}

static void p3_to_cached(ge_cached *r, const ge_p3 *p) {
    fe_add(&r->YplusX, &p->Y, &p->X);
    fe_sub(&r->YminusX, &p->Y, &p->X);
    r->Z = p->Z;
    fe_mul(&r->T2d, &p->T, &FE_D2);
}

/* 2p: with A = X^2, B = Y^2, C = 2Z^2, E = 2XY: x = E/(B-A), y = (A+B)/(C-B+A). */
static void p2_dbl(ge_p1p1 *r, const ge_p2 *p) {
    fe a, b, c, s;
    fe_sq(&a, &p->X);
    fe_sq(&b, &p->Y);
    fe_sq(&c, &p->Z);
    fe_add(&c, &c, &c);
    fe_add(&s, &p->X, &p->Y);
    fe_sq(&s, &s);
    fe_add(&r->Y, &b, &a);
    fe_sub(&r->Z, &b, &a);
    fe_sub(&r->X, &s, &r->Y);
    fe_sub(&r->T, &c, &r->Z);
}

/* p + q and p - q (HWCD add-2008-hwcd-3 with k = 2d). */
static void ge_add(ge_p1p1 *r, const ge_p3 *p, const ge_cached *q) {
    fe a, b, c, d, ymx, ypx;
    fe_sub(&ymx, &p->Y, &p->X);
    fe_add(&ypx, &p->Y, &p->X);
    fe_mul(&a, &ymx, &q->YminusX);
    fe_mul(&b, &ypx, &q->YplusX);
    fe_mul(&c, &p->T, &q->T2d);
    fe_mul(&d, &p->Z, &q->Z);
    fe_add(&d, &d, &d);
    fe_sub(&r->X, &b, &a);
    fe_add(&r->Y, &b, &a);
    fe_add(&r->Z, &d, &c);
    fe_sub(&r->T, &d, &c);
}

static void ge_sub(ge_p1p1 *r, const ge_p3 *p, const ge_cached *q) {
    fe a, b, c, d, ymx, ypx;
    fe_sub(&ymx, &p->Y, &p->X);
    fe_add(&ypx, &p->Y, &p->X);
    fe_mul(&a, &ymx, &q->YplusX);
    fe_mul(&b, &ypx, &q->YminusX);
    fe_mul(&c, &p->T, &q->T2d);
    fe_mul(&d, &p->Z, &q->Z);
    fe_add(&d, &d, &d);
    fe_sub(&r->X, &b, &a);
    fe_add(&r->Y, &b, &a);
    fe_sub(&r->Z, &d, &c);
    fe_add(&r->T, &d, &c);
}

static void p3_neg(ge_p3 *p) {
    fe_neg(&p->X, &p->X);
    fe_neg(&p->T, &p->T);
}

/* True when p is the neutral element (0, 1). */
static int p2_is_identity(const ge_p2 *p) {
    fe t;
    fe_sub(&t, &p->Y, &p->Z);
    return fe_iszero(&p->X) && fe_iszero(&t);
}

/* [8]p, the cofactor multiple. */
static void p2_times8(ge_p2 *r, const ge_p2 *p) {
    ge_p1p1 t;
    p2_dbl(&t, p);
    p1p1_to_p2(r, &t);
    p2_dbl(&t, r);
    p1p1_to_p2(r, &t);
    p2_dbl(&t, r);
    p1p1_to_p2(r, &t);
}

static int p3_has_small_order(const ge_p3 *p) {
    ge_p2 q = {p->X, p->Y, p->Z}, r;
    p2_times8(&r, &q);
    return p2_is_identity(&r);
}

/*
 * Decode a point; -1 unless s is the canonical encoding of a curve point (y < p, and no
 * "negative zero" x). x is recovered as u v^3 (u v^7)^((p-5)/8) with u = y^2 - 1,
 * v = d y^2 + 1, times sqrt(-1) when that squares to -u instead of u.
 */
static int ge_frombytes(ge_p3 *r, const uint8_t s[32]) {
    fe y, y2, u, v, v3, x, vxx, chk;
    uint8_t back[32];
    const int sign = s[31] >> 7;
    fe_frombytes(&y, s);
    fe_tobytes(back, &y);
    back[31] |= (uint8_t)(sign << 7);
    if (memcmp(back, s, 32) != 0) return -1; /* y >= p */
    fe_sq(&y2, &y);
    fe_sub(&u, &y2, &FE_ONE);
    fe_mul(&v, &y2, &FE_D);
    fe_add(&v, &v, &FE_ONE);
    fe_sq(&v3, &v);
    fe_mul(&v3, &v3, &v);        /* v^3 */
    fe_sq(&x, &v3);
    fe_mul(&x, &x, &v);          /* v^7 */
    fe_mul(&x, &x, &u);          /* u v^7 */
    fe_pow22523(&x, &x);
    fe_mul(&x, &x, &v3);
    fe_mul(&x, &x, &u);          /* u v^3 (u v^7)^((p-5)/8) */
    fe_sq(&vxx, &x);
    fe_mul(&vxx, &vxx, &v);
    fe_sub(&chk, &vxx, &u);
    if (!fe_iszero(&chk)) {
        fe_add(&chk, &vxx, &u);
        if (!fe_iszero(&chk)) return -1; /* not on the curve */
        fe_mul(&x, &x, &FE_SQRTM1);
    }
    if (fe_iszero(&x) && sign) return -1;
    if (fe_isnegative(&x) != sign) fe_neg(&x, &x);
    r->X = x;
    r->Y = y;
    r->Z = FE_ONE;
    fe_mul(&r->T, &x, &y);
    return 0;
}

/* The odd multiples P, 3P, ..., 15P. */
static void build_table(ge_cached table[TABLE], const ge_p3 *p) {
    ge_p1p1 t;
    ge_p3 p2, acc;
    ge_p2 q = {p->X, p->Y, p->Z};
    p3_to_cached(&table[0], p);
    p2_dbl(&t, &q);
    p1p1_to_p3(&p2, &t);
    for (int i = 1; i < TABLE; i++) {
        ge_add(&t, &p2, &table[i - 1]);
        p1p1_to_p3(&acc, &t);
        p3_to_cached(&table[i], &acc);
    }
}

/* ---- scalars ---------------------------------------------------------------------------- */

/* L = 2^252 + 27742317777372353535851937790883648493, the prime order of the base point. */
static const uint64_t L_LIMBS[4] = {0x5812631a5cf5d3edULL, 0x14def9dea2f79cd6ULL, 0, 0x1000000000000000ULL};

static int sc_is_canonical(const uint8_t s[32]) {
    for (int i = 3; i >= 0; i--) {
        const uint64_t w = load64(s + 8 * i);
        if (w < L_LIMBS[i]) return 1;
        if (w > L_LIMBS[i]) return 0;
    }
    return 0; /* s == L */
}

/* acc += x * z (little-endian 64-bit limbs; acc must be wide enough not to overflow). */
static void big_addmul(uint64_t *acc, size_t acc_n, const uint64_t *x, size_t xn,
                       const uint64_t *z, size_t zn) {
    for (size_t j = 0; j < zn; j++) {
        u128 carry = 0;
        size_t i = 0;
        for (; i < xn; i++) {
            u128 t = (u128)x[i] * z[j] + acc[i + j] + carry;
            acc[i + j] = (uint64_t)t;
            carry = t >> 64;
        }
        for (size_t k = i + j; carry && k < acc_n; k++) {
            u128 t = (u128)acc[k] + carry;
            acc[k] = (uint64_t)t;
            carry = t >> 64;
        }
    }
}

/* x mod L, bit by bit (a few microseconds per call; called twice per batch). */
static void big_mod_l(uint8_t out[32], const uint64_t *x, size_t n) {
    uint64_t r[4] = {0, 0, 0, 0};
    for (size_t limb = n; limb-- > 0;) {
        for (int bit = 63; bit >= 0; bit--) {
            /* r = 2r + bit; r < L < 2^253 keeps 2r + 1 within four limbs */
            r[3] = (r[3] << 1) | (r[2] >> 63);
            r[2] = (r[2] << 1) | (r[1] >> 63);
            r[1] = (r[1] << 1) | (r[0] >> 63);
            r[0] = (r[0] << 1) | ((x[limb] >> bit) & 1);
            int ge = 1;
            for (int i = 3; i >= 0; i--) {
                if (r[i] != L_LIMBS[i]) {
                    ge = r[i] > L_LIMBS[i];
                    break;
                }
            }
            if (ge) {
                u128 borrow = 0;
                for (int i = 0; i < 4; i++) {
                    u128 t = (u128)r[i] - L_LIMBS[i] - borrow;
                    r[i] = (uint64_t)t;
                    borrow = (t >> 64) & 1;
                }
            }
        }
    }
    for (int i = 0; i < 4; i++) store64(out + 8 * i, r[i]);
}

/*
 * Width-w signed digits of s (little-endian, < 2^256): every nonzero digit odd and below
 * 2^(w-1) in magnitude, nonzero digits at least w positions apart. naf has NAF_LEN entries.
 */
static void wnaf(int8_t *naf, size_t stride, const uint8_t s[32]) {
    uint64_t k[5] = {load64(s), load64(s + 8), load64(s + 16), load64(s + 24), 0};
    for (size_t i = 0; i < NAF_LEN; i++) naf[i * stride] = 0;
    for (size_t i = 0; i < NAF_LEN; i++) {
        if ((k[0] | k[1] | k[2] | k[3] | k[4]) == 0) break;
        if (k[0] & 1) {
            int d = (int)(k[0] & ((1u << WINDOW) - 1));
            if (d >= (1 << (WINDOW - 1))) d -= 1 << WINDOW;
            naf[i * stride] = (int8_t)d;
            if (d > 0) {
                k[0] -= (uint64_t)d; /* clears the low bits; no borrow */
            } else {
                u128 c = (u128)k[0] + (uint64_t)(-d);
                k[0] = (uint64_t)c;
                for (int j = 1; j < 5 && (c >> 64); j++) {
                    c = (u128)k[j] + 1;
                    k[j] = (uint64_t)c;
                }
            }
        }
        k[0] = (k[0] >> 1) | (k[1] << 63);
        k[1] = (k[1] >> 1) | (k[2] << 63);
        k[2] = (k[2] >> 1) | (k[3] << 63);
        k[3] = (k[3] >> 1) | (k[4] << 63);
        k[4] >>= 1;
    }
}

/* ---- the batch -------------------------------------------------------------------------- */

static ge_p3 BASE; /* decoded at import */

/*
 * 1 when every signature holds, 0 when not (or an input is malformed), -1 when no memory or
 * no randomness (errno set). Runs without the GIL.
 */
static int batch_verify(const uint8_t pk[32], const uint8_t *sigs, const uint8_t *digests,
                        size_t n) {
    const size_t m = n + 2; /* B, -A, then -R_i */
    int result = 0;
    ge_cached *tables = malloc(m * TABLE * sizeof(ge_cached));
    int8_t *naf = malloc(NAF_LEN * m);           /* naf[i * m + j]: digit i of point j */
    uint64_t *z = malloc(2 * n * sizeof(uint64_t));
    if (tables == NULL || naf == NULL || z == NULL) {
        errno = ENOMEM;
        result = -1;
        goto done;
    }
    size_t got = 0;
    while (got < 2 * n * sizeof(uint64_t)) {
        ssize_t r = getrandom((uint8_t *)z + got, 2 * n * sizeof(uint64_t) - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            result = -1;
            goto done;
        }
        got += (size_t)r;
    }

    ge_p3 point;
    if (ge_frombytes(&point, pk) != 0 || p3_has_small_order(&point)) goto done;
    p3_neg(&point);
    build_table(&tables[TABLE], &point);
    build_table(&tables[0], &BASE);

    uint64_t acc_s[8] = {0};   /* sum z_i S_i < 2^(128 + 253 + 16) */
    uint64_t acc_h[12] = {0};  /* sum z_i h_i < 2^(128 + 512 + 16) */
    for (size_t i = 0; i < n; i++) {
        const uint8_t *sig = sigs + 64 * i;
        uint64_t *zi = z + 2 * i;
        if (zi[0] == 0 && zi[1] == 0) zi[0] = 1;
        if (!sc_is_canonical(sig + 32)) goto done;
        if (ge_frombytes(&point, sig) != 0 || p3_has_small_order(&point)) goto done;
        p3_neg(&point);
        build_table(&tables[(i + 2) * TABLE], &point);
        const uint64_t s[4] = {load64(sig + 32), load64(sig + 40), load64(sig + 48),
                               load64(sig + 56)};
        uint64_t h[8];
        for (int k = 0; k < 8; k++) h[k] = load64(digests + 64 * i + 8 * k);
        big_addmul(acc_s, 8, s, 4, zi, 2);
        big_addmul(acc_h, 12, h, 8, zi, 2);
        uint8_t zb[32] = {0};
        store64(zb, zi[0]);
        store64(zb + 8, zi[1]);
        wnaf(naf + i + 2, m, zb);
    }
    uint8_t scalar[32];
    big_mod_l(scalar, acc_s, 8);
    wnaf(naf + 0, m, scalar);
    big_mod_l(scalar, acc_h, 12);
    wnaf(naf + 1, m, scalar);

    /* Straus: one shared doubling chain, each point adding its digit's table entry. */
    int top = NAF_LEN - 1;
    for (; top >= 0; top--) {
        const int8_t *row = naf + (size_t)top * m;
        size_t j = 0;
        while (j < m && row[j] == 0) j++;
        if (j < m) break;
    }
    ge_p2 acc = {FE_ZERO, FE_ONE, FE_ONE};
    ge_p1p1 t;
    ge_p3 u;
    for (int i = top; i >= 0; i--) {
        const int8_t *row = naf + (size_t)i * m;
        p2_dbl(&t, &acc);
        for (size_t j = 0; j < m; j++) {
            const int d = row[j];
            if (d == 0) continue;
            p1p1_to_p3(&u, &t);
            if (d > 0) {
                ge_add(&t, &u, &tables[j * TABLE + d / 2]);
            } else {
                ge_sub(&t, &u, &tables[j * TABLE + (-d) / 2]);
            }
        }
        p1p1_to_p2(&acc, &t);
    }
    ge_p2 eight;
    p2_times8(&eight, &acc);
    result = p2_is_identity(&eight);

done:
    free(tables);
    free(naf);
    free(z);
    return result;
}

/* ---- Python binding --------------------------------------------------------------------- */

PyDoc_STRVAR(verify_doc,
"verify(public_key, sigs, digests, /) -> bool\n\n"
"True when every signature in sigs (n * 64 bytes) is a valid Ed25519 signature by\n"
"public_key (32 bytes) of the message whose SHA-512(R || A || M) is the matching 64 bytes\n"
"of digests. False when any is not, or when an input is malformed.");

static PyObject *py_verify(PyObject *self, PyObject *args) {
    Py_buffer pk, sigs, digests;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*:verify", &pk, &sigs, &digests)) return NULL;
    PyObject *out = NULL;
    uint8_t *copy = NULL;
    if (pk.len != 32) {
        PyErr_SetString(PyExc_ValueError, "public_key must be 32 bytes");
        goto release;
    }
    if (sigs.len % 64 != 0 || sigs.len != digests.len) {
        PyErr_SetString(PyExc_ValueError, "sigs and digests must be n * 64 bytes each");
        goto release;
    }
    const size_t n = (size_t)sigs.len / 64;
    if (n == 0) {
        out = Py_NewRef(Py_True);
        goto release;
    }
    if (n > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "at most %d signatures per call", MAX_BATCH);
        goto release;
    }
    copy = PyMem_RawMalloc(32 + 128 * n);
    if (copy == NULL) {
        PyErr_NoMemory();
        goto release;
    }
    memcpy(copy, pk.buf, 32);
    memcpy(copy + 32, sigs.buf, 64 * n);
    memcpy(copy + 32 + 64 * n, digests.buf, 64 * n);
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = batch_verify(copy, copy + 32, copy + 32 + 64 * n, n);
    Py_END_ALLOW_THREADS
    if (ok < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
    } else {
        out = PyBool_FromLong(ok);
    }
release:
    PyMem_RawFree(copy);
    PyBuffer_Release(&pk);
    PyBuffer_Release(&sigs);
    PyBuffer_Release(&digests);
    return out;
}

static PyMethodDef methods[] = {
    {.ml_name = "verify", .ml_meth = py_verify, .ml_flags = METH_VARARGS, .ml_doc = verify_doc},
    {0},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_ed25519_batch",
    .m_doc = "Ed25519 batch verification of many signatures by one key (see verify).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__ed25519_batch(void) {
    /* The base point: y = 4/5, x even. */
    static const uint8_t base[32] = {
        0x58, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
        0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
    };
    if (ge_frombytes(&BASE, base) != 0) {
        PyErr_SetString(PyExc_ImportError, "ed25519 base point failed to decode");
        return NULL;
    }
    return PyModule_Create(&module);
}
