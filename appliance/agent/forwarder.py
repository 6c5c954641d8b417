"""The forwarder: drains sealed envelopes from the WAL and delivers them to the bus.

Contract with the outbox (the WAL): `read(limit)` returns the oldest pending records without
consuming them; `ack(seqs)` marks records delivered. The forwarder acks a record only when the
bus answered OK (stored) or INVALID (quarantined here first): a record is never dropped
silently, and never retried forever.

Per-envelope answers:
- OK: ack.
- INVALID: the record is written to the quarantine file with the bus's reason, counted, logged,
  then acked, so it never blocks the records behind it.
- RETRY: left in the WAL; the forwarder pauses for the bus's hint plus full jitter over one more
  hint (`hint + U(0, hint)`), so a fleet told "come back in 250 ms" spreads out over 250-500 ms.

Connection state machine (appliance.fsm over TRANSITIONS; an illegal move raises
fsm.IllegalTransition):

    CONNECTING --ok--> CONNECTED --ok--> CONNECTED
    CONNECTING/CONNECTED --unavailable|tls|denied|failed--> BACKING_OFF (next address)
    CONNECTED --retry|exhausted--> THROTTLED (same address, the bus's hint)
    BACKING_OFF|THROTTLED --timer--> CONNECTING
    any --stop--> STOPPED

Backing off after a failure is exponential with full jitter and a cap: U(0, min(cap, base*2^n)),
n counting consecutive failures; each failure moves to the next configured bus address.
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from appliance.agent.transport import Transport, TransportError
from appliance.fsm import Machine
from appliance.wire import PublishAck

log = logging.getLogger(__name__)
_QUARANTINE_LOCK = threading.Lock()


class OutRecord(Protocol):
    """A pending record: WAL sequence, idempotency key, the sealed envelope's bytes."""

    @property
    def seq(self) -> int: ...

    @property
    def key(self) -> bytes: ...

    @property
    def payload(self) -> bytes: ...


class Outbox(Protocol):
    """What the forwarder drains (the WAL). Thread-safe."""

    def read(self, limit: int) -> Sequence[OutRecord]: ...

    def ack(self, seqs: Iterable[int]) -> int: ...


class State(enum.Enum):
    """Where the forwarder's connection to the bus stands."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    THROTTLED = "throttled"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"


class Event(enum.Enum):
    """What moves the connection: the bus's answer to a batch, a timer, or stop()."""

    OK = "ok"
    RETRY = "retry"
    FAILURE = "failure"
    TIMER = "timer"
    STOP = "stop"


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.CONNECTING, Event.OK): State.CONNECTED,
    (State.CONNECTED, Event.OK): State.CONNECTED,
    (State.CONNECTING, Event.RETRY): State.THROTTLED,
    (State.CONNECTED, Event.RETRY): State.THROTTLED,
    (State.CONNECTING, Event.FAILURE): State.BACKING_OFF,
    (State.CONNECTED, Event.FAILURE): State.BACKING_OFF,
    (State.THROTTLED, Event.TIMER): State.CONNECTING,
    (State.BACKING_OFF, Event.TIMER): State.CONNECTING,
    **{(s, Event.STOP): State.STOPPED for s in State},
}


@dataclass
class ForwarderConfig:
    """Forwarder tunables (built from the agent's config section)."""

    batch_size: int = 500
    timeout_s: float = 30.0
    idle_poll_s: float = 0.05
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    #: Envelopes per second at most (0: unlimited).
    send_rate: float = 0.0
    quarantine_path: Path = Path("data/quarantine.jsonl")
    #: The quarantine file is rotated to .1 past this size (bounded disk use).
    quarantine_max_bytes: int = 4 * 1024 * 1024


@dataclass
class ForwarderStats:
    """Counters the agent exports as metrics."""

    sent: int = 0
    ok: int = 0
    retry: int = 0
    invalid: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    last_success_unix: float = 0.0
    backoff_s: float = 0.0
    last_pause_s: float = 0.0
    state: State = State.CONNECTING
    address: str = ""


class RateLimiter:
    """Token bucket: at most `rate` items per second, bursts up to one second's worth.
    Thread-safe: the workers of a ForwarderPool share one."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = rate
        self._last = clock()
        self._lock = threading.Lock()

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self.rate = rate
            self._tokens = min(self._tokens, rate)

    def delay_for(self, n: int) -> float:
        """Take n tokens; return how long to wait before sending them (0 when available)."""
        with self._lock:
            if self.rate <= 0:
                return 0.0
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class Leases:
    """One outbox shared by several forwarder workers: read() hands each pending record to one
    worker at a time; ack() or release() gives it back (acked records leave the outbox)."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._leased: set[int] = set()
        self._lock = threading.Lock()

    def read(self, limit: int) -> Sequence[OutRecord]:
        with self._lock:
            records = self._outbox.read(limit + len(self._leased))
            out = [r for r in records if r.seq not in self._leased][:limit]
            self._leased.update(r.seq for r in out)
            return out

    def ack(self, seqs: Iterable[int]) -> int:
        seqs = list(seqs)
        n = self._outbox.ack(seqs)
        self.release(seqs)
        return n

    def release(self, seqs: Iterable[int]) -> None:
        with self._lock:
            self._leased.difference_update(seqs)


class Forwarder:
    """Delivers the outbox to the bus; run() in a thread, stop() from any thread."""

    def __init__(
        self,
        outbox: Outbox,
        transports: Sequence[Callable[[], Transport]],
        config: ForwarderConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_state: Callable[[State], None] | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        if not transports:
            raise ValueError("the forwarder needs at least one bus address")
        self.outbox = outbox
        self.config = config
        self.stats = ForwarderStats()
        self._factories = list(transports)
        self._index = 0
        self._transport: Transport | None = None
        self._failures = 0
        self._clock = clock
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._limiter = limiter or RateLimiter(config.send_rate, clock)
        self._on_state = on_state
        self._last_failure_kind = ""
        self._machine = Machine(
            "forwarder", TRANSITIONS, self.stats.state, on_change=self._state_changed
        )
        # Batch size in use: halved while the bus rejects whole batches (to isolate the one
        # record it cannot decode), grown back after each success.
        self._limit = config.batch_size

    # -- state machine ---------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The connection's state (stats.state is its copy for the exported statistics)."""
        return self._machine.state

    def _state_changed(self, before: State, event: Event, after: State) -> None:
        log.debug("forwarder %s -> %s on %s", before.value, after.value, event.value)
        self.stats.state = after
        if self._on_state is not None:
            self._on_state(after)

    # -- the loop --------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def set_send_rate(self, rate: float) -> None:
        """Change the send-rate limit (SIGHUP)."""
        self._limiter.set_rate(rate)

    def set_transports(self, transports: Sequence[Callable[[], Transport]]) -> None:
        """Replace the bus addresses; the next connection uses the new list (SIGHUP)."""
        if not transports:
            raise ValueError("the forwarder needs at least one bus address")
        self._factories = list(transports)
        self._index = 0

    def run(self) -> None:
        """Deliver until stop(); returns with the state STOPPED."""
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            self._close_transport()
            self._machine.move(Event.STOP)

    def step(self) -> None:
        """One iteration: wait out a pause, or send one batch (tests drive this directly)."""
        records = self.outbox.read(self._limit)
        if not records:
            self._stop.wait(self.config.idle_poll_s)
            return
        try:
            delay = self._limiter.delay_for(len(records))
            if delay > 0 and self._stop.wait(delay):
                return
            self._send(records)
        finally:
            release = getattr(self.outbox, "release", None)
            if release is not None:  # shared outbox: what was not acked goes back to the pool
                release([r.seq for r in records])

    def _connect(self) -> Transport:
        if self._transport is None:
            self._transport = self._factories[self._index]()
            self.stats.address = self._transport.address
        return self._transport

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _pause(self, seconds: float, event: Event) -> None:
        self.stats.backoff_s = self.stats.last_pause_s = seconds
        self._machine.move(event)
        self._stop.wait(seconds)
        self.stats.backoff_s = 0.0
        if not self._stop.is_set():
            self._machine.move(Event.TIMER)

    def _send(self, records: Sequence[OutRecord]) -> None:
        transport = self._connect()
        payloads = [r.payload for r in records]
        self.stats.sent += len(records)
        try:
            acks = transport.publish(payloads, self.config.timeout_s)
        except TransportError as err:
            if err.kind == "rejected":
                self._isolate(records, err)
                return
            self._on_failure(err)
            return
        self._failures = 0
        self._last_failure_kind = ""
        self._limit = min(self.config.batch_size, self._limit * 2)
        self.stats.batches += 1
        done: list[int] = []
        retry_hint = 0
        for rec, ack in zip(records, acks, strict=True):
            if ack.status == PublishAck.OK:
                done.append(rec.seq)
                self.stats.ok += 1
            elif ack.status == PublishAck.INVALID:
                self._quarantine(rec, ack.reason)
                done.append(rec.seq)
                self.stats.invalid += 1
            else:
                self.stats.retry += 1
                retry_hint = max(retry_hint, ack.backoff_hint_ms, 1)
        if done:
            self.outbox.ack(done)
        if len(done) > 0 and retry_hint == 0:
            self.stats.last_success_unix = time.time()
            self._machine.move(Event.OK)
        elif retry_hint:
            if done:
                self.stats.last_success_unix = time.time()
            hint = retry_hint / 1000
            self._pause(hint + self._rng.uniform(0, hint), Event.RETRY)

    def _isolate(self, records: Sequence[OutRecord], err: TransportError) -> None:
        """The bus refused the batch as a whole (it could not decode it): bisect down to the one
        record at fault and quarantine it, so it never blocks the queue."""
        self.stats.failures["rejected"] = self.stats.failures.get("rejected", 0) + 1
        if len(records) > 1:
            self._limit = max(1, len(records) // 2)
            return
        self._quarantine(records[0], f"batch refused: {err.detail}")
        self.outbox.ack([records[0].seq])
        self.stats.invalid += 1
        self._limit = self.config.batch_size

    def _on_failure(self, err: TransportError) -> None:
        self.stats.failures[err.kind] = self.stats.failures.get(err.kind, 0) + 1
        if err.kind != self._last_failure_kind:  # log once per kind of trouble, not per attempt
            log.warning("bus %s: %s", self.stats.address, _explain(err))
            self._last_failure_kind = err.kind
        if err.kind == "exhausted":
            hint = max(err.retry_after_ms, 1) / 1000
            self._pause(hint + self._rng.uniform(0, hint), Event.RETRY)
            return
        self._failures += 1
        self._close_transport()
        self._index = (self._index + 1) % len(self._factories)  # fail over
        ceiling = min(
            self.config.backoff_cap_s, self.config.backoff_base_s * 2 ** (self._failures - 1)
        )
        self._pause(self._rng.uniform(0, ceiling), Event.FAILURE)

    def _quarantine(self, rec: OutRecord, reason: str) -> None:
        """Keep an envelope the bus refused, for inspection (bounded: one rotation)."""
        with _QUARANTINE_LOCK:  # several workers may quarantine at once
            self._write_quarantine(rec, reason)

    def _write_quarantine(self, rec: OutRecord, reason: str) -> None:
        path = self.config.quarantine_path
        log.error(
            "bus refused envelope %s: %s (quarantined)", rec.key.decode(errors="replace"), reason
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > self.config.quarantine_max_bytes:
            path.replace(path.with_name(path.name + ".1"))
        line = {
            "time": time.time(),
            "seq": rec.seq,
            "key": rec.key.decode(errors="replace"),
            "reason": reason,
            "envelope_b64": base64.b64encode(rec.payload).decode(),
        }
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")


def _explain(err: TransportError) -> str:
    if err.kind == "tls":
        return (
            "TLS handshake failed, refusing to send: the bus's certificate is not signed by our "
            f"CA or ours was refused ({err.detail})"
        )
    if err.kind == "denied":
        return f"the bus does not accept this agent's identity ({err.detail})"
    if err.kind == "unavailable":
        return f"bus unreachable, buffering in the WAL ({err.detail})"
    if err.kind == "exhausted":
        return f"bus overloaded, backing off ({err.detail})"
    return err.detail


class ForwarderPool:
    """`workers` forwarders sharing one outbox (through Leases) and one rate limit, so that
    several batches are in flight: the bus verifies one while it commits another.

    Stats are summed; the state is the most troubled worker's (backing off > throttled), else
    connected when any worker is (an idle worker that never needed to send stays CONNECTING).
    """

    _SEVERITY = (State.BACKING_OFF, State.THROTTLED, State.CONNECTED, State.CONNECTING)

    def __init__(
        self,
        outbox: Outbox,
        transports: Sequence[Callable[[], Transport]],
        config: ForwarderConfig,
        workers: int = 2,
    ) -> None:
        self.limiter = RateLimiter(config.send_rate, time.monotonic)
        leases = Leases(outbox)
        self.workers = [
            Forwarder(leases, transports, config, limiter=self.limiter) for _ in range(workers)
        ]
        self._threads = [
            threading.Thread(target=w.run, name=f"agent-forwarder-{i}")
            for i, w in enumerate(self.workers)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout: float) -> None:
        for w in self.workers:
            w.stop()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))

    def set_send_rate(self, rate: float) -> None:
        self.limiter.set_rate(rate)

    def set_transports(self, transports: Sequence[Callable[[], Transport]]) -> None:
        for w in self.workers:
            w.set_transports(transports)

    @property
    def stats(self) -> ForwarderStats:
        each = [w.stats for w in self.workers]
        total = ForwarderStats()
        for s in each:
            total.sent += s.sent
            total.ok += s.ok
            total.retry += s.retry
            total.invalid += s.invalid
            total.batches += s.batches
            for kind, n in s.failures.items():
                total.failures[kind] = total.failures.get(kind, 0) + n
        total.last_success_unix = max(s.last_success_unix for s in each)
        total.backoff_s = max(s.backoff_s for s in each)
        states = {s.state for s in each}
        total.state = next((st for st in self._SEVERITY if st in states), State.STOPPED)
        total.address = each[0].address
        return total
