"""The IPFIX codec against an independent decoder (python-ipfix, written from RFC 7011/5103 by
one of its authors): whatever flows go in, the decoded records say exactly the same."""

from __future__ import annotations

import datetime as dt
import ipaddress
import struct
from typing import Any

import ipfix.ie
import ipfix.message
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.bus.export.ipfix import (
    END_REASONS,
    HEADER,
    INITIATOR,
    Domain,
    Flow,
    Identity,
    MessageBuilder,
    Mode,
    stable_id,
)

ipfix.ie.use_iana_default()
ipfix.ie.use_5103_default()

U64 = st.integers(0, 2**63 - 1)
MS = st.integers(0, 2**43)


@st.composite
def flows(draw: Any, record_id: int = 1) -> Flow:
    v6 = draw(st.booleans())
    size = 16 if v6 else 4
    start = draw(MS)
    return Flow(
        record_id=record_id,
        agent_id=draw(st.sampled_from(["branch-1", "branch-2"])),
        src=draw(st.binary(min_size=size, max_size=size)),
        dst=draw(st.binary(min_size=size, max_size=size)),
        src_port=draw(st.integers(0, 65535)),
        dst_port=draw(st.integers(0, 65535)),
        protocol=draw(st.integers(0, 255)),
        octets_tx=draw(U64),
        packets_tx=draw(U64),
        octets_rx=draw(U64),
        packets_rx=draw(U64),
        start_ms=start,
        end_ms=start + draw(st.integers(0, 10**9)),
        vlan=draw(st.integers(0, 4095)),
        flags_tx=draw(st.integers(0, 0xFFF)),
        flags_rx=draw(st.integers(0, 0xFFF)),
        icmp=draw(st.integers(0, 0xFFFF)),
        end_reason=draw(st.integers(0, 6)),
        interface=draw(st.sampled_from(["", "eth1", "eth2", "x" * 300])),
    )


def decode(messages: list[bytes]) -> list[tuple[int, int, dict[str, Any]]]:
    """Every data record as (domain, message sequence number, fields), in order."""
    buf = ipfix.message.MessageBuffer()
    out = []
    for data in messages:
        buf.from_bytes(data)
        assert buf.length == len(data)
        out += [(buf.odid, buf.sequence, rec) for rec in buf.namedict_iterator()]
    return out


def _ms(value: dt.datetime) -> int:
    return round(value.replace(tzinfo=dt.UTC).timestamp() * 1000)


def _addr(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(raw)


def _check_biflow(rec: dict[str, Any], f: Flow, ifindex: int) -> None:
    v = "IPv6" if f.v6 else "IPv4"
    assert rec[f"source{v}Address"] == _addr(f.src)
    assert rec[f"destination{v}Address"] == _addr(f.dst)
    assert (rec["sourceTransportPort"], rec["destinationTransportPort"]) == (f.src_port, f.dst_port)
    assert rec["protocolIdentifier"] == f.protocol
    assert (rec["octetDeltaCount"], rec["packetDeltaCount"]) == (f.octets_tx, f.packets_tx)
    assert (rec["reverseOctetDeltaCount"], rec["reversePacketDeltaCount"]) == (
        f.octets_rx,
        f.packets_rx,
    )
    assert (_ms(rec["flowStartMilliseconds"]), _ms(rec["flowEndMilliseconds"])) == (
        f.start_ms,
        f.end_ms,
    )
    assert rec["vlanId"] == f.vlan
    assert (rec["tcpControlBits"], rec["reverseTcpControlBits"]) == (f.flags_tx, f.flags_rx)
    assert rec[f"icmpTypeCode{v}"] == f.icmp
    assert rec["flowEndReason"] == int(END_REASONS.get(f.end_reason, 0))
    assert rec["ingressInterface"] == ifindex
    assert rec["biflowDirection"] == INITIATOR


@settings(max_examples=300, deadline=None)
@given(st.lists(flows(), min_size=1, max_size=60), st.sampled_from([512, 600, 1400, 65535]))
def test_biflow_records_decode_to_the_flows(batch: list[Flow], max_bytes: int) -> None:
    batch = [Flow(**{**_fields(f), "record_id": i}) for i, f in enumerate(batch)]
    identity = Identity()
    domain = Domain(7, "branch-1")
    messages = MessageBuilder(Mode.BIFLOW, max_bytes).build(domain, batch, identity, 1)
    assert all(len(m.data) <= max_bytes for m in messages)
    assert [i for m in messages for i in m.record_ids] == [f.record_id for f in batch]
    records = decode([m.data for m in messages])
    flows_out = [r for r in records if "octetDeltaCount" in r[2]]
    assert len(flows_out) == len(batch)
    for (_, _, rec), f in zip(flows_out, batch, strict=True):
        _check_biflow(rec, f, identity.ifindex(f.interface))
    names = {r["observationDomainName"] for _, _, r in records if "observationDomainName" in r}
    assert names == {"branch-1"}
    interfaces = {
        (r["ingressInterface"], r["interfaceName"]) for _, _, r in records if "interfaceName" in r
    }
    want = {(identity.ifindex(f.interface), f.interface[:200]) for f in batch if f.interface}
    assert interfaces == want
    # RFC 7011 3.1: each message's sequence number counts the data records before it
    seen = 0
    for m in messages:
        assert struct.unpack_from("!I", m.data, 8)[0] == seen
        seen += m.data_records
    assert domain.sequence == seen == len(records)


@settings(max_examples=150, deadline=None)
@given(st.lists(flows(), min_size=1, max_size=40))
def test_uniflow_records_are_one_per_direction(batch: list[Flow]) -> None:
    messages = MessageBuilder(Mode.UNIFLOW, 1400).build(Domain(9, "b"), batch, Identity(), 1)
    records = [r for _, _, r in decode([m.data for m in messages]) if "octetDeltaCount" in r]
    want = []
    for f in batch:
        v = "IPv6" if f.v6 else "IPv4"
        want.append((_addr(f.src), _addr(f.dst), f.src_port, f.octets_tx, f.packets_tx, v))
        if f.packets_rx:
            want.append((_addr(f.dst), _addr(f.src), f.dst_port, f.octets_rx, f.packets_rx, v))
    got = []
    for r in records:
        v = "IPv6" if "sourceIPv6Address" in r else "IPv4"
        got.append(
            (r[f"source{v}Address"], r[f"destination{v}Address"], r["sourceTransportPort"],
             r["octetDeltaCount"], r["packetDeltaCount"], v)
        )  # fmt: skip
        assert "reverseOctetDeltaCount" not in r
    assert got == want


def test_templates_come_again_after_refresh_messages() -> None:
    f = Flow(1, "a", b"\xc0\x00\x02\x01", b"\xc0\x00\x02\x02", 1, 2, 17, 10, 1, 0, 0, 0, 0)
    builder = MessageBuilder(Mode.BIFLOW, 512, refresh_messages=3)
    domain = Domain(1, "a")
    sets = []
    for _ in range(7):
        (m,) = builder.build(domain, [f], Identity(), 1)
        sets.append(struct.unpack_from("!H", m.data, HEADER.size)[0])
    assert sets == [2, 256, 256, 2, 256, 256, 2]


def test_stable_ids_are_never_zero_and_do_not_change() -> None:
    assert stable_id("branch-0042") == stable_id("branch-0042") != stable_id("branch-0043")
    assert all(1 <= stable_id(str(i)) < 2**31 for i in range(1000))
    assert Identity({"a": 5}, {"eth1": 2}).domain("a") == 5
    assert Identity({"a": 5}, {"eth1": 2}).ifindex("eth1") == 2
    assert Identity().ifindex("") == 0


def _fields(f: Flow) -> dict[str, Any]:
    return {name: getattr(f, name) for name in Flow.__slots__}
