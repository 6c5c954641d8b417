"""The gate: who may open a publish call, how many at once, and how long it may take to arrive.

Everything here runs before a byte of the request message is read. The publish methods are
registered as stream-request methods (`grpc.stream_unary_rpc_method_handler`): on the wire a
unary call is a stream of one message, so unary clients are served unchanged, but grpcio calls
a stream-request handler as soon as the call's headers arrive, and receives a message only when
the handler asks for one. A unary handler, by contrast, is called only after grpcio has received
and buffered the whole message (up to the receive cap), whoever sent it.

Order of checks for every call (first failure wins; each refusal is one `bus_rejected_total`
label, `Refusal` below):

1. the certificate's CN exists (else UNAUTHENTICATED), its serial is not on the revocation list
   and the CN is in the trust map (else PERMISSION_DENIED): nothing is read, the call ends at
   once, and the worker thread is back in the pool within microseconds;
2. a slot: at most `max_calls_per_peer` open calls per CN and `max_open_calls` in all, else
   RESOURCE_EXHAUSTED with `retry-after-ms` / `grpc-retry-pushback-ms` trailing metadata;
3. the message: exactly one, fully received (with the client's half-close) within
   `message_deadline_s` of the call's opening, else the watchdog cancels the call (the client
   sees CANCELLED) and the worker thread is released; a second message is INVALID_ARGUMENT.

Only then does the wrapped handler (EventBusService.publish / publish_batch) run, with the
message's bytes and the `Caller` the gate admitted, on the same thread: handlers never look the
caller up again, so one call sees one trust-map snapshot whatever a reload does meanwhile. The
slot is held until the handler returns; the handler's run, and only that (not the refusals above,
nor the wait for the message), is one `bus_publish_latency_ms` observation, aborts included.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NoReturn

import grpc
from nacl.signing import VerifyKey

from appliance.bus.auth import TrustHolder, peer_cn, peer_serial
from appliance.bus.metrics import BusMetrics
from appliance.bus.validate import Reject

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """Who the gate let in: the certificate's CN and its key from the trust map."""

    cn: str
    key: VerifyKey


Handler = Callable[[bytes, grpc.ServicerContext, Caller], bytes]
StreamBehavior = Callable[[Iterator[bytes], grpc.ServicerContext], bytes]


#: Why the gate ended a call: the gate's kinds of the bus's one rejection taxonomy.
Refusal = Reject


class CallSlots:
    """Open calls per peer and in all, with their limits. Thread-safe; no I/O."""

    def __init__(self, max_open: int, max_per_peer: int) -> None:
        self.max_open = max_open
        self.max_per_peer = max_per_peer
        self._per_peer: dict[str, int] = {}
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        return self._open

    def take(self, peer: str) -> Refusal | None:
        """Take a slot for peer, or say which limit refuses it (nothing taken then)."""
        with self._lock:
            held = self._per_peer.get(peer, 0)
            if held >= self.max_per_peer:
                return Refusal.PEER_LIMIT
            if self._open >= self.max_open:
                return Refusal.OPEN_CALLS_LIMIT
            self._per_peer[peer] = held + 1
            self._open += 1
            return None

    def give(self, peer: str) -> None:
        """Return a slot taken for peer."""
        with self._lock:
            held = self._per_peer[peer] - 1
            if held:
                self._per_peer[peer] = held
            else:
                del self._per_peer[peer]  # the table holds only peers with open calls
            self._open -= 1


class AlarmState(enum.Enum):
    """ARMED -> FIRED (the watchdog ran the action) or ARMED -> DISARMED (its owner was first)."""

    ARMED = "armed"
    FIRED = "fired"
    DISARMED = "disarmed"


@dataclass(order=True)
class _Alarm:
    due: float
    seq: int
    action: Callable[[], None] = field(compare=False)
    state: AlarmState = field(default=AlarmState.ARMED, compare=False)


class Watchdog:
    """One thread that runs an alarm's action when its time comes, unless disarmed before.

    Actions run on the watchdog thread and must be quick and must not raise (context.cancel()).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[_Alarm] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="bus-gate-watchdog", daemon=True)
        self._thread.start()

    def arm(self, after_s: float, action: Callable[[], None]) -> _Alarm:
        alarm = _Alarm(self._clock() + after_s, next(self._seq), action)
        with self._cond:
            heapq.heappush(self._heap, alarm)
            if self._heap[0] is alarm:
                self._cond.notify()
        return alarm

    def disarm(self, alarm: _Alarm) -> bool:
        """Stop alarm from firing; False if it already fired."""
        with self._cond:
            if alarm.state is AlarmState.FIRED:
                return False
            alarm.state = AlarmState.DISARMED  # left in the heap, dropped when its time comes
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0].due > self._clock()):
                    self._cond.wait(self._heap[0].due - self._clock() if self._heap else None)
                if self._closed:
                    return
                alarm = heapq.heappop(self._heap)
                if alarm.state is not AlarmState.ARMED:
                    continue
                alarm.state = AlarmState.FIRED
            try:
                alarm.action()
            except Exception:  # an action must not stop every later alarm
                log.exception("gate watchdog action failed")


class Gate:
    """Identity, call limits and the message deadline in front of the publish handlers, and
    the handlers' latency."""

    def __init__(
        self,
        trust: TrustHolder,
        metrics: BusMetrics,
        *,
        max_open_calls: int,
        max_calls_per_peer: int,
        message_deadline_s: float,
        backoff_hint_ms: int,
    ) -> None:
        self.trust = trust
        self.metrics = metrics
        self.slots = CallSlots(max_open_calls, max_calls_per_peer)
        self.message_deadline_s = message_deadline_s
        self.backoff_hint_ms = backoff_hint_ms
        self.watchdog = Watchdog()
        for why in Refusal:  # every label exported from the start, at 0, for alert rules
            metrics.rejected_total.labels(why.value)
        self._awaiting = 0
        self._awaiting_lock = threading.Lock()

    @property
    def awaiting_message(self) -> int:
        """Open calls that have not delivered their message yet."""
        return self._awaiting

    def close(self) -> None:
        self.watchdog.close()

    def wrap(self, handler: Handler) -> StreamBehavior:
        """A stream-request behavior: the gate, then handler(message bytes, context, caller),
        timed."""

        def gated(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            caller = self._identify(context)
            refusal = self.slots.take(caller.cn)
            if refusal is not None:
                self._refuse_busy(context, refusal, caller.cn)
            try:
                message = self._receive_one(requests, context)
                started = time.perf_counter()
                try:
                    return handler(message, context, caller)
                finally:
                    self.metrics.publish_latency_ms.observe((time.perf_counter() - started) * 1000)
            finally:
                self.slots.give(caller.cn)

        return gated

    def _refuse(
        self, context: grpc.ServicerContext, why: Refusal, code: grpc.StatusCode, details: str
    ) -> NoReturn:
        # Counted always, logged at DEBUG only: a flood of refusals must not flood the log.
        self.metrics.rejected_total.labels(why.value).inc()
        log.debug("gate refused a call (%s): %s", why.value, details)
        context.abort(code, details)

    def _identify(self, context: grpc.ServicerContext) -> Caller:
        cn = peer_cn(context)
        if cn is None:
            self._refuse(
                context, Refusal.NO_IDENTITY, grpc.StatusCode.UNAUTHENTICATED,
                "no client certificate CN",
            )  # fmt: skip
        trust = self.trust.snapshot
        if trust.revoked and peer_serial(context) in trust.revoked:
            self._refuse(
                context, Refusal.REVOKED, grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate of agent {cn!r} is revoked",
            )  # fmt: skip
        key = trust.agents.get(cn)
        if key is None:
            self._refuse(
                context, Refusal.UNTRUSTED, grpc.StatusCode.PERMISSION_DENIED,
                f"agent {cn!r} is not in the trust map",
            )  # fmt: skip
        return Caller(cn, key)

    def _refuse_busy(self, context: grpc.ServicerContext, why: Refusal, cn: str) -> NoReturn:
        hint = str(self.backoff_hint_ms * 4)
        context.set_trailing_metadata((("retry-after-ms", hint), ("grpc-retry-pushback-ms", hint)))
        limit = (
            f"{self.slots.max_per_peer} open calls from {cn!r}"
            if why is Refusal.PEER_LIMIT
            else f"{self.slots.max_open} open calls in all"
        )
        self._refuse(context, why, grpc.StatusCode.RESOURCE_EXHAUSTED, f"bus at {limit}")

    def _receive_one(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        """The call's one message and its half-close, within the deadline, or the call ends."""
        with self._awaiting_lock:
            self._awaiting += 1
        alarm = self.watchdog.arm(self.message_deadline_s, context.cancel)
        try:
            message = next(requests, None)
            extra = None if message is None else next(requests, None)
        except grpc.RpcError:  # cancelled: by the watchdog, the client, or an oversized message
            message = extra = None
        finally:
            in_time = self.watchdog.disarm(alarm)
            with self._awaiting_lock:
                self._awaiting -= 1
        if not in_time:  # the client has seen CANCELLED already; abort() ends the handler
            self._refuse(
                context, Refusal.DEADLINE, grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no complete message within message_deadline_s {self.message_deadline_s}",
            )  # fmt: skip
        if message is None and not context.is_active():
            self._refuse(
                context, Refusal.CANCELLED, grpc.StatusCode.CANCELLED,
                "the call ended before its message arrived",
            )  # fmt: skip
        if message is None:
            self._refuse(
                context, Refusal.NO_MESSAGE, grpc.StatusCode.INVALID_ARGUMENT,
                "the call ended without a message",
            )  # fmt: skip
        if extra is not None:
            self._refuse(
                context, Refusal.EXTRA_MESSAGE, grpc.StatusCode.INVALID_ARGUMENT,
                "a publish call carries exactly one message",
            )  # fmt: skip
        return message
