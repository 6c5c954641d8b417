"""Following the bus's clock: a box without a real-time clock or network time stays on time.

A Pi starts at the floor of its last saved time (rcS step 4): after a power cut that can be
hours or weeks behind, and every record it seals would carry that wrong time; a crystal running
fast drifts ahead by seconds a day, until the bus refuses records from the future (its
max_future_skew_s). The bus answers every publish with its time (trailing metadata
`bus-time-ns`, over the same mTLS connection, so it is the org's authenticated bus speaking).
The agent estimates its offset from each answer and, when enabled (`agent.clock_from_bus`, on
in the device image, off elsewhere: a development machine keeps its own clock), corrects it:

- behind by more than `threshold`: the clock is stepped forward;
- ahead by more than `threshold`: the clock is slewed back (adjtime: it runs slower until
  corrected, at most ~2000 s per correction), never stepped back, so flow times and the WAL's
  never run backwards;
- at most one correction per `min_interval_s`;
- the estimate is the bus's time plus half the call's round trip (the bus stamps its answer
  when it sends it);
- after a step the new time is saved where the next boot takes its floor from;
- every step is logged (ClockStep) so the capture can rebase what it holds: packets the kernel
  stamped on the old clock and the flows still open move forward with the clock, so a step in
  the middle of a conversation neither ends its flow early nor splits it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClockStep:
    """One forward step: every time read before it is below before_ns (the clock just before
    the step), every time read after it is at least before_ns + delta_ns."""

    before_ns: int
    delta_ns: int

    def rebase(self, ns: int) -> int:
        """A time read on the old clock, on the new one."""
        return ns + self.delta_ns if ns < self.before_ns else ns


@dataclass
class ClockFollower:
    """Observes the bus's time after each successful call; thread-safe."""

    enabled: bool
    step_to_ns: Callable[[int], None]
    slew_by_ns: Callable[[int], None] = lambda ns: None
    save_floor: Callable[[], None] = lambda: None
    threshold_ns: int = 2_000_000_000
    min_interval_s: float = 60.0
    clock_ns: Callable[[], int] = time.time_ns
    monotonic: Callable[[], float] = time.monotonic
    offset_s: float = 0.0
    steps: int = 0
    slews: int = 0
    step_log: list[ClockStep] = field(default_factory=list)
    _last_step: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> int:
        """The clock, read so that every step it is after is already in step_log (a step
        and its entry are made under the same lock)."""
        with self._lock:
            return self.clock_ns()

    def steps_since(self, seen: int) -> list[ClockStep]:
        """The steps after the first `seen` (any thread)."""
        with self._lock:
            return self.step_log[seen:]

    def observe(self, bus_ns: int, sent_ns: int, received_ns: int) -> None:
        """One answer: the bus's stamp, and our clock when the call went out and came back."""
        rtt = max(0, received_ns - sent_ns)
        offset = bus_ns + rtt // 2 - received_ns  # > 0: our clock is behind
        with self._lock:
            self.offset_s = offset / 1e9
            if not self.enabled or abs(offset) <= self.threshold_ns:
                return
            now = self.monotonic()
            if self._last_step is not None and now - self._last_step < self.min_interval_s:
                return
            self._last_step = now
            if offset < 0:
                self._slew(offset)
                return
            before = self.clock_ns()
            try:
                self.step_to_ns(before + offset)
            except OSError as exc:
                log.warning("cannot step the clock %.1f s to the bus's: %s", offset / 1e9, exc)
                return
            self.step_log.append(ClockStep(before, offset))
            self.steps += 1
            self.offset_s = 0.0
        log.info("clock stepped %.1f s forward to the bus's time", offset / 1e9)
        try:
            self.save_floor()
        except OSError as exc:
            log.warning("cannot save the clock floor: %s", exc)

    def _slew(self, offset: int) -> None:
        delta = max(offset, -MAX_SLEW_NS)
        try:
            self.slew_by_ns(delta)
        except OSError as exc:
            log.warning("cannot slew the clock %.1f s back to the bus's: %s", delta / 1e9, exc)
            return
        self.slews += 1
        log.info(
            "clock %.1f s ahead of the bus's: slewing %.1f s back", -offset / 1e9, -delta / 1e9
        )


#: adjtime() refuses larger corrections (glibc: about INT_MAX microseconds)
MAX_SLEW_NS = 2000 * 1_000_000_000


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


def _adjtime(delta: _Timeval | None, old: _Timeval | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if (
        libc.adjtime(
            ctypes.byref(delta) if delta is not None else None,
            ctypes.byref(old) if old is not None else None,
        )
        != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def slew_system_clock(ns: int) -> None:
    """adjtime(2): make CLOCK_REALTIME run slower or faster until it has moved by ns (needs
    CAP_SYS_TIME); it never jumps."""
    sec, rest = divmod(ns, 1_000_000_000)  # tv_usec must be in [0, 1e6)
    _adjtime(_Timeval(sec, rest // 1000), None)


def pending_slew_ns() -> int:
    """The correction adjtime(2) still has to make (reads it, changes nothing)."""
    old = _Timeval(0, 0)
    _adjtime(None, old)
    return int(old.tv_sec) * 1_000_000_000 + int(old.tv_usec) * 1000
