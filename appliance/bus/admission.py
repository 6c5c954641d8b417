"""Admission control: how many requests the bus works on at once, and what it says when busy.

- Below `max_inflight` concurrent requests (and a store queue below its bound): admit.
- From `max_inflight` to `hard_max`, or when forced (`overload`, BUS_OVERLOAD=1): answer RETRY for
  every envelope with a backoff hint that grows with the load, so that a fleet of agents spreads
  its retries instead of hammering in step.
- Above `hard_max`: refuse the whole call with RESOURCE_EXHAUSTED and the same hint in the
  trailing metadata (`retry-after-ms`, and gRPC's own `grpc-retry-pushback-ms`); nothing is read.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass


class Verdict(enum.Enum):
    ADMIT = "admit"
    RETRY = "retry"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    backoff_hint_ms: int = 0
    reason: str = ""


class Admission:
    """Counts requests in flight; decide() at entry, release() at exit of every admitted call."""

    def __init__(
        self,
        *,
        max_inflight: int,
        hard_max: int,
        backoff_hint_ms: int,
        max_backoff_hint_ms: int,
        max_store_queue_rows: int,
        store_pending_rows: Callable[[], int],
        overload: bool = False,
    ) -> None:
        self.max_inflight = max_inflight
        self.hard_max = hard_max
        self.base_hint_ms = backoff_hint_ms
        self.max_hint_ms = max_backoff_hint_ms
        self.max_store_queue_rows = max_store_queue_rows
        self.overload = overload
        self._store_pending_rows = store_pending_rows
        self._inflight = 0
        self._lock = threading.Lock()

    @property
    def inflight(self) -> int:
        return self._inflight

    def _hint(self, load: float) -> int:
        # Linear in how far past the soft limit we are: at the soft limit the base hint, at the
        # hard limit (or when forced) four times the base, capped.
        return int(min(self.max_hint_ms, self.base_hint_ms * (1.0 + 3.0 * min(load, 1.0))))

    def decide(self) -> Decision:
        """Take a slot and return ADMIT, or return RETRY / REFUSE without taking one."""
        with self._lock:
            n = self._inflight
            if n >= self.hard_max:
                return Decision(Verdict.REFUSE, self._hint(1.0), "bus at hard_max concurrent calls")
            self._inflight = n + 1
        if self.overload:
            self.release()
            return Decision(Verdict.RETRY, self._hint(1.0), "bus overloaded (forced)")
        if n >= self.max_inflight:
            self.release()
            load = (n - self.max_inflight + 1) / max(1, self.hard_max - self.max_inflight)
            return Decision(Verdict.RETRY, self._hint(load), "bus busy: too many calls in flight")
        pending = self._store_pending_rows()
        if pending > self.max_store_queue_rows:
            self.release()
            return Decision(Verdict.RETRY, self._hint(1.0), "bus busy: store is behind")
        return Decision(Verdict.ADMIT)

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1
