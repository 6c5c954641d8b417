/*
 * The two loops of offline metering that numpy cannot vectorise: walking a classic pcap's
 * records, and writing ended flows as JSON lines. Everything between (decode, the flow table)
 * stays in numpy; this module only replaces pure-Python loops whose results it reproduces
 * byte for byte (tests/unit/capture/test_fastpath.py compares both on the same inputs).
 *
 * Why: profiled on a 1M-frame capture (docs/PERFORMANCE.md), the Python record walk and the
 * per-flow FlowRecord + dict + json.dumps path were over half of `infraspectre flows --pcap
 * F --json`'s CPU, the part that made it slower than softflowd as a whole process.
 *
 * walk_le(buf, pos, end, limit, out) -> (count, pos)
 *   Little-endian pcap records in buf[pos:end]: writes the offsets of at most `limit` whole
 *   records into `out` (int64, writable, at least min(limit, (end - pos) // 16 + 1) long) and
 *   returns how many and where the walk stopped (the start of the first record not taken,
 *   which may be incomplete). Same contract as PcapReader._walk_le.
 *
 * decode(data, offsets, caplen, ts_ns, vlan, linktype, columns, fast, slow, non_ip)
 *   -> (n_fast, n_slow, n_non_ip)
 *   The common frames of a FrameBatch straight to PacketColumns rows (Decoder.decode's
 *   vectorised path in C): Ethernet, Linux cooked v1/v2 or raw IP; at most one 802.1Q tag;
 *   IPv4 without options or fragmentation, IPv6 without extension headers; the transport
 *   bytes the key needs within the frame. `columns`: the 15 PacketColumns arrays in field
 *   order, n long, filled in rows 0..n_fast-1; `fast` gets those frames' indices. Every
 *   other frame goes to `slow` for the per-frame reference decoder, except non-IP frames
 *   (whose EtherType goes to `non_ip`), exactly as the numpy path sorts them.
 *
 * flows_json(columns) -> bytes
 *   `columns`: a tuple of the 21 FlowBatch columns in FLOW_COLUMNS order, each C-contiguous
 *   with FLOW_COLUMNS' dtype and one length. Returns one line per flow, exactly
 *   json.dumps(record.to_json_dict()) + "\n" for the FlowRecord FlowBatch.records() makes.
 *   An end reason outside EndReason raises ValueError, as EndReason(value) does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdint.h>
#include <string.h>

static PyObject *walk_le(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf, out;
    Py_ssize_t pos, end, limit;
    if (!PyArg_ParseTuple(args, "y*nnnw*:walk_le", &buf, &pos, &end, &limit, &out)) return NULL;
    PyObject *result = NULL;
    if (end > buf.len || pos < 0 || end < 0 || out.len % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "walk_le: bad bounds or output buffer");
        goto done;
    }
    const uint8_t *data = buf.buf;
    int64_t *offs = out.buf;
    Py_ssize_t cap = out.len / 8, n = 0, last = end - 16;
    while (n < limit && pos <= last) {
        if (n == cap) {
            PyErr_SetString(PyExc_ValueError, "walk_le: output buffer too short");
            goto done;
        }
        uint32_t caplen;
        memcpy(&caplen, data + pos + 8, 4); /* little-endian host: see the module's guard */
        offs[n++] = pos;
        pos += 16 + (Py_ssize_t)caplen;
    }
    if (pos > end) pos = offs[--n]; /* the last record is not complete in buf */
    result = Py_BuildValue("nn", n, pos);
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&out);
    return result;
}

/* PacketColumns, in field order. */
enum {
    P_TS, P_VLAN, P_IPVER, P_PROTO, P_A_HI, P_A_LO, P_B_HI, P_B_LO, P_PORT_A, P_PORT_B, P_REV,
    P_NBYTES, P_FLAGS, P_ITYPE, P_ICODE, N_PCOLS
};
static const int PCOL_SIZE[N_PCOLS] = {8, 2, 1, 1, 8, 8, 8, 8, 4, 4, 1, 8, 1, 1, 1};

#define LT_ETHERNET 1
#define LT_RAW 101
#define LT_SLL 113
#define LT_SLL2 276

static inline unsigned be16(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }
static inline uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

/* Transport bytes the key needs, by protocol (decode._L4_NEED). */
static int l4_need(unsigned proto) {
    switch (proto) {
    case 17: case 132: case 33: case 136: return 4;
    case 6: return 14;
    case 1: case 58: return 6;
    default: return 0;
    }
}

enum { FRAME_FAST, FRAME_SLOW, FRAME_NON_IP };

typedef struct {
    uint16_t vlan;
    uint8_t ipver, proto, flags, itype, icode, rev;
    uint32_t port_a, port_b;
    uint64_t a_hi, a_lo, b_hi, b_lo;
    int64_t nbytes;
} row_t;

/* One frame: FRAME_FAST with *r filled, FRAME_NON_IP with *ethertype, or FRAME_SLOW. */
static int decode_one(const uint8_t *f, int64_t len, int linktype, unsigned meta_vlan, row_t *r,
                      unsigned *ethertype) {
    int64_t pos = 0;
    unsigned et, vlan = meta_vlan;
    if (linktype == LT_RAW) {
        if (len < 1) return FRAME_SLOW;
        unsigned v = f[0] >> 4;
        if (v == 4) et = 0x0800;
        else if (v == 6) et = 0x86DD;
        else return FRAME_SLOW;
    } else {
        int64_t type_at, link_len;
        if (linktype == LT_ETHERNET) type_at = 12, link_len = 14;
        else if (linktype == LT_SLL) type_at = 14, link_len = 16;
        else if (linktype == LT_SLL2) type_at = 0, link_len = 20;
        else return FRAME_SLOW;
        if (len < link_len) return FRAME_SLOW;
        et = be16(f + type_at);
        pos = link_len;
        if (et == 0x88A8) return FRAME_SLOW; /* QinQ: the per-frame path walks it */
        if (et == 0x8100) {
            if (len < pos + 4) return FRAME_SLOW;
            vlan = be16(f + pos) & 0x0FFF;
            et = be16(f + pos + 2);
            pos += 4;
            if (et == 0x8100 || et == 0x88A8) return FRAME_SLOW;
        }
        if (et != 0x0800 && et != 0x86DD) {
            *ethertype = et;
            return FRAME_NON_IP;
        }
    }
    const uint8_t *ip = f + pos;
    uint64_t s_hi = 0, s_lo, d_hi = 0, d_lo;
    unsigned proto, ipver;
    int64_t l4;
    if (et == 0x0800) {
        if (len < pos + 20 || ip[0] != 0x45) return FRAME_SLOW; /* options: the slow path */
        unsigned total = be16(ip + 2), frag = be16(ip + 6);
        if ((frag & 0x3FFF) != 0 || total < 20) return FRAME_SLOW; /* MF or an offset */
        ipver = 4, proto = ip[9];
        s_lo = be32(ip + 12), d_lo = be32(ip + 16);
        r->nbytes = total;
        l4 = pos + 20;
    } else {
        if (len < pos + 40 || ip[0] >> 4 != 6) return FRAME_SLOW;
        unsigned plen = be16(ip + 4);
        proto = ip[6];
        switch (proto) { /* decode.IPV6_EXT: walked by the slow path */
        case 0: case 43: case 44: case 51: case 60: case 135: case 139: case 140: case 253:
        case 254: return FRAME_SLOW;
        }
        if (plen == 0) return FRAME_SLOW;
        ipver = 6;
        s_hi = be64(ip + 8), s_lo = be64(ip + 16), d_hi = be64(ip + 24), d_lo = be64(ip + 32);
        r->nbytes = (int64_t)plen + 40;
        l4 = pos + 40;
    }
    if (len < l4 + l4_need(proto)) return FRAME_SLOW;
    const uint8_t *t = f + l4;
    uint32_t ksrc = 0, kdst = 0;
    unsigned flags = 0, itype = 0, icode = 0;
    int icmp = (proto == 1 && ipver == 4) || (proto == 58 && ipver == 6);
    if (proto == 6 || proto == 17 || proto == 132 || proto == 33 || proto == 136) {
        ksrc = be16(t), kdst = be16(t + 2);
        if (proto == 6) flags = t[13];
    } else if (icmp) {
        itype = t[0], icode = t[1];
        int echo = ipver == 4 ? (itype == 8 || itype == 0) : (itype == 128 || itype == 129);
        ksrc = kdst = echo ? be16(t + 4) : (0x10000u | itype << 8 | icode);
    }
    /* Canonical endpoints (decode._canonical): A is the lower (address, key port). */
    int less = s_lo < d_lo || (s_lo == d_lo && ksrc <= kdst);
    if (ipver == 6) less = s_hi < d_hi || (s_hi == d_hi && less);
    r->vlan = (uint16_t)vlan, r->ipver = (uint8_t)ipver, r->proto = (uint8_t)proto;
    r->a_hi = less ? s_hi : d_hi, r->b_hi = less ? d_hi : s_hi;
    r->a_lo = less ? s_lo : d_lo, r->b_lo = less ? d_lo : s_lo;
    r->port_a = less ? ksrc : kdst, r->port_b = less ? kdst : ksrc;
    r->rev = (uint8_t)!less;
    r->flags = (uint8_t)flags, r->itype = (uint8_t)itype, r->icode = (uint8_t)icode;
    return FRAME_FAST;
}

static PyObject *decode(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data, offs, caps, ts, vl = {0}, fast, slow, nonip;
    PyObject *vlan_obj, *tuple;
    int linktype;
    if (!PyArg_ParseTuple(args, "y*y*y*y*OiO!w*w*w*:decode", &data, &offs, &caps, &ts,
                          &vlan_obj, &linktype, &PyTuple_Type, &tuple, &fast, &slow, &nonip))
        return NULL;
    Py_buffer c[N_PCOLS];
    int got = 0, have_vlan = 0;
    PyObject *result = NULL;
    Py_ssize_t n = offs.len / 8;
    if (vlan_obj != Py_None) {
        if (PyObject_GetBuffer(vlan_obj, &vl, PyBUF_C_CONTIGUOUS) < 0) goto done;
        have_vlan = 1;
    }
    if (caps.len / 8 != n || ts.len / 8 != n || (have_vlan && vl.len / 2 != n) ||
        fast.len / 8 < n || slow.len / 8 < n || nonip.len / 4 < n ||
        PyTuple_GET_SIZE(tuple) != N_PCOLS) {
        PyErr_SetString(PyExc_ValueError, "decode: inputs and outputs differ in length");
        goto done;
    }
    for (; got < N_PCOLS; got++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(tuple, got), &c[got],
                               PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
            goto done;
        if (c[got].itemsize != PCOL_SIZE[got] || c[got].len / PCOL_SIZE[got] < n) {
            PyErr_Format(PyExc_ValueError, "decode: column %d has the wrong type or length", got);
            got++;
            goto done;
        }
    }
    {
        const uint8_t *d = data.buf;
        const int64_t *off = offs.buf, *cap = caps.buf, *tsv = ts.buf;
        const uint16_t *mv = have_vlan ? vl.buf : NULL;
        Py_ssize_t *fr = fast.buf, *sr = slow.buf;
        int32_t *nt = nonip.buf;
        Py_ssize_t nf = 0, ns = 0, nn = 0;
#define OUT(i, t) ((t *)c[i].buf)
        for (Py_ssize_t i = 0; i < n; i++) {
            row_t r;
            unsigned et = 0;
            int kind = FRAME_SLOW;
            if (off[i] >= 0 && cap[i] >= 0 && off[i] <= data.len && cap[i] <= data.len - off[i])
                kind = decode_one(d + off[i], cap[i], linktype, mv ? mv[i] : 0, &r, &et);
            if (kind == FRAME_SLOW) {
                sr[ns++] = i;
                continue;
            }
            if (kind == FRAME_NON_IP) {
                nt[nn++] = (int32_t)et;
                continue;
            }
            OUT(P_TS, int64_t)[nf] = tsv[i];
            OUT(P_VLAN, uint16_t)[nf] = r.vlan;
            OUT(P_IPVER, uint8_t)[nf] = r.ipver;
            OUT(P_PROTO, uint8_t)[nf] = r.proto;
            OUT(P_A_HI, uint64_t)[nf] = r.a_hi;
            OUT(P_A_LO, uint64_t)[nf] = r.a_lo;
            OUT(P_B_HI, uint64_t)[nf] = r.b_hi;
            OUT(P_B_LO, uint64_t)[nf] = r.b_lo;
            OUT(P_PORT_A, uint32_t)[nf] = r.port_a;
            OUT(P_PORT_B, uint32_t)[nf] = r.port_b;
            OUT(P_REV, uint8_t)[nf] = r.rev;
            OUT(P_NBYTES, int64_t)[nf] = r.nbytes;
            OUT(P_FLAGS, uint8_t)[nf] = r.flags;
            OUT(P_ITYPE, uint8_t)[nf] = r.itype;
            OUT(P_ICODE, uint8_t)[nf] = r.icode;
            fr[nf++] = i;
        }
#undef OUT
        result = Py_BuildValue("nnn", nf, ns, nn);
    }
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&c[i]);
    if (have_vlan) PyBuffer_Release(&vl);
    PyBuffer_Release(&data);
    PyBuffer_Release(&offs);
    PyBuffer_Release(&caps);
    PyBuffer_Release(&ts);
    PyBuffer_Release(&fast);
    PyBuffer_Release(&slow);
    PyBuffer_Release(&nonip);
    return result;
}

/* FLOW_COLUMNS, in order. */
enum {
    C_VLAN, C_IPVER, C_PROTO, C_A_HI, C_A_LO, C_B_HI, C_B_LO, C_PORT_A, C_PORT_B, C_INIT_B,
    C_ICMP_TYPE, C_ICMP_CODE, C_PKTS_AB, C_PKTS_BA, C_BYTES_AB, C_BYTES_BA, C_FLAGS_AB,
    C_FLAGS_BA, C_START_NS, C_END_NS, C_REASON, N_COLS
};
static const int COL_SIZE[N_COLS] = {2, 1, 1, 8, 8, 8, 8, 4, 4, 1, 1, 1, 8, 8, 8, 8, 1, 1, 8, 8, 1};

static const char *const REASONS[] = {NULL,       "IDLE_TIMEOUT", "ACTIVE_TIMEOUT", "TCP_FIN",
                                      "TCP_RST",  "EVICTED",      "SHUTDOWN"};

#define ICMP_KEY_BIT 0x10000u

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* Decimal digits without printf: snprintf of the 25 fields was 3.5 us per flow, a third of
 * `flows --pcap --json`'s CPU at 100k flows; these are what json.dumps writes for an int. */
static const char DIGITS2[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static char *put_u64(char *w, uint64_t v) {
    char tmp[20];
    char *p = tmp + sizeof tmp;
    while (v >= 100) {
        unsigned d = (unsigned)(v % 100) * 2;
        v /= 100;
        *--p = DIGITS2[d + 1];
        *--p = DIGITS2[d];
    }
    if (v >= 10) {
        *--p = DIGITS2[v * 2 + 1];
        *--p = DIGITS2[v * 2];
    } else {
        *--p = (char)('0' + v);
    }
    size_t n = (size_t)(tmp + sizeof tmp - p);
    memcpy(w, p, n);
    return w + n;
}

static char *put_i64(char *w, int64_t v) {
    if (v >= 0) return put_u64(w, (uint64_t)v);
    *w++ = '-';
    return put_u64(w, (uint64_t)0 - (uint64_t)v);
}

/* A string literal, without its NUL. */
#define PUT(w, lit) (memcpy((w), (lit), sizeof(lit) - 1), (w) + sizeof(lit) - 1)

static char *put_ip(char *w, int v6, uint64_t hi, uint64_t lo) {
    if (v6) {
        uint8_t b[16];
        for (int i = 0; i < 8; i++) {
            b[i] = (uint8_t)(hi >> (56 - 8 * i));
            b[8 + i] = (uint8_t)(lo >> (56 - 8 * i));
        }
        char text[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, b, text, sizeof text);
        size_t n = strlen(text);
        memcpy(w, text, n);
        return w + n;
    }
    /* inet_ntop's dotted quad (the address is the low 32 bits). */
    for (int shift = 24; shift >= 0; shift -= 8) {
        w = put_u64(w, (lo >> shift) & 0xFF);
        if (shift) *w++ = '.';
    }
    return w;
}

static char *put_proto(char *w, unsigned p) {
    switch (p) {
    case 6: return PUT(w, "TCP");
    case 17: return PUT(w, "UDP");
    case 1: return PUT(w, "ICMP");
    case 58: return PUT(w, "ICMPV6");
    case 132: return PUT(w, "SCTP");
    case 47: return PUT(w, "GRE");
    default: return put_u64(w, p);
    }
}

#define LINE_MAX_BYTES 1024

static PyObject *flows_json(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *tuple;
    if (!PyArg_ParseTuple(args, "O!:flows_json", &PyTuple_Type, &tuple)) return NULL;
    if (PyTuple_GET_SIZE(tuple) != N_COLS) {
        PyErr_Format(PyExc_ValueError, "flows_json: %d columns expected", N_COLS);
        return NULL;
    }
    Py_buffer b[N_COLS];
    int got = 0;
    PyObject *result = NULL;
    char *text = NULL;
    Py_ssize_t n = -1;
    for (; got < N_COLS; got++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(tuple, got), &b[got], PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        if (b[got].itemsize != COL_SIZE[got] || (n >= 0 && b[got].len / COL_SIZE[got] != n)) {
            PyErr_Format(PyExc_ValueError, "flows_json: column %d has the wrong type or length",
                         got);
            got++;
            goto done;
        }
        n = b[got].len / COL_SIZE[got];
    }
#define COL(i, t) ((const t *)b[i].buf)
    const uint16_t *vlan = COL(C_VLAN, uint16_t);
    const uint8_t *ipver = COL(C_IPVER, uint8_t), *proto = COL(C_PROTO, uint8_t);
    const uint64_t *a_hi = COL(C_A_HI, uint64_t), *a_lo = COL(C_A_LO, uint64_t);
    const uint64_t *b_hi = COL(C_B_HI, uint64_t), *b_lo = COL(C_B_LO, uint64_t);
    const uint32_t *port_a = COL(C_PORT_A, uint32_t), *port_b = COL(C_PORT_B, uint32_t);
    const uint8_t *init_b = COL(C_INIT_B, uint8_t);
    const uint8_t *itype = COL(C_ICMP_TYPE, uint8_t), *icode = COL(C_ICMP_CODE, uint8_t);
    const int64_t *pkts_ab = COL(C_PKTS_AB, int64_t), *pkts_ba = COL(C_PKTS_BA, int64_t);
    const int64_t *bytes_ab = COL(C_BYTES_AB, int64_t), *bytes_ba = COL(C_BYTES_BA, int64_t);
    const uint8_t *flags_ab = COL(C_FLAGS_AB, uint8_t), *flags_ba = COL(C_FLAGS_BA, uint8_t);
    const int64_t *start_ns = COL(C_START_NS, int64_t), *end_ns = COL(C_END_NS, int64_t);
    const uint8_t *reason = COL(C_REASON, uint8_t);
#undef COL
    for (Py_ssize_t i = 0; i < n; i++) {
        if (reason[i] < 1 || reason[i] > 6) {
            PyErr_Format(PyExc_ValueError, "%u is not a valid EndReason", reason[i]);
            goto done;
        }
    }
    if (n > PY_SSIZE_T_MAX / LINE_MAX_BYTES) {
        PyErr_NoMemory();
        goto done;
    }
    text = PyMem_RawMalloc((size_t)(n > 0 ? n : 1) * LINE_MAX_BYTES);
    if (text == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    char *w = text;
    for (Py_ssize_t i = 0; i < n; i++) {
        int ib = init_b[i] != 0, v6 = ipver[i] == 6;
        uint32_t sp = ib ? port_b[i] : port_a[i], dp = ib ? port_a[i] : port_b[i], iid = 0;
        if ((proto[i] == 1 && !v6) || (proto[i] == 58 && v6)) {
            iid = sp < ICMP_KEY_BIT ? sp : 0;
            sp = 0;
            dp = (uint32_t)itype[i] << 8 | icode[i];
        }
        int64_t p_tx = ib ? pkts_ba[i] : pkts_ab[i], p_rx = ib ? pkts_ab[i] : pkts_ba[i];
        int64_t b_tx = ib ? bytes_ba[i] : bytes_ab[i], b_rx = ib ? bytes_ab[i] : bytes_ba[i];
        unsigned f_tx = ib ? flags_ba[i] : flags_ab[i], f_rx = ib ? flags_ab[i] : flags_ba[i];
        int64_t t0 = floor_div(start_ns[i], 1000000), t1 = floor_div(end_ns[i], 1000000);
        w = PUT(w, "{\"src_ip\": \"");
        w = put_ip(w, v6, ib ? b_hi[i] : a_hi[i], ib ? b_lo[i] : a_lo[i]);
        w = PUT(w, "\", \"dst_ip\": \"");
        w = put_ip(w, v6, ib ? a_hi[i] : b_hi[i], ib ? a_lo[i] : b_lo[i]);
        w = PUT(w, "\", \"src_port\": ");
        w = put_u64(w, sp);
        w = PUT(w, ", \"dst_port\": ");
        w = put_u64(w, dp);
        w = PUT(w, ", \"proto\": \"");
        w = put_proto(w, proto[i]);
        w = PUT(w, "\", \"bytes_tx\": ");
        w = put_i64(w, b_tx);
        w = PUT(w, ", \"bytes_rx\": ");
        w = put_i64(w, b_rx);
        w = PUT(w, ", \"packets_tx\": ");
        w = put_i64(w, p_tx);
        w = PUT(w, ", \"packets_rx\": ");
        w = put_i64(w, p_rx);
        w = PUT(w, ", \"duration_ms\": ");
        w = put_i64(w, t1 - t0);
        w = PUT(w, ", \"start_time\": ");
        w = put_i64(w, t0);
        w = PUT(w, ", \"end_time\": ");
        w = put_i64(w, t1);
        w = PUT(w, ", \"flags\": ");
        w = put_u64(w, f_tx | f_rx);
        w = PUT(w, ", \"flags_tx\": ");
        w = put_u64(w, f_tx);
        w = PUT(w, ", \"flags_rx\": ");
        w = put_u64(w, f_rx);
        w = PUT(w, ", \"vlan\": ");
        w = put_u64(w, vlan[i]);
        w = PUT(w, ", \"ip_version\": ");
        w = put_u64(w, ipver[i]);
        w = PUT(w, ", \"ip_proto\": ");
        w = put_u64(w, proto[i]);
        w = PUT(w, ", \"icmp_type\": ");
        w = put_u64(w, itype[i]);
        w = PUT(w, ", \"icmp_code\": ");
        w = put_u64(w, icode[i]);
        w = PUT(w, ", \"icmp_id\": ");
        w = put_u64(w, iid);
        w = PUT(w, ", \"end_reason\": \"");
        size_t rn = strlen(REASONS[reason[i]]);
        memcpy(w, REASONS[reason[i]], rn);
        w += rn;
        w = PUT(w, "\", \"interface\": \"\", \"start_ns\": ");
        w = put_i64(w, start_ns[i]);
        w = PUT(w, ", \"end_ns\": ");
        w = put_i64(w, end_ns[i]);
        w = PUT(w, "}\n");
    }
    result = PyBytes_FromStringAndSize(text, w - text);
done:
    PyMem_RawFree(text);
    for (int i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"walk_le", walk_le, METH_VARARGS, "Offsets of whole little-endian pcap records."},
    {"decode", decode, METH_VARARGS, "Common frames of a FrameBatch to PacketColumns rows."},
    {"flows_json", flows_json, METH_VARARGS, "FlowBatch columns as JSON lines (bytes)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "Offline metering's record walk and JSON writer.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "walk_le reads caplen in host order: little-endian hosts only (x86_64, arm64)"
#endif
    return PyModule_Create(&module);
}
