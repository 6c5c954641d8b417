"""The gate's parts without a network: call slots and the deadline watchdog."""

from __future__ import annotations

import threading

from appliance.bus.gate import CallSlots, Refusal, Watchdog


def test_slots_refuse_past_the_per_peer_then_the_global_limit() -> None:
    slots = CallSlots(max_open=3, max_per_peer=2)
    assert slots.take("a") is None and slots.take("a") is None
    assert slots.take("a") is Refusal.PEER_LIMIT
    assert slots.take("b") is None
    assert slots.take("c") is Refusal.OPEN_CALLS_LIMIT
    assert slots.open == 3
    slots.give("a")
    assert slots.take("c") is None
    for peer in ("a", "b", "c"):
        slots.give(peer)
    assert slots.open == 0
    assert slots._per_peer == {}  # peers without open calls cost nothing


def test_watchdog_fires_in_deadline_order_and_never_after_disarm() -> None:
    dog = Watchdog()
    fired: list[str] = []
    last = threading.Event()
    try:
        kept = dog.arm(0.02, lambda: fired.append("kept"))
        dropped = dog.arm(0.01, lambda: fired.append("dropped"))
        assert dog.disarm(dropped) is True
        dog.arm(0.05, lambda: (fired.append("last"), last.set()))
        assert last.wait(30)
        assert fired == ["kept", "last"]
        assert dog.disarm(kept) is False  # it had fired: the caller knows it was too late
    finally:
        dog.close()


def test_watchdog_survives_a_failing_action() -> None:
    dog = Watchdog()
    done = threading.Event()
    try:
        dog.arm(0.0, lambda: 1 / 0)  # type: ignore[func-returns-value]
        dog.arm(0.01, done.set)
        assert done.wait(30)
    finally:
        dog.close()
