"""Classic BPF for the capture socket: a compiler for a subset of the pcap filter language.

The device has no tcpdump/libpcap compiler, so the filter is compiled here, in Python, to a
classic BPF program the kernel runs (SO_ATTACH_FILTER) before a frame reaches the ring.

Language (a documented subset of pcap-filter(7)); words are case-sensitive like tcpdump's.
Every filter in it means what libpcap's compiler makes of the same text, frame for frame
(tests/unit/capture/test_bpf_against_libpcap.py holds the two to that), except "vlan":

    expr      := factor { ("and" | "&&" | "or" | "||") factor }   one precedence, left to right
    factor    := ("not" | "!") factor | "(" expr ")" | primitive
    primitive := "ip" | "ip6" | "arp"
               | "tcp" | "udp" | "sctp"                IPv4 or IPv6
               | "icmp" | "icmp6"                      IPv4 only / IPv6 only
               | "proto" NUMBER                        IPv4 protocol / IPv6 next header
               | ["src" | "dst"] "host" ADDRESS        IPv4 (also ARP/RARP sender, target) or IPv6
               | ["src" | "dst"] "net" ADDRESS "/" LEN   the same
               | ["src" | "dst"] "port" NUMBER         TCP, UDP or SCTP; IPv4 first fragments
               | "vlan" [NUMBER]                       tag reported by the kernel (ancillary)
    NUMBER    := decimal | 0x hexadecimal | 0 octal    (as libpcap reads them: 010 is 8)

Limits, as with libpcap's own code: IPv6 protocol tests look at the header right after the fixed
IPv6 header or after a fragment header there, port tests only right after the fixed header (no
extension-header walk). Frames are untagged on this path: the kernel strips 802.1Q and reports
it out of band, hence "vlan" reads the ancillary field and never moves the offsets of the
other primitives (libpcap's "vlan" reads an in-band tag and moves the offsets of everything
after it, so libpcap's `vlan 10 and tcp` is ours too, but its `not vlan and tcp` is not).

`capture_program` builds the program the capture uses: the default filter (IPv4 and IPv6 only,
unless accept_non_ip, and never frames to or from the box's own uplink addresses) AND the user
filter. Ahead of both, frames the box itself transmits on the port (packet type PACKET_OUTGOING,
an ancillary load) are accepted, cut to OWN_FRAME_SNAPLEN bytes, whatever the filters say: the
ring counts them as the box's own and never meters them (appliance.capture.ring), so a tap that
talks on its mirror port shows in a counter instead of in the flows or nowhere.
`run_program` interprets a program in Python so unit tests can check what it accepts.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

# Instruction classes and modes (linux/filter.h).
LD, LDX, ALU, JMP, RET = 0x00, 0x01, 0x04, 0x05, 0x06
W, H, B = 0x00, 0x08, 0x10
ABS, IND, MSH, IMM = 0x20, 0x40, 0xA0, 0x00
JEQ, JSET = 0x10, 0x40
AND_ = 0x50
K = 0x00
SKF_AD_OFF = -0x1000
SKF_AD_PKTTYPE = 4
SKF_AD_VLAN_TAG = 44
SKF_AD_VLAN_TAG_PRESENT = 48

Insn = tuple[int, int, int, int]  # code, jt, jf, k

#: sll_pkttype / skb->pkt_type of a frame this host transmits (linux/if_packet.h).
PACKET_HOST = 0
PACKET_OUTGOING = 4
#: What the capture keeps of a frame the box sent itself: only counted, never decoded.
OWN_FRAME_SNAPLEN = 64


class FilterSyntaxError(ValueError):
    """The filter text is outside the supported language; str() says where."""


# -- parsing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Prim:
    """A primitive: kind in ip, ip6, arp, proto, host, net, port, vlan.

    family narrows proto, host and net like libpcap's protocol qualifier ("ip proto 1"): ""
    is libpcap's default (proto: IPv4 and IPv6; an IPv4 host or net: IPv4, ARP and RARP
    addresses), "ip" IPv4 only, "ip6" IPv6 only.
    """

    kind: str
    direction: str = ""  # "", "src", "dst"
    value: object = None
    family: str = ""


@dataclass(frozen=True)
class Not:
    inner: Node


@dataclass(frozen=True)
class And:
    left: Node
    right: Node


@dataclass(frozen=True)
class Or:
    left: Node
    right: Node


Node = Prim | Not | And | Or

#: word -> (protocol number, family), as libpcap defines the abbreviations.
_PROTO_WORDS = {
    "tcp": (6, ""),
    "udp": (17, ""),
    "sctp": (132, ""),
    "icmp": (1, "ip"),
    "icmp6": (58, "ip6"),
}
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
_TOKEN = re.compile(r"\s*(\(|\)|&&|\|\||!|[^\s()!&|]+)")


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise FilterSyntaxError(f"unexpected character at {pos}: {text[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise FilterSyntaxError("unexpected end of filter")
        self.i += 1
        return tok

    def expr(self) -> Node:
        # pcap-filter(7): "Alternation and concatenation have equal precedence and associate
        # left to right", so "tcp or udp and port 53" is "(tcp or udp) and port 53".
        node = self.factor()
        while (tok := self.peek()) in ("and", "&&", "or", "||"):
            self.take()
            node = And(node, self.factor()) if tok in ("and", "&&") else Or(node, self.factor())
        return node

    def factor(self) -> Node:
        tok = self.take()
        if tok in ("not", "!"):
            return Not(self.factor())
        if tok == "(":
            node = self.expr()
            if self.take() != ")":
                raise FilterSyntaxError("missing ')'")
            return node
        return self.primitive(tok)

    def primitive(self, tok: str) -> Node:
        if tok in ("ip", "ip6", "arp"):
            return Prim(tok)
        if tok in _PROTO_WORDS:
            proto, family = _PROTO_WORDS[tok]
            return Prim("proto", value=proto, family=family)
        if tok == "proto":
            return Prim("proto", value=self.number(255))
        if tok == "vlan":
            nxt = self.peek()
            if nxt is not None and _number(nxt) is not None:
                return Prim("vlan", value=self.number(4095))
            return Prim("vlan")
        direction = ""
        if tok in ("src", "dst"):
            direction, tok = tok, self.take()
        if tok == "host":
            word = self.take()
            try:
                return Prim("host", direction, ipaddress.ip_address(word))
            except ValueError:
                raise FilterSyntaxError(f"host {word!r}: not an IP address") from None
        if tok == "net":
            word = self.take()
            try:
                return Prim("net", direction, ipaddress.ip_network(word, strict=True))
            except ValueError:
                raise FilterSyntaxError(f"net {word!r}: not an address/prefix") from None
        if tok == "port":
            return Prim("port", direction, self.number(65535))
        raise FilterSyntaxError(f"unknown word {tok!r}")

    def number(self, limit: int) -> int:
        word = self.take()
        value = _number(word)
        if value is None or value > limit:
            raise FilterSyntaxError(f"{word!r}: expected a number up to {limit}")
        return value


def _number(word: str) -> int | None:
    """libpcap's reading of a number: 0x... hexadecimal, a leading 0 octal ("010" is 8)."""
    if not _NUMBER.fullmatch(word):
        return None
    if word[:2] in ("0x", "0X"):
        return int(word, 16)
    return int(word, 8 if word[0] == "0" else 10)


def parse_filter(text: str) -> Node | None:
    """Parse filter text (None for an empty filter)."""
    if not text.strip():
        return None
    p = _Parser(text)
    node = p.expr()
    if p.peek() is not None:
        raise FilterSyntaxError(f"unexpected {p.peek()!r}")
    return node


# -- compiling -------------------------------------------------------------------------


class _Label:
    __slots__ = ("pos",)

    def __init__(self) -> None:
        self.pos = -1


_Op = tuple[int, "_Label | int", "_Label | int", int]  # jt/jf: label or 0 (fall through)


class _Compiler:
    def __init__(self) -> None:
        self.ops: list[_Op | _Label] = []

    def emit(self, code: int, k: int = 0, jt: _Label | int = 0, jf: _Label | int = 0) -> None:
        self.ops.append((code, jt, jf, k & 0xFFFFFFFF))

    def mark(self, label: _Label) -> None:
        self.ops.append(label)

    def node(self, n: Node, yes: _Label, no: _Label) -> None:
        """Emit code that jumps to yes when n holds, else to no."""
        if isinstance(n, Not):
            self.node(n.inner, no, yes)
        elif isinstance(n, And):
            mid = _Label()
            self.node(n.left, mid, no)
            self.mark(mid)
            self.node(n.right, yes, no)
        elif isinstance(n, Or):
            mid = _Label()
            self.node(n.left, yes, mid)
            self.mark(mid)
            self.node(n.right, yes, no)
        else:
            self.prim(n, yes, no)

    def ethertype(self, value: int, yes: _Label, no: _Label) -> None:
        self.emit(LD | H | ABS, 12)
        self.emit(JMP | JEQ | K, value, yes, no)

    def prim(self, p: Prim, yes: _Label, no: _Label) -> None:
        if p.kind == "ip":
            self.ethertype(0x0800, yes, no)
        elif p.kind == "ip6":
            self.ethertype(0x86DD, yes, no)
        elif p.kind == "arp":
            self.ethertype(0x0806, yes, no)
        elif p.kind == "vlan":
            if p.value is None:
                self.emit(LD | W | ABS, SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT)
                self.emit(JMP | JEQ | K, 0, no, yes)
            else:
                present = _Label()
                self.emit(LD | W | ABS, SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT)
                self.emit(JMP | JEQ | K, 0, no, present)
                self.mark(present)
                self.emit(LD | W | ABS, SKF_AD_OFF + SKF_AD_VLAN_TAG)
                self.emit(ALU | AND_ | K, 0x0FFF)
                self.emit(JMP | JEQ | K, int(p.value), yes, no)  # type: ignore[call-overload]
        elif p.kind == "proto":
            self.proto(int(p.value), p.family, yes, no)  # type: ignore[call-overload]
        elif p.kind == "host":
            addr = p.value
            assert isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address)
            net = ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")
            self.net(net, p.direction, p.family, yes, no)
        elif p.kind == "net":
            assert isinstance(p.value, ipaddress.IPv4Network | ipaddress.IPv6Network)
            self.net(p.value, p.direction, p.family, yes, no)
        elif p.kind == "port":
            self.port(int(p.value), p.direction, yes, no)  # type: ignore[call-overload]

    def proto(self, proto: int, family: str, yes: _Label, no: _Label) -> None:
        v4, v6 = _Label(), _Label()
        self.emit(LD | H | ABS, 12)
        if family == "":
            self.emit(JMP | JEQ | K, 0x0800, v4, 0)
        if family in ("", "ip6"):
            self.emit(JMP | JEQ | K, 0x86DD, v6, no)
        else:
            self.emit(JMP | JEQ | K, 0x0800, v4, no)
        if family in ("", "ip"):
            self.mark(v4)
            self.emit(LD | B | ABS, 23)
            self.emit(JMP | JEQ | K, proto, yes, no)
        if family in ("", "ip6"):
            # As libpcap does: the header after the fixed one, or after a fragment header
            # right there (the first fragment of a TCP segment is "tcp"; so are the others).
            after_frag = _Label()
            self.mark(v6)
            self.emit(LD | B | ABS, 20)
            self.emit(JMP | JEQ | K, proto, yes, 0)
            self.emit(JMP | JEQ | K, 44, after_frag, no)
            self.mark(after_frag)
            self.emit(LD | B | ABS, 54)
            self.emit(JMP | JEQ | K, proto, yes, no)

    def net(
        self,
        net: ipaddress.IPv4Network | ipaddress.IPv6Network,
        direction: str,
        family: str,
        yes: _Label,
        no: _Label,
    ) -> None:
        # (ethertypes, offsets of the source and destination address) per frame layout.
        layouts: list[tuple[tuple[int, ...], list[int], list[int]]]
        if net.version == 4:
            layouts = [((0x0800,), [26], [30])]
            if family == "":  # libpcap: an IPv4 host is also an ARP/RARP sender or target
                layouts.append(((0x0806, 0x8035), [28], [38]))
            a, m = int(net.network_address), int(net.netmask)
            words = [(a, m)]
        else:
            layouts = [((0x86DD,), [22], [38])]
            a16 = int(net.network_address).to_bytes(16, "big")
            m16 = int(net.netmask).to_bytes(16, "big")
            words = [
                (int.from_bytes(a16[i : i + 4], "big"), int.from_bytes(m16[i : i + 4], "big"))
                for i in range(0, 16, 4)
            ]
        for n_layout, (etypes, src, dst) in enumerate(layouts):
            last_layout = n_layout == len(layouts) - 1
            layout_no = no if last_layout else _Label()
            offsets = {"src": src, "dst": dst, "": src + dst}[direction]
            matched = _Label()
            self.emit(LD | H | ABS, 12)
            for i, etype in enumerate(etypes):
                self.emit(JMP | JEQ | K, etype, matched, layout_no if i == len(etypes) - 1 else 0)
            self.mark(matched)
            self.addresses(words, offsets, yes, layout_no)
            if not last_layout:
                assert isinstance(layout_no, _Label)
                self.mark(layout_no)

    def addresses(
        self, words: list[tuple[int, int]], offsets: list[int], yes: _Label, no: _Label
    ) -> None:
        """Jump to yes when the address at any of offsets matches words (value, mask)."""
        for n_off, base in enumerate(offsets):
            last_side = n_off == len(offsets) - 1
            side_no = no if last_side else _Label()
            for i, (value, mask) in enumerate(words):
                if mask == 0:
                    continue
                self.emit(LD | W | ABS, base + 4 * i)
                if mask != 0xFFFFFFFF:
                    self.emit(ALU | AND_ | K, mask)
                self.emit(JMP | JEQ | K, value & mask, 0, side_no)
            self._goto(yes)
            if not last_side:
                assert isinstance(side_no, _Label)
                self.mark(side_no)

    def port(self, port: int, direction: str, yes: _Label, no: _Label) -> None:
        fields = {"src": [0], "dst": [2], "": [0, 2]}[direction]
        v4, v6, v4ok, v6ok = _Label(), _Label(), _Label(), _Label()
        self.emit(LD | H | ABS, 12)
        self.emit(JMP | JEQ | K, 0x0800, v4, 0)
        self.emit(JMP | JEQ | K, 0x86DD, v6, no)
        self.mark(v4)
        self.emit(LD | B | ABS, 23)
        for proto in (6, 17):
            self.emit(JMP | JEQ | K, proto, v4ok, 0)
        self.emit(JMP | JEQ | K, 132, v4ok, no)
        self.mark(v4ok)
        self.emit(LD | H | ABS, 20)
        self.emit(JMP | JSET | K, 0x1FFF, no, 0)  # a non-first fragment has no ports
        self.emit(LDX | B | MSH, 14)
        for i, f in enumerate(fields):
            self.emit(LD | H | IND, 14 + f)
            self.emit(JMP | JEQ | K, port, yes, no if i == len(fields) - 1 else 0)
        self.mark(v6)
        self.emit(LD | B | ABS, 20)
        for proto in (6, 17):
            self.emit(JMP | JEQ | K, proto, v6ok, 0)
        self.emit(JMP | JEQ | K, 132, v6ok, no)
        self.mark(v6ok)
        for i, f in enumerate(fields):
            self.emit(LD | H | ABS, 54 + f)
            self.emit(JMP | JEQ | K, port, yes, no if i == len(fields) - 1 else 0)

    def _goto(self, target: _Label) -> None:
        """Unconditional jump (JA) to target."""
        self.ops.append((JMP | 0x00, target, target, 0))

    def assemble(self) -> list[Insn]:
        # First pass: instruction indices of labels.
        idx = 0
        for op in self.ops:
            if isinstance(op, _Label):
                op.pos = idx
            else:
                idx += 1
        out: list[Insn] = []
        for op in self.ops:
            if isinstance(op, _Label):
                continue
            code, jt, jf, k = op
            here = len(out)
            if code == JMP | 0x00:  # JA: k is the offset
                assert isinstance(jt, _Label)
                out.append((code, 0, 0, _offset(jt.pos, here, 1 << 32)))
                continue
            t = _offset(jt.pos, here, 256) if isinstance(jt, _Label) else jt
            f = _offset(jf.pos, here, 256) if isinstance(jf, _Label) else jf
            out.append((code, t, f, k))
        return out


def _offset(target: int, here: int, limit: int) -> int:
    off = target - here - 1
    if not 0 <= off < limit:
        raise FilterSyntaxError("filter too long for classic BPF jumps; simplify it")
    return off


def compile_filter(
    node: Node | None, snaplen: int = 262144, own_frames_snaplen: int | None = None
) -> list[Insn]:
    """A program that returns snaplen for frames matching node (all frames if None), else 0.

    With own_frames_snaplen, frames the host transmits (PACKET_OUTGOING) are accepted first, at
    that length, before node is looked at.
    """
    comp = _Compiler()
    yes, no = _Label(), _Label()
    if own_frames_snaplen is not None:
        # Two fixed instructions up front (jf=1 skips the RET): no jump reach to budget.
        comp.emit(LD | W | ABS, SKF_AD_OFF + SKF_AD_PKTTYPE)
        comp.emit(JMP | JEQ | K, PACKET_OUTGOING, 0, 1)
        comp.emit(RET | K, own_frames_snaplen)
    if node is not None:
        comp.node(node, yes, no)
    comp.mark(yes)
    comp.emit(RET | K, snaplen)
    comp.mark(no)
    comp.emit(RET | K, 0)
    return comp.assemble()


def default_filter(own_addresses: Sequence[str], accept_non_ip: bool = False) -> Node | None:
    """IPv4/IPv6 only (unless accept_non_ip), minus frames to or from own_addresses."""
    node: Node | None = None
    for addr in own_addresses:
        # family "ip": the box's own IP traffic only. ARP naming its address is not IP
        # traffic and is left to accept_non_ip, as it always was.
        host = Prim("host", "", ipaddress.ip_address(addr), family="ip")
        node = host if node is None else Or(node, host)
    base: Node | None = Not(node) if node is not None else None
    if not accept_non_ip:
        ip_only: Node = Or(Prim("ip"), Prim("ip6"))
        base = ip_only if base is None else And(ip_only, base)
    return base


def capture_program(
    user_filter: str,
    own_addresses: Sequence[str],
    accept_non_ip: bool = False,
    snaplen: int = 262144,
) -> list[Insn]:
    """The program the capture attaches: the box's own frames (counted, module docstring),
    then default filter AND the user's."""
    base = default_filter(own_addresses, accept_non_ip)
    user = parse_filter(user_filter)
    node = user if base is None else base if user is None else And(base, user)
    return compile_filter(node, snaplen, own_frames_snaplen=min(OWN_FRAME_SNAPLEN, snaplen))


def pack_program(prog: Sequence[Insn]) -> bytes:
    """struct sock_filter[] bytes for SO_ATTACH_FILTER."""
    return b"".join(struct.pack("HBBI", *insn) for insn in prog)


def run_program(
    prog: Sequence[Insn], frame: bytes, vlan: int | None = None, pkttype: int = PACKET_HOST
) -> int:
    """Interpret prog on frame like the kernel does; returns the accepted length (0 = drop).

    vlan is the tag the kernel would report out of band (None: no tag); pkttype the frame's
    packet type (PACKET_OUTGOING: the host sent it). An out-of-bounds load ends the program
    with 0, as in the kernel.
    """
    a = x = 0
    pc = 0
    while pc < len(prog):
        code, jt, jf, k = prog[pc]
        cls = code & 0x07
        if cls in (LD, LDX):
            mode, size = code & 0xE0, code & 0x18
            if cls == LDX and mode == MSH:
                if k >= len(frame):
                    return 0
                x = (frame[k] & 0x0F) * 4
            elif mode == IMM:
                if cls == LD:
                    a = k
                else:
                    x = k
            else:
                off = k if mode == ABS else x + k
                if off >= 0x80000000:  # ancillary (SKF_AD_OFF + n)
                    n = off - (SKF_AD_OFF & 0xFFFFFFFF)
                    if n == SKF_AD_PKTTYPE:
                        a = pkttype
                    elif n == SKF_AD_VLAN_TAG_PRESENT:
                        a = int(vlan is not None)
                    elif n == SKF_AD_VLAN_TAG:
                        a = vlan or 0
                    else:
                        return 0
                else:
                    width = {W: 4, H: 2, B: 1}[size]
                    if off + width > len(frame):
                        return 0
                    a = int.from_bytes(frame[off : off + width], "big")
        elif cls == ALU:
            if code & 0xF0 == AND_:
                a &= k
            else:
                raise ValueError(f"unsupported ALU op {code:#x}")
        elif cls == JMP:
            op = code & 0xF0
            if op == 0x00:
                pc += k
            elif op == JEQ:
                pc += jt if a == k else jf
            elif op == JSET:
                pc += jt if a & k else jf
            else:
                raise ValueError(f"unsupported jump {code:#x}")
        elif cls == RET:
            return k
        pc += 1
    return 0
