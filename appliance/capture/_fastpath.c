/*
 * The loops of offline metering that numpy cannot vectorise: walking a classic pcap's records,
 * decoding the common frames, and writing ended flows as JSON lines; and meter_json, the whole
 * of `flows --pcap F --json` for the files it reads (below), which never imports numpy: under
 * emulation (the ARM board) `import numpy` alone cost more than softflowd's whole run. Each
 * reproduces the numpy path byte for byte (tests/unit/capture/test_fastpath.py and
 * test_native_meter.py compare both on the same inputs).
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
 *
 * meter_json(path, fd, idle_ns, active_ns, linger_ns, max_flows) -> dict | None
 *   `infraspectre flows --pcap path --json`'s lines written to fd, in the canonical end order,
 *   and the summary's counts as a dict (flows, frames, packets, bytes, evicted, peak_flows,
 *   cut_bytes, non_ip {ethertype: frames}). None, before anything is written, for a file it
 *   does not read exactly as the numpy path: not a regular little-endian classic pcap of a
 *   supported link type (pcapng, big-endian, stdin or a pipe), or a record over the snap length
 *   (PcapReader then says whether it is corrupt or cut).
 *
 * native_reads(path) -> bool
 *   Whether meter_json reads the file (rather than returning None): what `bench flows`
 *   reports as native_meter.
 *
 * Meter(idle_ns, active_ns, linger_ns, max_flows)
 *   meter_json's decoder and flow table as an object, for the live agent (source.CompiledMeter):
 *   add(data, offsets, caplen, ts_ns, vlan, linktype) meters a FrameBatch, expire(now_ns),
 *   flush() and rebase(before_ns, delta_ns) as FlowMeter's; each returns how many ended flows
 *   it holds, and take(columns) copies them into FlowBatch columns. stats() -> dict of the
 *   MeterStats and DecodeStats counters. One implementation of the table serves both paths
 *   (meter_new, meter_frame, add_packet, expire, flush_all).
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

/* The key of a packet in r (decode._canonical): A is the lower (address, key port). */
static void canonical(row_t *r, unsigned vlan, unsigned ipver, unsigned proto, uint64_t s_hi,
                      uint64_t s_lo, uint64_t d_hi, uint64_t d_lo, uint32_t ksrc, uint32_t kdst) {
    int less = s_lo < d_lo || (s_lo == d_lo && ksrc <= kdst);
    if (ipver == 6) less = s_hi < d_hi || (s_hi == d_hi && less);
    r->vlan = (uint16_t)vlan, r->ipver = (uint8_t)ipver, r->proto = (uint8_t)proto;
    r->a_hi = less ? s_hi : d_hi, r->b_hi = less ? d_hi : s_hi;
    r->a_lo = less ? s_lo : d_lo, r->b_lo = less ? d_lo : s_lo;
    r->port_a = less ? ksrc : kdst, r->port_b = less ? kdst : ksrc;
    r->rev = (uint8_t)!less;
}

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
    canonical(r, vlan, ipver, proto, s_hi, s_lo, d_hi, d_lo, ksrc, kdst);
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

/* One flow: its key, what it counted, and (in the native meter) its table state. */
typedef struct {
    uint64_t a_hi, a_lo, b_hi, b_lo;
    uint32_t port_a, port_b;
    uint16_t vlan;
    uint8_t ipver, proto, init_b, itype, icode, flags_ab, flags_ba, reason;
    int64_t pkts_ab, pkts_ba, bytes_ab, bytes_ba, start_ns, end_ns;
    int64_t fin_ab, fin_ba, rst; /* first FIN each way, first RST; NONE_NS until seen */
    int32_t prev, next;          /* the native meter's LRU list (slot numbers, -1: none) */
} flow_t;

/* One flow as a JSON line: json.dumps(FlowRecord.to_json_dict()) + "\n", at most
 * LINE_MAX_BYTES. The reason must be a valid EndReason (callers check). */
static char *put_flow(char *w, const flow_t *f) {
    int ib = f->init_b != 0, v6 = f->ipver == 6;
    uint32_t sp = ib ? f->port_b : f->port_a, dp = ib ? f->port_a : f->port_b, iid = 0;
    if ((f->proto == 1 && !v6) || (f->proto == 58 && v6)) {
        iid = sp < ICMP_KEY_BIT ? sp : 0;
        sp = 0;
        dp = (uint32_t)f->itype << 8 | f->icode;
    }
    int64_t p_tx = ib ? f->pkts_ba : f->pkts_ab, p_rx = ib ? f->pkts_ab : f->pkts_ba;
    int64_t b_tx = ib ? f->bytes_ba : f->bytes_ab, b_rx = ib ? f->bytes_ab : f->bytes_ba;
    unsigned f_tx = ib ? f->flags_ba : f->flags_ab, f_rx = ib ? f->flags_ab : f->flags_ba;
    int64_t t0 = floor_div(f->start_ns, 1000000), t1 = floor_div(f->end_ns, 1000000);
    w = PUT(w, "{\"src_ip\": \"");
    w = put_ip(w, v6, ib ? f->b_hi : f->a_hi, ib ? f->b_lo : f->a_lo);
    w = PUT(w, "\", \"dst_ip\": \"");
    w = put_ip(w, v6, ib ? f->a_hi : f->b_hi, ib ? f->a_lo : f->b_lo);
    w = PUT(w, "\", \"src_port\": ");
    w = put_u64(w, sp);
    w = PUT(w, ", \"dst_port\": ");
    w = put_u64(w, dp);
    w = PUT(w, ", \"proto\": \"");
    w = put_proto(w, f->proto);
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
    w = put_u64(w, f->vlan);
    w = PUT(w, ", \"ip_version\": ");
    w = put_u64(w, f->ipver);
    w = PUT(w, ", \"ip_proto\": ");
    w = put_u64(w, f->proto);
    w = PUT(w, ", \"icmp_type\": ");
    w = put_u64(w, f->itype);
    w = PUT(w, ", \"icmp_code\": ");
    w = put_u64(w, f->icode);
    w = PUT(w, ", \"icmp_id\": ");
    w = put_u64(w, iid);
    w = PUT(w, ", \"end_reason\": \"");
    size_t rn = strlen(REASONS[f->reason]);
    memcpy(w, REASONS[f->reason], rn);
    w += rn;
    w = PUT(w, "\", \"interface\": \"\", \"start_ns\": ");
    w = put_i64(w, f->start_ns);
    w = PUT(w, ", \"end_ns\": ");
    w = put_i64(w, f->end_ns);
    return PUT(w, "}\n");
}

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
        flow_t f = {
            .a_hi = a_hi[i], .a_lo = a_lo[i], .b_hi = b_hi[i], .b_lo = b_lo[i],
            .port_a = port_a[i], .port_b = port_b[i], .vlan = vlan[i], .ipver = ipver[i],
            .proto = proto[i], .init_b = init_b[i], .itype = itype[i], .icode = icode[i],
            .flags_ab = flags_ab[i], .flags_ba = flags_ba[i], .reason = reason[i],
            .pkts_ab = pkts_ab[i], .pkts_ba = pkts_ba[i], .bytes_ab = bytes_ab[i],
            .bytes_ba = bytes_ba[i], .start_ns = start_ns[i], .end_ns = end_ns[i],
        };
        w = put_flow(w, &f);
    }
    result = PyBytes_FromStringAndSize(text, w - text);
done:
    PyMem_RawFree(text);
    for (int i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    return result;
}

/* ---- meter_json: `flows --pcap F --json` without numpy --------------------------------------
 *
 * The numpy pipeline (PcapReader -> Decoder -> FlowMeter -> end order -> flows_json) in one
 * pass, for a little-endian classic pcap: decode_one for the common frames, decode_slow (the
 * per-frame rules of Decoder._frame_row, fragment memory included) for the rest. Any other
 * file returns None before a byte is written, and the caller takes the numpy path, which
 * reads (or refuses) every file. The flow table applies FlowMeter._step's
 * rules packet by packet (meter.py's docstring); docs/FLOWS.md "Two implementations" says where
 * the two may differ (only when the table overflows).
 */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define NONE_NS INT64_MAX
#define R_IDLE 1
#define R_ACTIVE 2
#define R_FIN 3
#define R_RST 4
#define R_EVICTED 5
#define R_SHUTDOWN 6
#define TCP_FIN_BIT 0x01
#define TCP_SYN_BIT 0x02
#define TCP_RST_BIT 0x04
#define TCP_ACK_BIT 0x10
#define MAX_CAPLEN 262144
#define EXPIRE_EVERY_NS 5000000000LL
#define METER_BATCH 16384 /* offline.METER_BATCH: the numpy path expires after such batches */
#define OUT_BYTES (1 << 20)

/* -- the per-frame rules (Decoder._frame_row), for the frames decode_one leaves ----------- */

#define FRAME_MALFORMED 3
#define FRAG_MEMORY_NS 30000000000LL /* decode.FRAG_MEMORY_S */
#define FRAG_MEMORY_MAX 4096         /* decode.FRAG_MEMORY_MAX */
#define FRAG_BUCKETS 8192

/* The fragment rule's memory: (ipver, src, dst, proto, ident) -> the first fragment's key
 * ports and time, the FRAG_MEMORY_MAX most recently stored (an OrderedDict in decode.py:
 * storing moves a key to the end, looking it up does not). */
typedef struct {
    uint8_t src[16], dst[16];
    int64_t ident, ts;
    uint32_t ksrc, kdst;
    uint8_t ipver, proto;
    int16_t chain, older, newer; /* bucket chain; storage order (-1: none) */
} frag_t;

typedef struct {
    frag_t e[FRAG_MEMORY_MAX + 1];
    int16_t bucket[FRAG_BUCKETS];
    int16_t oldest, newest, n;
} frags_t;

static unsigned frag_bucket(unsigned ipver, const uint8_t *src, const uint8_t *dst,
                            unsigned proto, int64_t ident) {
    uint64_t h = (uint64_t)ident * 0x9E3779B97F4A7C15ULL ^ (proto << 8 | ipver);
    for (int i = 0; i < 16; i++) h = (h ^ src[i] ^ (uint64_t)dst[i] << 8) * 0xFF51AFD7ED558CCDULL;
    return (unsigned)(h >> 40) & (FRAG_BUCKETS - 1);
}

static int frag_find(const frags_t *fr, unsigned b, unsigned ipver, const uint8_t *src,
                     const uint8_t *dst, unsigned proto, int64_t ident) {
    for (int i = fr->bucket[b]; i >= 0; i = fr->e[i].chain) {
        const frag_t *e = &fr->e[i];
        if (e->ident == ident && e->proto == proto && e->ipver == ipver &&
            !memcmp(e->src, src, 16) && !memcmp(e->dst, dst, 16))
            return i;
    }
    return -1;
}

static void frag_chain_unlink(frags_t *fr, int i) {
    const frag_t *e = &fr->e[i];
    int16_t *pp = &fr->bucket[frag_bucket(e->ipver, e->src, e->dst, e->proto, e->ident)];
    while (*pp != i) pp = &fr->e[*pp].chain;
    *pp = e->chain;
}

static void frag_unlink_order(frags_t *fr, int i) {
    frag_t *e = &fr->e[i];
    if (e->older >= 0) fr->e[e->older].newer = e->newer;
    else fr->oldest = e->newer;
    if (e->newer >= 0) fr->e[e->newer].older = e->older;
    else fr->newest = e->older;
}

static void frag_append_order(frags_t *fr, int i) {
    fr->e[i].older = fr->newest, fr->e[i].newer = -1;
    if (fr->newest >= 0) fr->e[fr->newest].newer = (int16_t)i;
    else fr->oldest = (int16_t)i;
    fr->newest = (int16_t)i;
}

static void frag_store(frags_t *fr, unsigned ipver, const uint8_t *src, const uint8_t *dst,
                       unsigned proto, int64_t ident, uint32_t ksrc, uint32_t kdst, int64_t ts) {
    unsigned b = frag_bucket(ipver, src, dst, proto, ident);
    int i = frag_find(fr, b, ipver, src, dst, proto, ident);
    if (i >= 0) {
        frag_unlink_order(fr, i);
    } else {
        i = fr->n++; /* never past FRAG_MEMORY_MAX + 1: the oldest is evicted below */
        frag_t *e = &fr->e[i];
        memcpy(e->src, src, 16), memcpy(e->dst, dst, 16);
        e->ident = ident, e->proto = (uint8_t)proto, e->ipver = (uint8_t)ipver;
        e->chain = fr->bucket[b];
        fr->bucket[b] = (int16_t)i;
    }
    fr->e[i].ksrc = ksrc, fr->e[i].kdst = kdst, fr->e[i].ts = ts;
    frag_append_order(fr, i);
    if (fr->n <= FRAG_MEMORY_MAX) return;
    /* Evict the oldest, then move the last entry into its place (entries stay dense). */
    int old = fr->oldest, last = fr->n - 1;
    frag_chain_unlink(fr, old);
    frag_unlink_order(fr, old);
    if (last != old) {
        frag_chain_unlink(fr, last);
        frag_t *e = &fr->e[old];
        *e = fr->e[last];
        unsigned lb = frag_bucket(e->ipver, e->src, e->dst, e->proto, e->ident);
        e->chain = fr->bucket[lb];
        fr->bucket[lb] = (int16_t)old;
        if (e->older >= 0) fr->e[e->older].newer = (int16_t)old;
        else fr->oldest = (int16_t)old;
        if (e->newer >= 0) fr->e[e->newer].older = (int16_t)old;
        else fr->newest = (int16_t)old;
    }
    fr->n--;
}

typedef struct {
    frags_t frags;
    int64_t fragments, malformed;
} slow_t;

/* decode.Decoder._transport. */
static int slow_transport(slow_t *st, const uint8_t *f, int64_t len, int64_t p, unsigned vlan,
                          unsigned ipver, unsigned proto, const uint8_t *src, const uint8_t *dst,
                          int64_t nbytes, int64_t ts, unsigned frag_off, int more, int64_t ident,
                          row_t *r) {
    uint8_t s16[16] = {0}, d16[16] = {0};
    unsigned alen = ipver == 4 ? 4 : 16;
    memcpy(s16, src, alen), memcpy(d16, dst, alen);
    uint64_t s_hi = 0, s_lo, d_hi = 0, d_lo;
    if (ipver == 4) s_lo = be32(src), d_lo = be32(dst);
    else s_hi = be64(src), s_lo = be64(src + 8), d_hi = be64(dst), d_lo = be64(dst + 8);
    uint32_t ksrc = 0, kdst = 0;
    unsigned flags = 0, itype = 0, icode = 0;
    if (frag_off != 0 || more) st->fragments++;
    if (frag_off) {
        unsigned b = frag_bucket(ipver, s16, d16, proto, ident);
        int i = frag_find(&st->frags, b, ipver, s16, d16, proto, ident);
        if (i >= 0 && ts - st->frags.e[i].ts <= FRAG_MEMORY_NS)
            ksrc = st->frags.e[i].ksrc, kdst = st->frags.e[i].kdst;
    } else {
        int icmp = (proto == 1 && ipver == 4) || (proto == 58 && ipver == 6);
        if (len >= p + l4_need(proto)) {
            const uint8_t *t = f + p;
            if (proto == 6 || proto == 17 || proto == 132 || proto == 33 || proto == 136) {
                ksrc = be16(t), kdst = be16(t + 2);
                if (proto == 6) flags = t[13];
            } else if (icmp) {
                itype = t[0], icode = t[1];
                int echo = ipver == 4 ? (itype == 8 || itype == 0) : (itype == 128 || itype == 129);
                ksrc = kdst = echo ? be16(t + 4) : (ICMP_KEY_BIT | itype << 8 | icode);
            }
        }
        if (more) frag_store(&st->frags, ipver, s16, d16, proto, ident, ksrc, kdst, ts);
    }
    canonical(r, vlan, ipver, proto, s_hi, s_lo, d_hi, d_lo, ksrc, kdst);
    r->nbytes = nbytes;
    r->flags = (uint8_t)flags, r->itype = (uint8_t)itype, r->icode = (uint8_t)icode;
    return FRAME_FAST;
}

static int is_ipv6_ext(unsigned nh) {
    switch (nh) { /* decode.IPV6_EXT */
    case 0: case 43: case 44: case 51: case 60: case 135: case 139: case 140: case 253:
    case 254: return 1;
    default: return 0;
    }
}

/* decode.Decoder._frame_row: FRAME_FAST (a packet in *r), FRAME_NON_IP (*ethertype) or
 * FRAME_MALFORMED. */
static int decode_slow(slow_t *st, const uint8_t *f, int64_t len, int linktype,
                       unsigned meta_vlan, int64_t ts, row_t *r, unsigned *ethertype) {
    unsigned vlan = meta_vlan, et;
    int64_t pos = 0;
    if (linktype == LT_RAW) {
        if (len < 1) return FRAME_MALFORMED;
        unsigned v = f[0] >> 4;
        if (v == 4) et = 0x0800;
        else if (v == 6) et = 0x86DD;
        else return FRAME_MALFORMED;
    } else {
        int64_t type_at = 12, link_len = 14;
        if (linktype == LT_SLL) type_at = 14, link_len = 16;
        else if (linktype == LT_SLL2) type_at = 0, link_len = 20;
        if (len < link_len) return FRAME_MALFORMED;
        et = be16(f + type_at);
        pos = link_len;
        while (et == 0x8100 || et == 0x88A8) {
            if (len < pos + 4) return FRAME_MALFORMED;
            vlan = be16(f + pos) & 0x0FFF; /* the innermost tag names the VLAN */
            et = be16(f + pos + 2);
            pos += 4;
        }
    }
    if (et == 0x0800) {
        const uint8_t *ip = f + pos;
        if (len < pos + 20 || ip[0] >> 4 != 4) return FRAME_MALFORMED;
        unsigned ihl = (ip[0] & 0x0F) * 4u, total = be16(ip + 2), fragf = be16(ip + 6);
        if (ihl < 20 || total < ihl) return FRAME_MALFORMED;
        return slow_transport(st, f, len, pos + ihl, vlan, 4, ip[9], ip + 12, ip + 16, total, ts,
                              fragf & 0x1FFF, (fragf & 0x2000) != 0, be16(ip + 4), r);
    }
    if (et == 0x86DD) {
        const uint8_t *ip = f + pos;
        if (len < pos + 40 || ip[0] >> 4 != 6) return FRAME_MALFORMED;
        unsigned plen = be16(ip + 4);
        if (plen == 0) return FRAME_MALFORMED; /* jumbogram: out of scope */
        unsigned nh = ip[6], frag_off = 0;
        int more = 0;
        int64_t p = pos + 40, ident = -1;
        while (is_ipv6_ext(nh)) {
            if (len < p + 8) return FRAME_MALFORMED;
            if (nh == 44) {
                unsigned fo = be16(f + p + 2);
                ident = be32(f + p + 4);
                frag_off = fo >> 3, more = fo & 1;
                nh = f[p], p += 8;
                if (frag_off) break; /* no transport header in a non-first fragment */
            } else if (nh == 51) {
                unsigned l = f[p + 1];
                nh = f[p], p += (l + 2) * 4;
            } else {
                unsigned l = f[p + 1];
                nh = f[p], p += (l + 1) * 8;
            }
        }
        return slow_transport(st, f, len, p, vlan, 6, nh, ip + 8, ip + 24, (int64_t)plen + 40, ts,
                              frag_off, more, ident, r);
    }
    *ethertype = et;
    return FRAME_NON_IP;
}

typedef struct {
    int64_t idle, active, linger;
    int64_t max_flows;
    flow_t *flows;       /* max_flows slots (calloc: pages appear as slots are used) */
    int32_t *index;      /* open addressing, slot + 1 (0: empty), linear probing */
    uint64_t mask;
    int32_t n_used, lru_head, lru_tail, free_head, n_fresh;
    int64_t clock;
    /* ended flows waiting for the watermark */
    flow_t *held;
    size_t n_held, cap_held;
    slow_t slow; /* the per-frame decoder's state */
    /* counters (MeterStats, DecodeStats) */
    int64_t packets, bytes, evicted, peak, written, started;
    int64_t ended[R_SHUTDOWN + 1]; /* by reason */
    int64_t frames, slow_path;
    int64_t non_ip[65536];
    /* output */
    int fd;
    char *out;
    size_t n_out;
    int err; /* errno of a failed write or allocation */
} meter_t;

static uint64_t key_hash(const flow_t *k) {
    uint64_t h = k->a_hi * 0x9E3779B97F4A7C15ULL ^ k->a_lo;
    h = (h ^ (h >> 33)) * 0xFF51AFD7ED558CCDULL ^ k->b_hi;
    h = (h ^ (h >> 33)) * 0xC4CEB9FE1A85EC53ULL ^ k->b_lo;
    h = (h ^ (h >> 33)) * 0xFF51AFD7ED558CCDULL ^
        ((uint64_t)k->port_a | (uint64_t)k->port_b << 17 | (uint64_t)k->vlan << 34 |
         (uint64_t)k->proto << 46 | (uint64_t)(k->ipver == 6) << 54);
    h = (h ^ (h >> 33)) * 0xC4CEB9FE1A85EC53ULL;
    return h ^ (h >> 33);
}

static int same_key(const flow_t *a, const flow_t *b) {
    return a->a_lo == b->a_lo && a->b_lo == b->b_lo && a->port_a == b->port_a &&
           a->port_b == b->port_b && a->a_hi == b->a_hi && a->b_hi == b->b_hi &&
           a->vlan == b->vlan && a->proto == b->proto && a->ipver == b->ipver;
}

/* The canonical end order (offline._merge_in_end_order): last packet, first packet, then the
 * key columns and the reason, so the order never depends on how a table ended its flows. */
static int end_order(const void *pa, const void *pb) {
    const flow_t *a = pa, *b = pb;
#define CMP(x) if (a->x != b->x) return a->x < b->x ? -1 : 1
    CMP(end_ns); CMP(start_ns); CMP(vlan); CMP(ipver); CMP(proto); CMP(a_hi); CMP(a_lo);
    CMP(b_hi); CMP(b_lo); CMP(port_a); CMP(port_b); CMP(reason);
#undef CMP
    return 0;
}

/* The earliest deadline and its reason (FlowMeter._earliest; ties: idle, close, active). */
static int64_t earliest(const meter_t *m, const flow_t *f, uint8_t *reason) {
    int64_t close = f->fin_ab > f->fin_ba ? f->fin_ab : f->fin_ba;
    if (f->rst < close) close = f->rst;
    int64_t d_idle = f->end_ns + m->idle;
    int64_t d_close = close != NONE_NS ? close + m->linger : NONE_NS;
    int64_t d_active = f->start_ns + (m->active - 1);
    int64_t d = d_idle < d_close ? d_idle : d_close;
    if (d_active < d) d = d_active;
    if (d_idle == d) *reason = R_IDLE;
    else if (d_close == d) *reason = f->rst != NONE_NS ? R_RST : R_FIN;
    else *reason = R_ACTIVE;
    return d;
}

static int flush_out(meter_t *m) {
    size_t done = 0;
    while (done < m->n_out) {
        ssize_t k = write(m->fd, m->out + done, m->n_out - done);
        if (k < 0) {
            if (errno == EINTR) continue;
            m->err = errno;
            return -1;
        }
        done += (size_t)k;
    }
    m->n_out = 0;
    return 0;
}

/* Copy flow f, ended with reason, to the held flows. */
static int hold(meter_t *m, const flow_t *f, uint8_t reason) {
    if (m->n_held == m->cap_held) {
        size_t cap = m->cap_held ? m->cap_held * 2 : 4096;
        flow_t *h = realloc(m->held, cap * sizeof *h);
        if (h == NULL) {
            m->err = ENOMEM;
            return -1;
        }
        m->held = h, m->cap_held = cap;
    }
    m->held[m->n_held] = *f;
    m->held[m->n_held++].reason = reason;
    m->ended[reason]++;
    return 0;
}

/* Write the held flows that end before `watermark` (no flow still open, nor any later one,
 * can end before it), in end order. */
static int release(meter_t *m, int64_t watermark) {
    if (!m->n_held) return 0;
    qsort(m->held, m->n_held, sizeof *m->held, end_order);
    size_t k = 0;
    for (; k < m->n_held && m->held[k].end_ns < watermark; k++) {
        if (m->n_out + LINE_MAX_BYTES > OUT_BYTES && flush_out(m) < 0) return -1;
        m->n_out = (size_t)(put_flow(m->out + m->n_out, &m->held[k]) - m->out);
    }
    m->written += (int64_t)k;
    memmove(m->held, m->held + k, (m->n_held - k) * sizeof *m->held);
    m->n_held -= k;
    return 0;
}

static int64_t watermark(const meter_t *m) {
    if (m->lru_head >= 0) return m->flows[m->lru_head].end_ns;
    return m->clock > 0 ? m->clock : 0;
}

static void lru_unlink(meter_t *m, int32_t s) {
    flow_t *f = &m->flows[s];
    if (f->prev >= 0) m->flows[f->prev].next = f->next;
    else m->lru_head = f->next;
    if (f->next >= 0) m->flows[f->next].prev = f->prev;
    else m->lru_tail = f->prev;
}

static void lru_append(meter_t *m, int32_t s) {
    flow_t *f = &m->flows[s];
    f->prev = m->lru_tail, f->next = -1;
    if (m->lru_tail >= 0) m->flows[m->lru_tail].next = s;
    else m->lru_head = s;
    m->lru_tail = s;
}

/* Take slot s's flow out of the table (index, LRU list) and free the slot. */
static void drop(meter_t *m, int32_t s) {
    uint64_t i = key_hash(&m->flows[s]) & m->mask;
    while (m->index[i] != s + 1) i = (i + 1) & m->mask;
    /* Backward-shift deletion: no tombstones, probes stay short. */
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        if (!m->index[j]) break;
        uint64_t home = key_hash(&m->flows[m->index[j] - 1]) & m->mask;
        if (((j - home) & m->mask) >= ((j - i) & m->mask)) {
            m->index[i] = m->index[j];
            i = j;
        }
    }
    m->index[i] = 0;
    lru_unlink(m, s);
    m->flows[s].next = m->free_head;
    m->free_head = s;
    m->n_used--;
}

/* End every open flow past a deadline at now (FlowMeter.expire). */
static int expire(meter_t *m, int64_t now) {
    int32_t s = m->lru_head;
    while (s >= 0) {
        int32_t next = m->flows[s].next;
        uint8_t why;
        if (earliest(m, &m->flows[s], &why) < now) {
            if (hold(m, &m->flows[s], why) < 0) return -1;
            drop(m, s);
        }
        s = next;
    }
    return 0;
}

/* Start flow f afresh with packet r at time t (FlowMeter._reset). */
static void reset(flow_t *f, const row_t *r, int64_t t) {
    f->vlan = r->vlan, f->ipver = r->ipver, f->proto = r->proto;
    f->a_hi = r->a_hi, f->a_lo = r->a_lo, f->b_hi = r->b_hi, f->b_lo = r->b_lo;
    f->port_a = r->port_a, f->port_b = r->port_b;
    f->itype = r->itype, f->icode = r->icode;
    int synack = (r->flags & (TCP_SYN_BIT | TCP_ACK_BIT)) == (TCP_SYN_BIT | TCP_ACK_BIT);
    f->init_b = (uint8_t)(r->rev ^ synack);
    f->pkts_ab = f->pkts_ba = f->bytes_ab = f->bytes_ba = 0;
    f->flags_ab = f->flags_ba = 0;
    f->start_ns = f->end_ns = t;
    f->fin_ab = f->fin_ba = f->rst = NONE_NS;
}

/* One packet (FlowMeter._step, with a full-key table: no hash collisions). */
static int add_packet(meter_t *m, const row_t *r, int64_t ts) {
    int64_t t = ts > m->clock ? ts : m->clock;
    m->clock = t;
    m->packets++;
    m->bytes += r->nbytes;
    flow_t probe;
    probe.vlan = r->vlan, probe.ipver = r->ipver, probe.proto = r->proto;
    probe.a_hi = r->a_hi, probe.a_lo = r->a_lo, probe.b_hi = r->b_hi, probe.b_lo = r->b_lo;
    probe.port_a = r->port_a, probe.port_b = r->port_b;
    uint64_t i = key_hash(&probe) & m->mask;
    int32_t s = -1;
    for (; m->index[i]; i = (i + 1) & m->mask) {
        if (same_key(&m->flows[m->index[i] - 1], &probe)) {
            s = m->index[i] - 1;
            break;
        }
    }
    flow_t *f;
    if (s >= 0) {
        f = &m->flows[s];
        uint8_t why;
        if (earliest(m, f, &why) < t) { /* a rule ends it before this packet */
            if (hold(m, f, why) < 0) return -1;
            reset(f, r, t);
            m->started++;
        }
        lru_unlink(m, s);
    } else {
        if (m->n_used == m->max_flows) {
            /* Full: end the least recently active flow, for its deadline's reason when it is
             * past one at t, else as EVICTED (docs/FLOWS.md). */
            int32_t v = m->lru_head;
            uint8_t why;
            if (!(earliest(m, &m->flows[v], &why) < t)) {
                why = R_EVICTED;
                m->evicted++;
            }
            if (hold(m, &m->flows[v], why) < 0) return -1;
            drop(m, v);
            /* the slot freed may have moved entries: find this key's place again */
            for (i = key_hash(&probe) & m->mask; m->index[i]; i = (i + 1) & m->mask) {
            }
        }
        if (m->free_head >= 0) {
            s = m->free_head;
            m->free_head = m->flows[s].next;
        } else {
            s = m->n_fresh++;
        }
        m->index[i] = s + 1;
        m->n_used++;
        if (m->n_used > m->peak) m->peak = m->n_used;
        f = &m->flows[s];
        reset(f, r, t);
        m->started++;
    }
    lru_append(m, s);
    if (r->rev) {
        f->pkts_ba++, f->bytes_ba += r->nbytes, f->flags_ba |= r->flags;
        if (r->flags & TCP_FIN_BIT && f->fin_ba == NONE_NS) f->fin_ba = t;
    } else {
        f->pkts_ab++, f->bytes_ab += r->nbytes, f->flags_ab |= r->flags;
        if (r->flags & TCP_FIN_BIT && f->fin_ab == NONE_NS) f->fin_ab = t;
    }
    if (r->flags & TCP_RST_BIT && f->rst == NONE_NS) f->rst = t;
    f->end_ns = t;
    return 0;
}

/* End of file (FlowMeter.flush): due flows for their deadline, the others SHUTDOWN, or
 * TCP_FIN / TCP_RST when closed and still in their linger. */
static int flush_all(meter_t *m) {
    while (m->lru_head >= 0) {
        int32_t s = m->lru_head;
        flow_t *f = &m->flows[s];
        uint8_t why;
        int64_t d = earliest(m, f, &why);
        if (!(m->clock > 0 && d < m->clock)) {
            int64_t close = f->fin_ab > f->fin_ba ? f->fin_ab : f->fin_ba;
            if (f->rst < close) close = f->rst;
            why = close == NONE_NS ? R_SHUTDOWN : f->rst != NONE_NS ? R_RST : R_FIN;
        }
        if (hold(m, f, why) < 0) return -1;
        drop(m, s);
    }
    return 0;
}

/* A meter with an empty table of max_flows slots (1 <= max_flows <= INT32_MAX / 4), or NULL
 * (out of memory). The file path (meter_json) and the live path (Meter) share it. */
static meter_t *meter_new(int64_t idle, int64_t active, int64_t linger, int64_t max_flows) {
    meter_t *m = calloc(1, sizeof *m);
    if (m == NULL) return NULL;
    uint64_t slots = 16;
    while (slots < (uint64_t)max_flows * 2) slots <<= 1;
    m->idle = idle, m->active = active, m->linger = linger, m->max_flows = max_flows;
    m->flows = calloc((size_t)max_flows, sizeof *m->flows);
    m->index = calloc(slots, sizeof *m->index);
    m->mask = slots - 1;
    m->lru_head = m->lru_tail = m->free_head = -1;
    m->clock = INT64_MIN;
    m->slow.frags.oldest = m->slow.frags.newest = -1;
    memset(m->slow.frags.bucket, 0xFF, sizeof m->slow.frags.bucket);
    m->fd = -1;
    if (m->flows == NULL || m->index == NULL) {
        free(m->flows);
        free(m->index);
        free(m);
        return NULL;
    }
    return m;
}

static void meter_free(meter_t *m) {
    if (m == NULL) return;
    free(m->flows);
    free(m->index);
    free(m->held);
    free(m->out);
    free(m);
}

/* One frame through the decoder into the table: the per-frame work of both paths. ts is the
 * frame's capture time (the fragment memory's clock), meter_ts the time the table uses. */
static int meter_frame(meter_t *m, const uint8_t *f, int64_t caplen, int linktype,
                       unsigned meta_vlan, int64_t ts, int64_t meter_ts) {
    row_t r;
    unsigned et = 0;
    m->frames++;
    int kind = decode_one(f, caplen, linktype, meta_vlan, &r, &et);
    if (kind == FRAME_SLOW) {
        m->slow_path++;
        kind = decode_slow(&m->slow, f, caplen, linktype, meta_vlan, ts, &r, &et);
    }
    if (kind == FRAME_NON_IP) {
        m->non_ip[et & 0xFFFF]++;
        return 0;
    }
    if (kind == FRAME_MALFORMED) {
        m->slow.malformed++;
        return 0;
    }
    return add_packet(m, &r, meter_ts);
}

static const uint8_t LE_US[4] = {0xd4, 0xc3, 0xb2, 0xa1}, LE_NS[4] = {0x4d, 0x3c, 0xb2, 0xa1};

static inline uint32_t le32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4); /* little-endian host: see the module's guard */
    return v;
}

/* The file is mapped whole, but read once front to back: the pages behind the reader are
 * dropped every DROP_BEHIND bytes, so they never add up in the process's RSS (mapped file
 * pages count there; the numpy path reads 2 MiB chunks). Offsets stay page-aligned. */
#define DROP_BEHIND ((size_t)1 << 20)

static void drop_behind(const uint8_t *d, size_t *dropped, size_t pos) {
    if (pos - *dropped < 2 * DROP_BEHIND) return;
    size_t upto = (pos / DROP_BEHIND - 1) * DROP_BEHIND;
    madvise((void *)(d + *dropped), upto - *dropped, MADV_DONTNEED);
    *dropped = upto;
}

/* Whether every record of the file is one meter_json reads exactly as the numpy path does;
 * *cut gets the bytes of a record cut short at the end. */
static int native_file(const uint8_t *d, size_t size, size_t *cut) {
    size_t max_cap = le32(d + 16) > MAX_CAPLEN ? le32(d + 16) : MAX_CAPLEN;
    size_t pos = 24, dropped = 0;
    while (pos + 16 <= size) {
        drop_behind(d, &dropped, pos);
        size_t caplen = le32(d + pos + 8);
        if (caplen > max_cap) return 0; /* corrupt, or cut: PcapReader says which */
        if (caplen > size - pos - 16) break;
        pos += 16 + caplen;
    }
    *cut = size - pos;
    return 1;
}

static int run(meter_t *m, const uint8_t *d, size_t size, int linktype, int nanos) {
    size_t pos = 24, dropped = 0;
    int64_t last_expire = 0, mult = nanos ? 1 : 1000;
    while (pos + 16 <= size) {
        drop_behind(d, &dropped, pos);
        size_t caplen = le32(d + pos + 8);
        if (caplen > size - pos - 16) break;
        int64_t ts = (int64_t)le32(d + pos) * 1000000000LL + (int64_t)le32(d + pos + 4) * mult;
        int64_t before = m->packets;
        if (meter_frame(m, d + pos + 16, (int64_t)caplen, linktype, 0, ts, ts) < 0) return -1;
        pos += 16 + caplen;
        if (m->packets == before) continue; /* not metered: non-IP or malformed */
        /* Expire when the numpy path does (after each METER_BATCH packets, once per
         * EXPIRE_EVERY_NS): the records do not depend on it, the peak table count does. */
        if (m->packets % METER_BATCH == 0) {
            int64_t now = m->clock > 0 ? m->clock : 0;
            if (now - last_expire >= EXPIRE_EVERY_NS) {
                last_expire = now;
                if (expire(m, now) < 0 || release(m, watermark(m)) < 0) return -1;
            }
        }
        if (m->n_held >= (1u << 16) && m->n_held == m->cap_held &&
            release(m, watermark(m)) < 0)
            return -1;
    }
    if (flush_all(m) < 0 || release(m, NONE_NS) < 0) return -1;
    return flush_out(m);
}

/* A capture file mapped for the native meter. */
typedef struct {
    int fd;
    const uint8_t *d;
    size_t size, cut;
    int linktype, nanos;
} capfile_t;

static void cap_close(capfile_t *c) {
    if (c->d != MAP_FAILED) munmap((void *)c->d, c->size);
    if (c->fd >= 0) close(c->fd);
    c->d = MAP_FAILED, c->fd = -1;
}

/* Open and map path; 1 if the native meter reads it exactly as the numpy path (a regular
 * little-endian classic pcap of a supported link type, every record within the snap length),
 * else 0 with nothing held: PcapReader then reads the file or says what is wrong with it. */
static int cap_open(const char *path, capfile_t *c) {
    c->d = MAP_FAILED;
    c->fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (c->fd < 0 || fstat(c->fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size < 24) goto no;
    c->size = (size_t)st.st_size;
    c->d = mmap(NULL, c->size, PROT_READ, MAP_PRIVATE, c->fd, 0);
    if (c->d == MAP_FAILED) goto no;
    c->nanos = memcmp(c->d, LE_NS, 4) == 0;
    if (!c->nanos && memcmp(c->d, LE_US, 4) != 0) goto no;
    c->linktype = (int)(le32(c->d + 20) & 0x0FFFFFFF);
    if (c->linktype != LT_ETHERNET && c->linktype != LT_RAW && c->linktype != LT_SLL &&
        c->linktype != LT_SLL2)
        goto no;
    madvise((void *)c->d, c->size, MADV_SEQUENTIAL);
    if (native_file(c->d, c->size, &c->cut)) return 1;
no:
    cap_close(c);
    return 0;
}

static PyObject *native_reads(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *path_obj;
    if (!PyArg_ParseTuple(args, "O&:native_reads", PyUnicode_FSConverter, &path_obj)) return NULL;
    capfile_t c;
    int yes;
    Py_BEGIN_ALLOW_THREADS
    yes = cap_open(PyBytes_AS_STRING(path_obj), &c);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_obj);
    if (yes) cap_close(&c);
    return PyBool_FromLong(yes);
}

/* The non-IP frames counted, {ethertype: frames} (DecodeStats.non_ip), or NULL. */
static PyObject *non_ip_dict(const meter_t *m) {
    PyObject *d = PyDict_New();
    if (d == NULL) return NULL;
    for (int et = 0; et < 65536; et++) {
        if (!m->non_ip[et]) continue;
        PyObject *k = PyLong_FromLong(et), *v = PyLong_FromLongLong(m->non_ip[et]);
        int bad = k == NULL || v == NULL || PyDict_SetItem(d, k, v) < 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (bad) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

static PyObject *meter_json(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *path_obj;
    int out_fd;
    long long idle, active, linger, max_flows;
    if (!PyArg_ParseTuple(args, "O&iLLLL:meter_json", PyUnicode_FSConverter, &path_obj, &out_fd,
                          &idle, &active, &linger, &max_flows))
        return NULL;
    PyObject *result = NULL;
    meter_t *m = NULL;
    capfile_t c = {.fd = -1, .d = MAP_FAILED};
    int native = 0;
    if (max_flows >= 1 && max_flows <= INT32_MAX / 4) {
        Py_BEGIN_ALLOW_THREADS
        native = cap_open(PyBytes_AS_STRING(path_obj), &c);
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(path_obj);
    if (!native) goto none;
    const uint8_t *d = c.d;
    size_t size = c.size, cut = c.cut;
    int linktype = c.linktype, nanos = c.nanos;
    m = meter_new(idle, active, linger, max_flows);
    if (m == NULL) goto nomem;
    m->out = malloc(OUT_BYTES);
    if (m->out == NULL) goto nomem;
    m->fd = out_fd;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run(m, d, size, linktype, nanos);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        errno = m->err;
        PyErr_SetFromErrno(m->err == ENOMEM ? PyExc_MemoryError : PyExc_OSError);
        goto done;
    }
    PyObject *non_ip = non_ip_dict(m);
    if (non_ip == NULL) goto done;
    result = Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:L,s:n,s:L,s:L,s:N}", "flows", (long long)m->written,
                           "frames", (long long)m->frames, "packets", (long long)m->packets,
                           "bytes", (long long)m->bytes, "evicted", (long long)m->evicted,
                           "peak_flows", (long long)m->peak, "cut_bytes", (Py_ssize_t)cut,
                           "malformed", (long long)m->slow.malformed, "fragments",
                           (long long)m->slow.fragments, "non_ip", non_ip);
    goto done;
nomem:
    PyErr_NoMemory();
    goto done;
none:
    result = Py_NewRef(Py_None);
done:
    meter_free(m);
    cap_close(&c);
    return result;
}

/* ---- Meter: the same table for the live agent --------------------------------------------
 *
 * The ring's blocks arrive as FrameBatches; Meter meters them frame by frame with meter_frame
 * (the decoder's fragment memory and the table live in the object) and keeps the flows it
 * ends until take() copies them into FlowBatch columns. Clock steps: rebase() moves the open
 * flows and remembers the step (the last KEPT_STEPS, source._KEPT_STEPS), and every frame
 * stamped before a remembered step is metered at its time plus the step, oldest step first,
 * exactly as LiveMeter does for the numpy meter; the fragment memory keeps the frame's own
 * stamp, as Decoder does.
 */

#define KEPT_STEPS 4

typedef struct {
    PyObject_HEAD
    meter_t *m;
    int64_t step_before[KEPT_STEPS], step_delta[KEPT_STEPS];
    int n_steps;
} MeterObject;

static int Meter_init(MeterObject *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"idle_ns", "active_ns", "linger_ns", "max_flows", NULL};
    long long idle, active, linger, max_flows;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LLLL:Meter", kw, &idle, &active, &linger,
                                     &max_flows))
        return -1;
    if (max_flows < 1 || max_flows > INT32_MAX / 4 || idle < 0 || active < 1 || linger < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "Meter: max_flows must be 1..536870911, timeouts non-negative");
        return -1;
    }
    meter_free(self->m);
    self->n_steps = 0;
    self->m = meter_new(idle, active, linger, max_flows);
    if (self->m == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void Meter_dealloc(MeterObject *self) {
    meter_free(self->m);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int meter_ready(MeterObject *self) {
    if (self->m != NULL) return 1;
    PyErr_SetString(PyExc_RuntimeError, "Meter: not initialised");
    return 0;
}

static PyObject *meter_failed(meter_t *m) {
    if (m->err == ENOMEM) return PyErr_NoMemory();
    errno = m->err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* add(data, offsets, caplen, ts_ns, vlan, linktype) -> flows held (ended so far, not taken) */
static PyObject *Meter_add(MeterObject *self, PyObject *args) {
    Py_buffer data, offs, caps, ts, vl = {0};
    PyObject *vlan_obj;
    int linktype;
    if (!meter_ready(self)) return NULL;
    if (!PyArg_ParseTuple(args, "y*y*y*y*Oi:add", &data, &offs, &caps, &ts, &vlan_obj, &linktype))
        return NULL;
    PyObject *result = NULL;
    int have_vlan = 0;
    Py_ssize_t n = offs.len / 8;
    if (linktype != LT_ETHERNET && linktype != LT_RAW && linktype != LT_SLL &&
        linktype != LT_SLL2) {
        PyErr_Format(PyExc_ValueError, "Meter.add: link type %d is not supported", linktype);
        goto done;
    }
    if (vlan_obj != Py_None) {
        if (PyObject_GetBuffer(vlan_obj, &vl, PyBUF_C_CONTIGUOUS) < 0) goto done;
        have_vlan = 1;
    }
    if (offs.len % 8 || caps.len != offs.len || ts.len != offs.len ||
        (have_vlan && (vl.itemsize != 2 || vl.len / 2 != n))) {
        PyErr_SetString(PyExc_ValueError, "Meter.add: inputs differ in length or type");
        goto done;
    }
    {
        meter_t *m = self->m;
        const uint8_t *d = data.buf;
        const int64_t *off = offs.buf, *cap = caps.buf, *tsv = ts.buf;
        const uint16_t *mv = have_vlan ? vl.buf : NULL;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (off[i] < 0 || cap[i] < 0 || off[i] > data.len || cap[i] > data.len - off[i]) {
                PyErr_Format(PyExc_ValueError, "Meter.add: frame %zd lies outside the buffer", i);
                goto done;
            }
        }
        int rc = 0;
        for (Py_ssize_t i = 0; i < n && rc == 0; i++) {
            int64_t t = tsv[i];
            for (int k = 0; k < self->n_steps; k++) /* a frame from before several steps */
                if (t < self->step_before[k]) t += self->step_delta[k];
            rc = meter_frame(m, d + off[i], cap[i], linktype, mv ? mv[i] : 0, tsv[i], t);
        }
        if (rc < 0) {
            meter_failed(m);
            goto done;
        }
        result = PyLong_FromSize_t(m->n_held);
    }
done:
    if (have_vlan) PyBuffer_Release(&vl);
    PyBuffer_Release(&data);
    PyBuffer_Release(&offs);
    PyBuffer_Release(&caps);
    PyBuffer_Release(&ts);
    return result;
}

/* expire(now_ns) -> flows held */
static PyObject *Meter_expire(MeterObject *self, PyObject *args) {
    long long now;
    if (!meter_ready(self) || !PyArg_ParseTuple(args, "L:expire", &now)) return NULL;
    if (expire(self->m, now) < 0) return meter_failed(self->m);
    return PyLong_FromSize_t(self->m->n_held);
}

/* flush() -> flows held: every open flow ended (FlowMeter.flush's reasons). */
static PyObject *Meter_flush(MeterObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!meter_ready(self)) return NULL;
    if (flush_all(self->m) < 0) return meter_failed(self->m);
    return PyLong_FromSize_t(self->m->n_held);
}

/* rebase(before_ns, delta_ns): FlowMeter.rebase on the table, and the step remembered for the
 * frames stamped before it that are still to come. */
static PyObject *Meter_rebase(MeterObject *self, PyObject *args) {
    long long before, delta;
    if (!meter_ready(self) || !PyArg_ParseTuple(args, "LL:rebase", &before, &delta)) return NULL;
    if (delta <= 0) {
        PyErr_Format(PyExc_ValueError, "a clock step must be forward, not %lld ns", delta);
        return NULL;
    }
    meter_t *m = self->m;
    for (int32_t s = m->lru_head; s >= 0; s = m->flows[s].next) {
        flow_t *f = &m->flows[s];
        int64_t *times[] = {&f->start_ns, &f->end_ns, &f->fin_ab, &f->fin_ba, &f->rst};
        for (size_t k = 0; k < sizeof times / sizeof *times; k++)
            if (*times[k] != NONE_NS && *times[k] < before) *times[k] += delta;
    }
    if (0 < m->clock && m->clock < before) m->clock += delta;
    if (self->n_steps == KEPT_STEPS) {
        memmove(self->step_before, self->step_before + 1, (KEPT_STEPS - 1) * sizeof(int64_t));
        memmove(self->step_delta, self->step_delta + 1, (KEPT_STEPS - 1) * sizeof(int64_t));
        self->n_steps--;
    }
    self->step_before[self->n_steps] = before;
    self->step_delta[self->n_steps++] = delta;
    Py_RETURN_NONE;
}

/* take(columns) -> n: the held flows into the 21 FlowBatch columns (FLOW_COLUMNS order, each
 * C-contiguous, writable, with that dtype and at least n long, n = what add/expire/flush
 * returned), in the order they ended; the meter holds none afterwards. */
static PyObject *Meter_take(MeterObject *self, PyObject *args) {
    PyObject *tuple;
    if (!meter_ready(self) || !PyArg_ParseTuple(args, "O!:take", &PyTuple_Type, &tuple))
        return NULL;
    if (PyTuple_GET_SIZE(tuple) != N_COLS) {
        PyErr_Format(PyExc_ValueError, "Meter.take: %d columns expected", N_COLS);
        return NULL;
    }
    meter_t *m = self->m;
    Py_ssize_t n = (Py_ssize_t)m->n_held;
    Py_buffer b[N_COLS];
    int got = 0;
    PyObject *result = NULL;
    for (; got < N_COLS; got++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(tuple, got), &b[got],
                               PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
            goto done;
        if (b[got].itemsize != COL_SIZE[got] || b[got].len / COL_SIZE[got] < n) {
            PyErr_Format(PyExc_ValueError, "Meter.take: column %d has the wrong type or length",
                         got);
            got++;
            goto done;
        }
    }
#define COL(i, t) ((t *)b[i].buf)
    for (Py_ssize_t i = 0; i < n; i++) {
        const flow_t *f = &m->held[i];
        COL(C_VLAN, uint16_t)[i] = f->vlan;
        COL(C_IPVER, uint8_t)[i] = f->ipver;
        COL(C_PROTO, uint8_t)[i] = f->proto;
        COL(C_A_HI, uint64_t)[i] = f->a_hi;
        COL(C_A_LO, uint64_t)[i] = f->a_lo;
        COL(C_B_HI, uint64_t)[i] = f->b_hi;
        COL(C_B_LO, uint64_t)[i] = f->b_lo;
        COL(C_PORT_A, uint32_t)[i] = f->port_a;
        COL(C_PORT_B, uint32_t)[i] = f->port_b;
        COL(C_INIT_B, uint8_t)[i] = f->init_b;
        COL(C_ICMP_TYPE, uint8_t)[i] = f->itype;
        COL(C_ICMP_CODE, uint8_t)[i] = f->icode;
        COL(C_PKTS_AB, int64_t)[i] = f->pkts_ab;
        COL(C_PKTS_BA, int64_t)[i] = f->pkts_ba;
        COL(C_BYTES_AB, int64_t)[i] = f->bytes_ab;
        COL(C_BYTES_BA, int64_t)[i] = f->bytes_ba;
        COL(C_FLAGS_AB, uint8_t)[i] = f->flags_ab;
        COL(C_FLAGS_BA, uint8_t)[i] = f->flags_ba;
        COL(C_START_NS, int64_t)[i] = f->start_ns;
        COL(C_END_NS, int64_t)[i] = f->end_ns;
        COL(C_REASON, uint8_t)[i] = f->reason;
    }
#undef COL
    m->n_held = 0;
    if (m->cap_held > 4096) { /* a burst of ended flows: give its memory back */
        free(m->held);
        m->held = NULL, m->cap_held = 0;
    }
    result = PyLong_FromSsize_t(n);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    return result;
}

/* stats() -> dict: MeterStats' and DecodeStats' counters, and the table's state. */
static PyObject *Meter_stats(MeterObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!meter_ready(self)) return NULL;
    meter_t *m = self->m;
    PyObject *ended = PyDict_New(), *non_ip = non_ip_dict(m), *result = NULL;
    if (ended == NULL || non_ip == NULL) goto fail;
    for (int r = R_IDLE; r <= R_SHUTDOWN; r++) {
        if (!m->ended[r]) continue;
        PyObject *v = PyLong_FromLongLong(m->ended[r]);
        int bad = v == NULL || PyDict_SetItemString(ended, REASONS[r], v) < 0;
        Py_XDECREF(v);
        if (bad) goto fail;
    }
    result = Py_BuildValue(
        "{s:L,s:L,s:L,s:N,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:N,s:i}", "packets",
        (long long)m->packets, "bytes", (long long)m->bytes, "flows_started",
        (long long)m->started, "flows_ended", ended, "evicted", (long long)m->evicted,
        "peak_flows", (long long)m->peak, "frames", (long long)m->frames, "metered",
        (long long)m->packets, "slow_path", (long long)m->slow_path, "fragments",
        (long long)m->slow.fragments, "malformed", (long long)m->slow.malformed, "clock_ns",
        (long long)(m->clock > 0 ? m->clock : 0), "non_ip", non_ip, "active_flows",
        (int)m->n_used);
    return result;
fail:
    Py_XDECREF(ended);
    Py_XDECREF(non_ip);
    return NULL;
}

/* oldest_open() -> the earliest last-packet time of the open flows, None when none is open
 * (a walk over the table: the LRU head is the oldest only until a clock step). */
static PyObject *Meter_oldest_open(MeterObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!meter_ready(self)) return NULL;
    meter_t *m = self->m;
    if (m->lru_head < 0) Py_RETURN_NONE;
    int64_t oldest = NONE_NS;
    for (int32_t s = m->lru_head; s >= 0; s = m->flows[s].next)
        if (m->flows[s].end_ns < oldest) oldest = m->flows[s].end_ns;
    return PyLong_FromLongLong(oldest);
}

static PyObject *Meter_active(MeterObject *self, void *Py_UNUSED(closure)) {
    if (!meter_ready(self)) return NULL;
    return PyLong_FromLong(self->m->n_used);
}

static PyMethodDef Meter_methods[] = {
    {"add", (PyCFunction)Meter_add, METH_VARARGS,
     "add(data, offsets, caplen, ts_ns, vlan, linktype): meter a FrameBatch; flows held."},
    {"expire", (PyCFunction)Meter_expire, METH_VARARGS,
     "expire(now_ns): end the flows past a deadline; flows held."},
    {"flush", (PyCFunction)Meter_flush, METH_NOARGS, "End every open flow; flows held."},
    {"rebase", (PyCFunction)Meter_rebase, METH_VARARGS,
     "rebase(before_ns, delta_ns): the clock stepped forward."},
    {"take", (PyCFunction)Meter_take, METH_VARARGS,
     "take(columns): the held flows into FlowBatch columns; how many."},
    {"stats", (PyCFunction)Meter_stats, METH_NOARGS, "Counters and table state, as a dict."},
    {"oldest_open", (PyCFunction)Meter_oldest_open, METH_NOARGS,
     "The earliest last-packet time of the open flows, or None."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Meter_getset[] = {
    {"active_flows", (getter)Meter_active, NULL, "Open flows in the table.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MeterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "appliance.capture._fastpath.Meter",
    .tp_doc = "Meter(idle_ns, active_ns, linger_ns, max_flows): meter_json's decoder and flow "
              "table for FrameBatches (the live agent).",
    .tp_basicsize = sizeof(MeterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Meter_init,
    .tp_dealloc = (destructor)Meter_dealloc,
    .tp_methods = Meter_methods,
    .tp_getset = Meter_getset,
};

static PyMethodDef methods[] = {
    {"walk_le", walk_le, METH_VARARGS, "Offsets of whole little-endian pcap records."},
    {"decode", decode, METH_VARARGS, "Common frames of a FrameBatch to PacketColumns rows."},
    {"flows_json", flows_json, METH_VARARGS, "FlowBatch columns as JSON lines (bytes)."},
    {"meter_json", meter_json, METH_VARARGS, "A classic pcap metered to JSON lines on a fd."},
    {"native_reads", native_reads, METH_VARARGS, "Whether meter_json reads this file."},
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
    if (PyType_Ready(&MeterType) < 0) return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL) return NULL;
    /* A table slot and its share of the index (at most four 4-byte entries per slot). */
    if (PyModule_AddObjectRef(mod, "Meter", (PyObject *)&MeterType) < 0 ||
        PyModule_AddIntConstant(mod, "SLOT_BYTES", (long)(sizeof(flow_t) + 4 * sizeof(int32_t))) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
