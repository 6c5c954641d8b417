"""A forward clock step in the middle of a conversation (the agent following the bus's clock
after a power cut): the live meter moves its open flows and the ring's old-clock packets with
the step, so the conversation is one flow, on the new clock. Each test runs against both
meters LiveMeter may use: the compiled one and Decoder + FlowMeter."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from testsupport.capture_helpers import MS, QueuedRing, S, eth, frame_batch, frame_bytes

from appliance.agent.clock import ClockFollower, ClockStep
from appliance.capture.config import MeterConfig
from appliance.capture.source import LiveMeter, _fastpath

OLD = 1_700_000_000 * S  # the floor the box booted on
STEP = 5 * 86_400 * S  # five days behind the bus


@pytest.fixture(
    params=[
        pytest.param(True, id="compiled"),
        pytest.param(False, id="numpy"),
    ]
)
def compiled(request: pytest.FixtureRequest) -> bool:
    if request.param and _fastpath is None:
        pytest.fail("the compiled meter is not built: run `make venv`")
    return bool(request.param)


def _tcp(flags: str, reverse: bool = False) -> bytes:
    a, b = ("192.0.2.1", 40000), ("192.0.2.2", 80)
    (src, sport), (dst, dport) = (b, a) if reverse else (a, b)
    return frame_bytes(eth() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))


def _conversation(rebase: bool, compiled: bool) -> list[tuple[int, int, int, int]]:
    ring = QueuedRing()
    live = LiveMeter(ring, MeterConfig(idle_timeout_s=60), compiled=compiled)
    ended = []
    # SYN and SYN-ACK on the old clock, metered
    ring.queued.append(frame_batch([(OLD, _tcp("S")), (OLD + 1 * MS, _tcp("SA", reverse=True))]))
    ended += list(live.step(OLD + 2 * MS))
    # the ACK is stamped on the old clock, then the clock steps before the ring hands it over;
    # the rest of the conversation is stamped on the new clock
    before = OLD + 3 * MS
    ring.queued.append(frame_batch([(OLD + 2 * MS, _tcp("A"))]))
    if rebase:
        live.rebase(before, STEP)
    new = before + STEP
    ring.queued.append(
        frame_batch([(new + 1 * MS, _tcp("PA")), (new + 2 * MS, _tcp("A", reverse=True))])
    )
    ended += list(live.step(new + 3 * MS))
    ended += [live.close()]
    return [
        (int(r.packets_tx), int(r.packets_rx), int(r.start_ns), int(r.end_ns))
        for b in ended
        for r in b.records()
    ]


def test_a_step_mid_conversation_keeps_one_flow_on_the_new_clock(compiled: bool) -> None:
    assert _conversation(rebase=True, compiled=compiled) == [
        (3, 2, OLD + STEP, OLD + STEP + 3 * MS + 2 * MS)
    ]


def test_without_the_rebase_the_step_would_split_the_flow(compiled: bool) -> None:
    """The failure the rebase prevents (so the test above can fail)."""
    assert len(_conversation(rebase=False, compiled=compiled)) == 2


def test_a_step_back_is_refused(compiled: bool) -> None:
    live = LiveMeter(QueuedRing(), compiled=compiled)
    with pytest.raises(ValueError, match="forward"):
        live.rebase(OLD, -S)


def test_the_follower_logs_each_step_with_the_time_it_stepped_from() -> None:
    now = [OLD]

    def step(ns: int) -> None:
        now[0] = ns

    f = ClockFollower(enabled=True, step_to_ns=step, clock_ns=lambda: now[0], monotonic=lambda: 1.0)
    f.observe(OLD + STEP, OLD, OLD)
    assert (f.now(), f.steps_since(0), f.steps_since(1)) == (OLD + STEP, [ClockStep(OLD, STEP)], [])
    assert ClockStep(OLD, STEP).rebase(OLD - 1) == OLD - 1 + STEP
    assert ClockStep(OLD, STEP).rebase(OLD + STEP) == OLD + STEP


def test_a_step_logged_while_the_ring_is_read_is_applied_before_theframe_batch(
    compiled: bool,
) -> None:
    """The capture read its time before the step; the step came; the ring then handed over
    the SYN (old clock) and the SYN-ACK (new clock) in one poll: one flow, on the new clock."""
    ring = QueuedRing()
    log: list[tuple[int, int]] = []
    live = LiveMeter(
        ring, MeterConfig(idle_timeout_s=60), clock_steps=lambda seen: log[seen:], compiled=compiled
    )
    now = OLD + 1 * MS  # read before the step
    before = OLD + 2 * MS
    ring.queued.append(frame_batch([(OLD + 1 * MS, _tcp("S"))]))
    ring.queued.append(lambda: log.append((before, STEP)))  # the agent steps meanwhile
    ring.queued.append(frame_batch([(before + STEP + 1 * MS, _tcp("SA", reverse=True))]))
    assert list(live.step(now)) == []
    (flow,) = live.close().records()
    assert (flow.packets_tx, flow.packets_rx) == (1, 1)
    assert flow.start_ns == OLD + 1 * MS + STEP


def test_a_packet_stamped_before_the_step_is_moved_with_it(compiled: bool) -> None:
    """The first packet the meter sees was stamped on the old clock, handed over after the
    step: it starts its flow on the new clock, not five days in the past (already idle)."""
    ring = QueuedRing()
    live = LiveMeter(ring, MeterConfig(idle_timeout_s=60), compiled=compiled)
    ring.queued.append(frame_batch([(OLD + 2 * MS, _tcp("S"))]))
    live.rebase(OLD + 3 * MS, STEP)
    assert [len(b) for b in live.step(OLD + STEP + 4 * MS)] == []  # still open
    (closed,) = live.close().records()
    assert (closed.start_ns, closed.end_ns) == (OLD + STEP + 2 * MS,) * 2
