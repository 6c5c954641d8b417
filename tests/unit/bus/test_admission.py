"""Admission decisions: admit, RETRY past the soft limit, refuse past the hard limit."""

from appliance.bus.admission import Admission, Verdict


def _admission(pending: int = 0, overload: bool = False) -> Admission:
    return Admission(
        max_inflight=2, hard_max=4, backoff_hint_ms=100, max_backoff_hint_ms=1000,
        max_store_queue_rows=10, store_pending_rows=lambda: pending, overload=overload,
    )  # fmt: skip


def test_admits_below_soft_limit_then_retries_then_refuses() -> None:
    a = _admission()
    assert [a.decide().verdict for _ in range(2)] == [Verdict.ADMIT, Verdict.ADMIT]
    retry = a.decide()
    assert retry.verdict is Verdict.RETRY and retry.backoff_hint_ms >= 100
    assert a.inflight == 2  # a RETRY does not keep its slot
    a._inflight = 4
    refuse = a.decide()
    assert refuse.verdict is Verdict.REFUSE and refuse.backoff_hint_ms > 0
    a._inflight = 0
    assert a.decide().verdict is Verdict.ADMIT


def test_hint_grows_with_load_and_is_capped() -> None:
    a = _admission()
    a._inflight = 2
    low = a.decide().backoff_hint_ms
    a._inflight = 3
    high = a.decide().backoff_hint_ms
    assert 100 <= low < high <= 1000


def test_forced_overload_and_store_backlog_answer_retry() -> None:
    assert _admission(overload=True).decide().verdict is Verdict.RETRY
    backlog = _admission(pending=11).decide()
    assert backlog.verdict is Verdict.RETRY and "store" in backlog.reason
    a = _admission(overload=True)
    a.decide()
    assert a.inflight == 0
