"""Interface counter deltas: baseline, reset, 32-bit wrap, interfaces coming and going."""

from __future__ import annotations

from appliance.capture.counters import (
    COUNTER_FIELDS,
    CounterTracker,
    RawStats,
    counter_delta,
)

S = 1_000_000_000


def raw(name: str, index: int, **values: int) -> RawStats:
    counters = {k: 0 for k in (*COUNTER_FIELDS, "multicast")}
    counters.update(values)
    return RawStats(ifname=name, ifindex=index, oper_up=True, counters=counters)


def test_first_sample_is_a_baseline_then_deltas_follow() -> None:
    t = CounterTracker()
    first = t.update(10 * S, [raw("eth0", 2, rx_bytes=1000, rx_packets=10)])
    assert first.interfaces[0].deltas["rx_bytes"] == 0 and first.interval_ms == 0
    second = t.update(11 * S, [raw("eth0", 2, rx_bytes=1500, rx_packets=14)])
    s = second.interfaces[0]
    assert (s.deltas["rx_bytes"], s.deltas["rx_packets"], s.reset) == (500, 4, False)
    assert second.interval_ms == 1000


def test_counter_going_down_is_a_reset_counted_from_zero() -> None:
    t = CounterTracker()
    t.update(0, [raw("eth0", 2, tx_bytes=10**12)])
    s = t.update(S, [raw("eth0", 2, tx_bytes=300)]).interfaces[0]
    assert (s.deltas["tx_bytes"], s.reset) == (300, True)


def test_32_bit_wrap_is_not_a_reset() -> None:
    assert counter_delta(2**32 - 100, 50) == (150, False)
    assert counter_delta(2**40, 50) == (50, True)
    assert counter_delta(5, 5) == (0, False)


def test_interface_that_disappears_and_comes_back_starts_a_new_baseline() -> None:
    t = CounterTracker()
    t.update(0, [raw("eth0", 2, rx_bytes=100), raw("veth9", 9, rx_bytes=100)])
    gone = t.update(S, [raw("eth0", 2, rx_bytes=150)])
    assert [s.ifname for s in gone.interfaces] == ["eth0"]
    back = t.update(2 * S, [raw("eth0", 2, rx_bytes=150), raw("veth9", 11, rx_bytes=7)])
    veth = back.interfaces[1]
    assert (veth.ifindex, veth.deltas["rx_bytes"], veth.reset) == (11, 0, False)


def test_watch_list_limits_the_interfaces_and_wire_message_carries_drops() -> None:
    t = CounterTracker(["eth1"])
    sample = t.update(0, [raw("eth0", 2), raw("eth1", 3, rx_dropped=4)])
    sample.capture_packets, sample.capture_drops = 1000, 7
    msg = sample.to_wire()
    assert [i.ifname for i in msg.interfaces] == ["eth1"]
    assert (msg.interfaces[0].rx_dropped, msg.capture_drops, msg.capture_packets) == (4, 7, 1000)
