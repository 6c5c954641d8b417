"""IPFIX messages for stored flows: a pure codec (bytes in, bytes out; no sockets, no clock).

The layout (RFC 7011 section 3; every integer in network byte order):

- **Message** = header (16 bytes) + one or more sets. Header: version u16 = 10, length u16 (the
  whole message, header included; at most 65,535), export time u32 (UNIX seconds), sequence
  number u32, observation domain id u32.
- **Sequence number**: data records sent before this message in the same transport session
  for the same observation domain, modulo 2^32 (section 3.1). Template and options template
  records do not count; options *data* records do. `Domain` below keeps the counter.
- **Set** = set id u16, length u16 (header included), records. Set id 2 is a template set, 3 an
  options template set, 256 and above a data set of that template. We never pad: every record
  is written whole, so a set ends where its last record does (padding is optional, 3.3.1).
- **Template record** = template id u16 (>= 256), field count u16, field specifiers.
  **Options template record** = template id, field count, scope field count (> 0), specifiers
  (scope fields first).
- **Field specifier** = IE id u16 (top bit: enterprise bit), length u16 (65535: variable),
  then the private enterprise number u32 when the enterprise bit is set. Reverse IEs of a biflow
  (RFC 5103) are the forward IE's number under PEN 29305.
- **Variable-length fields** (only the options records' names): one length byte, or 255 and a
  u16 length for 255 bytes and more (7.1).

What we send (the information elements and the mapping of our fields are tabled in
docs/EXPORT.md):

| id | template | records |
|---|---|---|
| 256 | IPv4 biflow (RFC 5103: forward = initiator, reverse IEs = responder) | one per flow |
| 257 | IPv6 biflow | one per flow |
| 258 | IPv4 uniflow | initiator -> responder, then responder -> initiator when it sent packets |
| 259 | IPv6 uniflow | likewise |
| 260 | options, scope observationDomainId: observationDomainName = the agent id | one per domain |
| 261 | options, scope ingressInterface: interfaceName = the capture interface | one per interface |

Every data template is fixed-length, so a record's size is known before it is written: a
message is filled to the byte (`MessageBuilder`).
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

VERSION = 10
HEADER = struct.Struct("!HHIII")
SET_HEADER = struct.Struct("!HH")
TEMPLATE_SET_ID = 2
OPTIONS_TEMPLATE_SET_ID = 3
MAX_MESSAGE_BYTES = 65535
#: RFC 5103: the reverse of an IANA IE is the same number under this enterprise number.
REVERSE_PEN = 29305
VARIABLE = 0xFFFF


@dataclass(frozen=True)
class IE:
    """One field specifier: an information element, its encoded length, its enterprise."""

    name: str
    id: int
    length: int
    pen: int = 0

    def spec(self) -> bytes:
        if self.pen:
            return struct.pack("!HHI", self.id | 0x8000, self.length, self.pen)
        return struct.pack("!HH", self.id, self.length)

    def reverse(self) -> IE:
        return IE(
            "reverse" + self.name[0].upper() + self.name[1:], self.id, self.length, REVERSE_PEN
        )


# The IANA elements we use (RFC 7012 / the IANA IPFIX registry), at the lengths we send.
OCTETS = IE("octetDeltaCount", 1, 8)
PACKETS = IE("packetDeltaCount", 2, 8)
PROTOCOL = IE("protocolIdentifier", 4, 1)
TCP_FLAGS = IE("tcpControlBits", 6, 2)  # RFC 7125: 16 bits, the low 12 are the header's
SRC_PORT = IE("sourceTransportPort", 7, 2)
SRC_V4 = IE("sourceIPv4Address", 8, 4)
INGRESS_IF = IE("ingressInterface", 10, 4)
DST_PORT = IE("destinationTransportPort", 11, 2)
DST_V4 = IE("destinationIPv4Address", 12, 4)
SRC_V6 = IE("sourceIPv6Address", 27, 16)
DST_V6 = IE("destinationIPv6Address", 28, 16)
ICMP_V4 = IE("icmpTypeCodeIPv4", 32, 2)
VLAN = IE("vlanId", 58, 2)
INTERFACE_NAME = IE("interfaceName", 82, VARIABLE)
END_REASON = IE("flowEndReason", 136, 1)
ICMP_V6 = IE("icmpTypeCodeIPv6", 139, 2)
DOMAIN_ID = IE("observationDomainId", 149, 4)
START_MS = IE("flowStartMilliseconds", 152, 8)
END_MS = IE("flowEndMilliseconds", 153, 8)
BIFLOW_DIRECTION = IE("biflowDirection", 239, 1)
DOMAIN_NAME = IE("observationDomainName", 300, VARIABLE)

#: biflowDirection value: the forward direction is the flow's initiator (RFC 5103, 6.3).
INITIATOR = 1


class Mode(enum.Enum):
    """How a flow leaves: one RFC 5103 biflow record, or one uniflow record per direction."""

    BIFLOW = "biflow"
    UNIFLOW = "uniflow"


class EndReason(enum.IntEnum):
    """flowEndReason values (IANA): what our meter's end reasons become."""

    IDLE_TIMEOUT = 1
    ACTIVE_TIMEOUT = 2
    END_OF_FLOW = 3
    FORCED_END = 4
    LACK_OF_RESOURCES = 5


#: FlowEvent.EndReason (appliance/wire) -> flowEndReason; UNSPECIFIED (0) is sent as 0.
END_REASONS = {
    1: EndReason.IDLE_TIMEOUT,  # IDLE_TIMEOUT
    2: EndReason.ACTIVE_TIMEOUT,  # ACTIVE_TIMEOUT
    3: EndReason.END_OF_FLOW,  # TCP_FIN
    4: EndReason.END_OF_FLOW,  # TCP_RST
    5: EndReason.LACK_OF_RESOURCES,  # EVICTED: the bounded flow table was full
    6: EndReason.FORCED_END,  # SHUTDOWN: the meter stopped
}


@dataclass(frozen=True)
class Template:
    """A template (options template when scope > 0) and its id."""

    id: int
    fields: tuple[IE, ...]
    scope: int = 0

    def record(self) -> bytes:
        if self.scope:
            head = struct.pack("!HHH", self.id, len(self.fields), self.scope)
        else:
            head = struct.pack("!HH", self.id, len(self.fields))
        return head + b"".join(f.spec() for f in self.fields)

    @property
    def record_bytes(self) -> int:
        """The size of one data record (fixed-length templates only)."""
        assert all(f.length != VARIABLE for f in self.fields)
        return sum(f.length for f in self.fields)


def _flow_fields(v6: bool, biflow: bool) -> tuple[IE, ...]:
    head = (SRC_V6, DST_V6) if v6 else (SRC_V4, DST_V4)
    counts = (OCTETS, PACKETS) + ((OCTETS.reverse(), PACKETS.reverse()) if biflow else ())
    # The reverse flags go first: nfdump 1.7 keeps one flags field per record and the last of
    # the two it reads wins, and the initiator's flags are the ones its users expect there.
    flags = ((TCP_FLAGS.reverse(),) if biflow else ()) + (TCP_FLAGS,)
    tail = (BIFLOW_DIRECTION,) if biflow else ()
    icmp = ICMP_V6 if v6 else ICMP_V4
    return (
        *head, SRC_PORT, DST_PORT, PROTOCOL, *counts, START_MS, END_MS, VLAN, *flags, icmp,
        END_REASON, INGRESS_IF, *tail,
    )  # fmt: skip


V4_BIFLOW = Template(256, _flow_fields(v6=False, biflow=True))
V6_BIFLOW = Template(257, _flow_fields(v6=True, biflow=True))
V4_UNIFLOW = Template(258, _flow_fields(v6=False, biflow=False))
V6_UNIFLOW = Template(259, _flow_fields(v6=True, biflow=False))
DOMAIN_OPTIONS = Template(260, (DOMAIN_ID, DOMAIN_NAME), scope=1)
INTERFACE_OPTIONS = Template(261, (INGRESS_IF, INTERFACE_NAME), scope=1)
FLOW_TEMPLATES = {Mode.BIFLOW: (V4_BIFLOW, V6_BIFLOW), Mode.UNIFLOW: (V4_UNIFLOW, V6_UNIFLOW)}

_V4_BI = struct.Struct("!4s4sHHBQQQQQQHHHHBIB")
_V6_BI = struct.Struct("!16s16sHHBQQQQQQHHHHBIB")
_V4_UNI = struct.Struct("!4s4sHHBQQQQHHHBI")
_V6_UNI = struct.Struct("!16s16sHHBQQQQHHHBI")
assert _V4_BI.size == V4_BIFLOW.record_bytes and _V6_BI.size == V6_BIFLOW.record_bytes
assert _V4_UNI.size == V4_UNIFLOW.record_bytes and _V6_UNI.size == V6_UNIFLOW.record_bytes


@dataclass(frozen=True, slots=True)
class Flow:
    """One stored, verified flow as it leaves: what the data records are made of.

    `src` is the initiator. Addresses are packed (4 or 16 bytes). `icmp` is type << 8 | code
    (0 for other protocols); `end_reason` is the FlowEvent value (0-6).
    """

    record_id: int
    agent_id: str
    src: bytes
    dst: bytes
    src_port: int
    dst_port: int
    protocol: int
    octets_tx: int
    packets_tx: int
    octets_rx: int
    packets_rx: int
    start_ms: int
    end_ms: int
    vlan: int = 0
    flags_tx: int = 0
    flags_rx: int = 0
    icmp: int = 0
    end_reason: int = 0
    interface: str = ""
    received_ns: int = 0

    @property
    def v6(self) -> bool:
        return len(self.src) == 16


def encode_flow(flow: Flow, mode: Mode, ifindex: int) -> list[tuple[Template, bytes]]:
    """The data records of one flow: one biflow record, or one or two uniflow records."""
    reason = int(END_REASONS.get(flow.end_reason, 0))
    f = flow
    if mode is Mode.BIFLOW:
        tpl, st = (V6_BIFLOW, _V6_BI) if f.v6 else (V4_BIFLOW, _V4_BI)
        values = (
            f.src, f.dst, f.src_port, f.dst_port, f.protocol, f.octets_tx, f.packets_tx,
            f.octets_rx, f.packets_rx, f.start_ms, f.end_ms, f.vlan, f.flags_rx, f.flags_tx,
            f.icmp, reason, ifindex, INITIATOR,
        )  # fmt: skip
        return [(tpl, st.pack(*values))]
    tpl, st = (V6_UNIFLOW, _V6_UNI) if f.v6 else (V4_UNIFLOW, _V4_UNI)
    forward = (
        f.src, f.dst, f.src_port, f.dst_port, f.protocol, f.octets_tx, f.packets_tx,
        f.start_ms, f.end_ms, f.vlan, f.flags_tx, f.icmp, reason, ifindex,
    )  # fmt: skip
    out = [(tpl, st.pack(*forward))]
    if f.packets_rx:
        # The responder's half: ports swapped; one ICMP type/code per flow is stored (the
        # initiator's), so the reverse record carries 0 there.
        reverse = (
            f.dst, f.src, f.dst_port, f.src_port, f.protocol, f.octets_rx, f.packets_rx,
            f.start_ms, f.end_ms, f.vlan, f.flags_rx, 0, reason, ifindex,
        )  # fmt: skip
        out.append((tpl, st.pack(*reverse)))
    return out


def _varlen(data: bytes) -> bytes:
    if len(data) < 255:
        return bytes([len(data)]) + data
    return b"\xff" + struct.pack("!H", len(data)) + data


#: Names in options records are cut to this many bytes, so that templates, the domain's name and
#: a flow always fit in a message of MIN_MESSAGE_BYTES (agent ids and interface names are far
#: shorter: the bus refuses interface names over 64 bytes).
MAX_NAME_BYTES = 200
MIN_MESSAGE_BYTES = 512


def domain_record(domain_id: int, name: str) -> bytes:
    """An options data record (template 260): this domain is agent `name`."""
    return struct.pack("!I", domain_id) + _varlen(name.encode()[:MAX_NAME_BYTES])


def interface_record(ifindex: int, name: str) -> bytes:
    """An options data record (template 261): ingressInterface `ifindex` is named `name`."""
    return struct.pack("!I", ifindex) + _varlen(name.encode()[:MAX_NAME_BYTES])


def template_set(templates: Sequence[Template]) -> bytes:
    """A set of (options) templates, all of the same kind."""
    set_id = OPTIONS_TEMPLATE_SET_ID if templates[0].scope else TEMPLATE_SET_ID
    body = b"".join(t.record() for t in templates)
    return SET_HEADER.pack(set_id, SET_HEADER.size + len(body)) + body


def data_set(template_id: int, records: Sequence[bytes]) -> bytes:
    body = b"".join(records)
    return SET_HEADER.pack(template_id, SET_HEADER.size + len(body)) + body


def message(domain_id: int, sequence: int, export_s: int, sets: Iterable[bytes]) -> bytes:
    """One IPFIX message: header + sets."""
    body = b"".join(sets)
    length = HEADER.size + len(body)
    if length > MAX_MESSAGE_BYTES:
        raise ValueError(f"an IPFIX message of {length} bytes exceeds {MAX_MESSAGE_BYTES}")
    return (
        HEADER.pack(VERSION, length, export_s & 0xFFFFFFFF, sequence & 0xFFFFFFFF, domain_id) + body
    )


def templates_for(mode: Mode) -> list[bytes]:
    """The template sets a session needs before any data of `mode`."""
    return [template_set(FLOW_TEMPLATES[mode]), template_set([DOMAIN_OPTIONS, INTERFACE_OPTIONS])]


# -- identity: observation domains and interface indexes ----------------------------------------


def stable_id(text: str) -> int:
    """A 31-bit number from text, never 0: the first 4 bytes of BLAKE2b-32(text) mod (2^31-1),
    plus 1. The same on every bus and every version, so collectors keep their history."""
    digest = hashlib.blake2b(text.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % 0x7FFFFFFF + 1


@dataclass(frozen=True)
class Identity:
    """Agent id -> observation domain id, interface name -> ingressInterface.

    Configured maps win; anything unmapped gets `stable_id` of its name (an interface with no
    name, 0).
    """

    domains: Mapping[str, int] = field(default_factory=dict)
    interfaces: Mapping[str, int] = field(default_factory=dict)

    def domain(self, agent_id: str) -> int:
        configured = self.domains.get(agent_id)
        return configured if configured is not None else stable_id(agent_id)

    def ifindex(self, name: str) -> int:
        if not name:
            return 0
        configured = self.interfaces.get(name)
        return configured if configured is not None else stable_id(name)


# -- packing records into messages --------------------------------------------------------------


@dataclass
class Domain:
    """One observation domain's state within one transport session."""

    id: int
    agent_id: str
    sequence: int = 0
    #: Templates must be (re)sent before the next data record (new session, refresh due).
    templates_due: bool = True
    interfaces_sent: set[int] = field(default_factory=set)
    messages_since_templates: int = 0
    templates_sent_s: float = 0.0


@dataclass
class Message:
    """An encoded message and the store record ids whose data it carries (whole flows only)."""

    data: bytes
    record_ids: list[int]
    data_records: int


class MessageBuilder:
    """Fills messages of at most `max_bytes` for one domain: templates first when due, options
    records for names the session has not seen, then data sets, never splitting a flow (its
    one or two records) across messages."""

    def __init__(self, mode: Mode, max_bytes: int, refresh_messages: int | None = None) -> None:
        if not MIN_MESSAGE_BYTES <= max_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(
                f"max_bytes {max_bytes} must be {MIN_MESSAGE_BYTES}..{MAX_MESSAGE_BYTES}"
            )
        self.mode = mode
        self.max_bytes = max_bytes
        #: UDP: templates go again in the message after this many of a domain's messages.
        self.refresh_messages = refresh_messages

    def build(
        self,
        domain: Domain,
        flows: Sequence[Flow],
        identity: Identity,
        export_s: int,
    ) -> list[Message]:
        """Messages carrying every flow of `flows` (all of this domain), in order."""
        out: list[Message] = []
        i = 0
        while i < len(flows) or (not flows and domain.templates_due):
            sets: list[bytes] = []
            size = HEADER.size
            if (
                self.refresh_messages is not None
                and domain.messages_since_templates >= self.refresh_messages
            ):
                domain.templates_due = True
            if domain.templates_due:
                sets += templates_for(self.mode)
                sets.append(
                    data_set(DOMAIN_OPTIONS.id, [domain_record(domain.id, domain.agent_id)])
                )
                size += sum(len(s) for s in sets)
                domain.interfaces_sent.clear()
                domain.templates_due = False
                domain.messages_since_templates = 0
            ids: list[int] = []
            current: int | None = None  # template id of the open data set
            records: list[bytes] = []
            # options data records are data records too: they count in the sequence number
            count = 1 if sets else 0
            while i < len(flows):
                flow = flows[i]
                ifindex = identity.ifindex(flow.interface)
                extra: list[bytes] = []
                if flow.interface and ifindex not in domain.interfaces_sent:
                    extra.append(
                        data_set(INTERFACE_OPTIONS.id, [interface_record(ifindex, flow.interface)])
                    )
                encoded = encode_flow(flow, self.mode, ifindex)
                tpl = encoded[0][0]
                need = sum(len(e) for e in extra) + sum(len(r) for _, r in encoded)
                if tpl.id != current or extra:
                    need += SET_HEADER.size
                if size + need > self.max_bytes and (ids or sets):
                    break
                if extra or tpl.id != current:
                    if records:
                        assert current is not None
                        sets.append(data_set(current, records))
                    records = []
                    sets += extra
                    current = tpl.id
                    size += SET_HEADER.size
                    if extra:
                        domain.interfaces_sent.add(ifindex)
                        size += sum(len(e) for e in extra)
                        count += len(extra)
                records += [r for _, r in encoded]
                size += sum(len(r) for _, r in encoded)
                ids.append(flow.record_id)
                count += len(encoded)
                i += 1
            if records:
                assert current is not None
                sets.append(data_set(current, records))
            out.append(Message(message(domain.id, domain.sequence, export_s, sets), ids, count))
            domain.sequence = (domain.sequence + count) & 0xFFFFFFFF
            domain.messages_since_templates += 1
            if not flows:
                break
        return out


def pack_address(text: str) -> bytes:
    """Textual IPv4 or IPv6 -> 4 or 16 bytes."""
    return ipaddress.ip_address(text).packed
