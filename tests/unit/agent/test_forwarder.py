"""The forwarder's logic against an in-memory outbox and scripted bus answers."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from testsupport.outbox import MemOutbox

from appliance.agent.forwarder import (
    TRANSITIONS,
    Event,
    Forwarder,
    ForwarderConfig,
    RateLimiter,
    State,
)
from appliance.agent.transport import TransportError
from appliance.fsm import IllegalTransition
from appliance.wire import Envelope, PublishAck, PublishBatchRequest
from appliance.wire.framing import frame_batch

OK, RETRY, INVALID = PublishAck.OK, PublishAck.RETRY, PublishAck.INVALID


def _box(n: int) -> MemOutbox:
    return MemOutbox((f"k{i}".encode(), f"p{i}".encode()) for i in range(1, n + 1))


class Script:
    """A transport answering from a script: a status per payload, or an exception."""

    def __init__(self, address: str, answers: list[object]) -> None:
        self.address = address
        self.answers = answers
        self.seen: list[list[bytes]] = []
        self.closed = 0

    def publish(self, payloads: Sequence[bytes], timeout: float) -> list[PublishAck]:
        self.seen.append(list(payloads))
        answer = self.answers.pop(0) if self.answers else OK
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return [answer(p) for p in payloads]
        return [PublishAck(status=answer, backoff_hint_ms=5 if answer == RETRY else 0)] * len(
            payloads
        )

    def close(self) -> None:
        self.closed += 1


def _fwd(outbox: MemOutbox, transports: list[Script], tmp_path: Path, **kw: object) -> Forwarder:
    kw.setdefault("batch_size", 4)
    cfg = ForwarderConfig(
        backoff_base_s=0.001, backoff_cap_s=0.004,
        quarantine_path=tmp_path / "q.jsonl", **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return Forwarder(outbox, [lambda t=t: t for t in transports], cfg, rng=random.Random(1))


def test_ok_acks_in_batches(tmp_path: Path) -> None:
    box, bus = _box(10), Script("a", [])
    f = _fwd(box, [bus], tmp_path)
    for _ in range(3):
        f.step()
    assert not box.pending and [len(b) for b in bus.seen] == [4, 4, 2]
    assert f.state is State.CONNECTED and f.stats.ok == 10


def test_invalid_is_quarantined_and_never_blocks(tmp_path: Path) -> None:
    box = _box(4)
    bus = Script("a", [lambda p: PublishAck(status=INVALID, reason="bad signature") if p == b"p2"
                       else PublishAck(status=OK)])  # fmt: skip
    f = _fwd(box, [bus], tmp_path)
    f.step()
    assert not box.pending and f.stats.invalid == 1 and f.stats.ok == 3
    (entry,) = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert entry["key"] == "k2" and entry["reason"] == "bad signature" and entry["seq"] == 2


def test_retry_keeps_records_and_pauses_hint_plus_jitter(tmp_path: Path) -> None:
    box, bus = _box(3), Script("a", [RETRY])
    f = _fwd(box, [bus], tmp_path)
    f.step()
    assert len(box.pending) == 3 and f.stats.retry == 3
    assert 0.005 <= f.stats.last_pause_s <= 0.010
    assert f.state is State.CONNECTING
    f.step()
    assert not box.pending and bus.seen[0] == bus.seen[1]  # byte-identical retransmission


def test_failures_back_off_exponentially_and_fail_over(tmp_path: Path) -> None:
    box = _box(2)
    down = TransportError("unavailable", "connection refused")
    a, b = Script("a", [down, down]), Script("b", [down])
    f = _fwd(box, [a, b], tmp_path)
    states: list[State] = []
    f._on_state = states.append
    f.step()
    assert f.stats.address == "a" and a.closed == 1 and f.stats.last_pause_s <= 0.001
    f.step()
    assert f.stats.address == "b" and f.stats.last_pause_s <= 0.002
    f.step()
    f.step()  # a answers OK now
    assert not box.pending and f.stats.failures == {"unavailable": 3}
    assert State.BACKING_OFF in states and states[-1] is State.CONNECTED


def test_resource_exhausted_honours_retry_after(tmp_path: Path) -> None:
    box, bus = _box(1), Script("a", [TransportError("exhausted", "busy", retry_after_ms=7)])
    f = _fwd(box, [bus], tmp_path)
    f.step()
    assert 0.007 <= f.stats.last_pause_s <= 0.014 and bus.closed == 0 and len(box.pending) == 1


def test_send_rate_limits_envelopes_per_second() -> None:
    now = [0.0]
    limiter = RateLimiter(100.0, lambda: now[0])
    assert limiter.delay_for(100) == 0.0
    assert abs(limiter.delay_for(50) - 0.5) < 1e-9
    now[0] += 1.5
    assert limiter.delay_for(50) == 0.0


def test_every_state_can_stop_and_transitions_are_explicit() -> None:
    assert all(TRANSITIONS[(s, Event.STOP)] is State.STOPPED for s in State)
    assert TRANSITIONS[(State.CONNECTED, Event.FAILURE)] is State.BACKING_OFF


def test_a_stopped_forwarder_refuses_to_move_again(tmp_path: Path) -> None:
    f = _fwd(_box(0), [Script("a", [])], tmp_path)
    f.stop()
    f.run()
    assert f.state is State.STOPPED and f.stats.state is State.STOPPED
    with pytest.raises(IllegalTransition, match="forwarder: no transition from STOPPED on OK"):
        f._machine.move(Event.OK)
    assert f.state is State.STOPPED


def test_frame_batch_is_a_valid_publish_batch_request() -> None:
    envs = [Envelope(version="v1", idempotency_key=f"k{i}" * (i * 40 + 1)) for i in range(4)]
    raw = frame_batch([e.SerializeToString() for e in envs])
    assert list(PublishBatchRequest.FromString(raw).envelopes) == envs


def test_an_undecodable_record_is_isolated_and_quarantined(tmp_path: Path) -> None:
    box = _box(8)

    class Picky(Script):
        def publish(self, payloads: Sequence[bytes], timeout: float) -> list[PublishAck]:
            self.seen.append(list(payloads))
            if b"p5" in payloads:
                raise TransportError("rejected", "undecodable batch")
            return [PublishAck(status=OK)] * len(payloads)

    bus = Picky("a", [])
    f = _fwd(box, [bus], tmp_path, batch_size=8)
    for _ in range(10):
        f.step()
        if not box.pending:
            break
    assert not box.pending and f.stats.ok == 7 and f.stats.invalid == 1
    (entry,) = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert entry["key"] == "k5" and "undecodable" in entry["reason"]


def test_pool_workers_share_the_outbox_without_sending_a_record_twice(tmp_path: Path) -> None:
    import threading

    from appliance.agent.forwarder import ForwarderPool

    box = _box(400)
    lock = threading.Lock()
    seen: list[bytes] = []

    class Recorder(Script):
        def publish(self, payloads: Sequence[bytes], timeout: float) -> list[PublishAck]:
            with lock:
                seen.extend(payloads)
            return [PublishAck(status=OK)] * len(payloads)

    cfg = ForwarderConfig(batch_size=7, quarantine_path=tmp_path / "q", idle_poll_s=0.001)
    pool = ForwarderPool(box, [lambda: Recorder("a", [])], cfg, workers=3)
    pool.start()
    for _ in range(500):  # bounded
        if not box.pending:
            break
        threading.Event().wait(0.01)
    pool.stop(5)
    assert not box.pending
    assert sorted(seen) == sorted(f"p{i}".encode() for i in range(1, 401))  # each exactly once
    assert pool.stats.ok == 400 and pool.stats.state is State.STOPPED


def test_leases_give_back_what_was_not_acked() -> None:
    from appliance.agent.forwarder import Leases

    leases = Leases(_box(5))
    first = leases.read(2)
    second = leases.read(2)
    assert [r.seq for r in first] == [1, 2] and [r.seq for r in second] == [3, 4]
    leases.ack([1])
    leases.release([2])
    assert [r.seq for r in leases.read(10)] == [2, 5]
