"""The compiled record walk and JSON writer (appliance/capture/_fastpath.c) make exactly what
the pure-Python code they replace makes, on the same inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q
from testsupport.capture_helpers import T0, eth, frame_bytes

from appliance.capture import _fastpath
from appliance.capture.decode import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    Decoder,
    FrameBatch,
    PacketColumns,
)
from appliance.capture.flows import FLOW_COLUMNS, FlowBatch
from appliance.capture.offline import iter_pcap_ordered, meter_pcap
from appliance.capture.pcap import PcapReader
from appliance.devkit.capture.synth import generate


@pytest.fixture(scope="module")
def synth_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fastpath") / "synth.pcap"
    generate(path, seed=11, packets=30_000, flows=1_500)
    return path


def test_native_walk_finds_the_records_the_python_walk_finds(synth_capture: Path) -> None:
    buf = bytearray(synth_capture.read_bytes()[24:])
    end = len(buf) - 7  # cut inside the last record: both must stop before it
    for limit in (1, 5, 1000, 10**9):
        want, want_pos = PcapReader._walk_le(buf, 0, end, limit)
        got, got_pos = PcapReader._walk_native(buf, 0, end, limit)
        assert list(got) == want and got_pos == want_pos


def test_native_walk_refuses_an_output_too_short() -> None:
    buf = bytearray(16 * 4)  # four records of caplen 0
    with pytest.raises(ValueError, match="too short"):
        _fastpath.walk_le(buf, 0, len(buf), 10, np.empty(2, dtype=np.int64))


def test_native_json_lines_equal_json_dumps_of_every_record(synth_capture: Path) -> None:
    flows, _ = meter_pcap(synth_capture)
    assert {"TCP", "UDP", "ICMP", "ICMPV6"} <= set(flows.totals_by_proto())
    # Both initiator sides, IPv4 and IPv6, ICMP keys with and without an echo id, odd protocols
    # and every end reason.
    cols = dict(flows.cols)
    n = len(flows)
    cols["init_b"] = np.arange(n) % 2 == 0
    cols["proto"] = cols["proto"].copy()
    cols["proto"][:7] = [132, 47, 200, 1, 58, 1, 58]
    cols["port_a"] = cols["port_a"].copy()
    cols["port_a"][3:5] = 0x10000 | 0x0800
    cols["reason"] = (np.arange(n) % 6 + 1).astype(np.uint8)
    batch = FlowBatch(cols)
    assert batch.json_lines() == batch.json_lines_python()
    # Non-contiguous columns (a slice with a step) are copied, not misread.
    stepped = batch.take(slice(1, None, 3))
    assert stepped.json_lines() == stepped.json_lines_python()
    assert FlowBatch.empty().json_lines() == b""


def test_native_json_refuses_an_unknown_end_reason() -> None:
    cols = {k: np.zeros(1, dtype=t) for k, t in FLOW_COLUMNS.items()}
    cols["reason"][0] = 9
    with pytest.raises(ValueError, match="9 is not a valid EndReason"):
        FlowBatch(cols).json_lines()
    with pytest.raises(ValueError, match="9 is not a valid EndReason"):
        FlowBatch(cols).json_lines_python()


def test_ordered_batches_hold_every_flow_once_in_end_order(synth_capture: Path) -> None:
    flows, _ = meter_pcap(synth_capture)
    parts = [
        b for b in iter_pcap_ordered(synth_capture, batch_size=2048) if isinstance(b, FlowBatch)
    ]
    ordered = FlowBatch.concat(parts)
    assert len(ordered) == len(flows)
    key = list(zip(ordered.cols["end_ns"].tolist(), ordered.cols["start_ns"].tolist(), strict=True))
    assert key == sorted(key)
    assert ordered.totals_by_proto() == flows.totals_by_proto()


def _decode(batches: list[FrameBatch], vectorised: bool, native: bool) -> PacketColumns:
    dec = Decoder(vectorised=vectorised, native=native)
    return PacketColumns.concat([dec.decode(b) for b in batches])


def _same_columns(a: PacketColumns, b: PacketColumns) -> None:
    for name in PacketColumns.__dataclass_fields__:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def _odd_frames() -> list[bytes]:
    frames = [
        eth() / IP(src="192.0.2.1", dst="192.0.2.2", options=[IPOption_RR()]) / TCP(dport=22),
        eth() / Dot1Q(vlan=99) / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=9),
        eth() / Dot1Q(vlan=5) / Dot1Q(vlan=6) / IP(src="192.0.2.7", dst="192.0.2.1") / UDP(),
        eth() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / UDP(),
        eth() / IPv6(src="2001:db8::2", dst="2001:db8::1") / ICMPv6EchoRequest(id=3),
        eth() / IP(src="192.0.2.1", dst="192.0.2.2") / ICMP(type=3, code=1) / IP() / UDP(),
        eth() / IP(src="192.0.2.2", dst="192.0.2.1") / ICMP(type=0, id=77),
        eth() / IP(src="192.0.2.2", dst="192.0.2.1", proto=58) / b"abcdefgh",
        eth() / IP(src="192.0.2.2", dst="192.0.2.1", proto=47) / b"gre",
        eth() / IP(src="192.0.2.2", dst="192.0.2.2") / TCP(sport=9, dport=8, flags="FA"),
        eth(dst="ff:ff:ff:ff:ff:ff") / ARP(),
        eth() / Dot1Q(vlan=3) / ARP(),
        *[eth() / f for f in fragment(IP(dst="192.0.2.9") / UDP(dport=4) / (b"f" * 2000), 800)],
    ]
    out = [frame_bytes(f) for f in frames]
    tcp = frame_bytes(eth() / IP(src="192.0.2.3", dst="192.0.2.4") / TCP(flags="S"))
    out += [tcp[:n] for n in (10, 14, 20, 33, 34, 40, 47)]  # cut at every header boundary
    out.append(frame_bytes(eth() / IP(src="192.0.2.3", dst="192.0.2.4", version=5) / UDP()))
    return out


def _batch(
    frames: list[bytes], linktype: int = LINKTYPE_ETHERNET, vlan: bool = False
) -> FrameBatch:
    offsets = np.cumsum([0] + [len(f) for f in frames[:-1]]).astype(np.int64)
    return FrameBatch(
        data=np.frombuffer(b"".join(frames) + bytes(128), dtype=np.uint8),
        offsets=offsets,
        caplen=np.array([len(f) for f in frames], dtype=np.int64),
        ts_ns=T0 + np.arange(len(frames), dtype=np.int64),
        vlan=(np.arange(len(frames)) % 5).astype(np.uint16) if vlan else None,
        linktype=linktype,
    )


def test_native_decode_equals_numpy_and_reference_on_odd_frames() -> None:
    frames = _odd_frames()
    for vlan in (False, True):
        batches = [_batch(frames, vlan=vlan)]
        native = Decoder(native=True)
        got = PacketColumns.concat([native.decode(b) for b in batches])
        numpy_path = Decoder(native=False)
        _same_columns(got, PacketColumns.concat([numpy_path.decode(b) for b in batches]))
        _same_columns(got, _decode(batches, vectorised=False, native=False))
        assert native.stats.non_ip == numpy_path.stats.non_ip == {0x0806: 2}
        assert native.stats.malformed == numpy_path.stats.malformed > 0
        assert native.stats.fragments == numpy_path.stats.fragments == 3
    # Linux cooked v1 and v2: the same frames behind an SLL header (EtherType in its
    # protocol field, a tag the kernel stripped put back behind it, as libpcap does).
    for linktype, head in ((LINKTYPE_LINUX_SLL, bytes(14)), (LINKTYPE_LINUX_SLL2, b"")):
        cooked = []
        for f in frames:
            if linktype == LINKTYPE_LINUX_SLL:
                cooked.append(head + f[12:])  # 14 bytes, then the protocol (EtherType) ...
            else:
                cooked.append(f[12:14] + bytes(18) + f[14:])  # protocol first, 20 bytes
        batches = [_batch(cooked, linktype)]
        native, numpy_path = Decoder(native=True), Decoder(native=False)
        got = native.decode(batches[0])
        _same_columns(got, numpy_path.decode(batches[0]))
        _same_columns(got, _decode(batches, vectorised=False, native=False))
        assert native.stats.non_ip == numpy_path.stats.non_ip
        assert len(got) > 10
    raw = [bytes(p.build()) for p in (IP(src="192.0.2.1") / UDP(), IPv6() / TCP(), IP() / ICMP())]
    raw.append(b"\x70" + bytes(40))  # IP version 7: malformed
    batches = [_batch(raw, LINKTYPE_RAW)]
    _same_columns(_decode(batches, True, True), _decode(batches, False, False))


def test_native_decode_equals_numpy_on_the_synthetic_capture(synth_capture: Path) -> None:
    with PcapReader(synth_capture, batch_size=3000) as reader:
        cols = {native: Decoder(native=native) for native in (True, False)}
        for batch in reader.batches():
            _same_columns(cols[True].decode(batch), cols[False].decode(batch))
    assert cols[True].stats.slow_path == 0 and cols[True].stats.metered == 29_970
