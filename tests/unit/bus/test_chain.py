"""The per-agent chain at ingest: runs of stored seqs, link checks both ways, events, gaps."""

from __future__ import annotations

import random

from appliance.bus.chain import MAX_RUNS, Chain, EventKind, Verdict


def _sig(seq: int) -> bytes:
    return seq.to_bytes(8, "big") * 8


def _add(chain: Chain, seq: int, prev: bytes | None = None) -> list[EventKind]:
    prev = _sig(seq - 1) if prev is None else prev
    assert chain.check(seq, prev, _sig(seq)) is Verdict.FITS
    return [e.kind for e in chain.add(seq, prev, _sig(seq))]


def test_in_order_envelopes_make_one_run_and_one_start_event() -> None:
    chain = Chain()
    assert _add(chain, 1, b"") == [EventKind.START]
    for seq in range(2, 50):
        assert _add(chain, seq) == []
    assert [(r.lo, r.hi) for r in chain.runs] == [(1, 49)]
    assert chain.gaps() == []


def test_out_of_order_batches_merge_into_one_run() -> None:
    chain = Chain()
    order = list(range(501, 1001)) + list(range(1, 501))
    for seq in order:
        _add(chain, seq, b"" if seq == 1 else None)
    assert [(r.lo, r.hi) for r in chain.runs] == [(1, 1000)]
    assert chain.runs[0].lo_prev == b"" and chain.runs[0].hi_sig == _sig(1000)


def test_random_arrival_order_ends_in_one_run() -> None:
    rng = random.Random(7)
    order = list(range(1, 2001))
    rng.shuffle(order)
    chain = Chain()
    for seq in order:
        _add(chain, seq, b"" if seq == 1 else None)
    assert [(r.lo, r.hi) for r in chain.runs] == [(1, 2000)]


def test_prev_sig_that_contradicts_the_stored_predecessor_is_broken() -> None:
    chain = Chain()
    _add(chain, 1, b"")
    assert chain.check(2, b"\x01" * 64, _sig(2)) is Verdict.BROKEN_PREV


def test_envelope_contradicted_by_its_stored_successor_is_broken() -> None:
    chain = Chain()
    _add(chain, 5)  # arrived first: names sig(4) as its predecessor
    assert chain.check(4, _sig(3), b"\x02" * 64) is Verdict.BROKEN_NEXT
    assert chain.check(4, _sig(3), _sig(4)) is Verdict.FITS


def test_stored_seq_is_inside() -> None:
    chain = Chain()
    for seq in range(1, 10):
        _add(chain, seq, b"" if seq == 1 else None)
    assert chain.check(5, _sig(4), _sig(5)) is Verdict.INSIDE
    assert chain.check(5, b"", b"\x09" * 64) is Verdict.INSIDE


def test_restart_with_empty_prev_sig_after_a_jump_is_accepted_as_restart() -> None:
    chain = Chain()
    for seq in range(1, 4):
        _add(chain, seq, b"" if seq == 1 else None)
    assert _add(chain, 100_001, b"") == [EventKind.RESTART]
    assert chain.gaps() == [(4, 100_000)]


def test_a_gap_is_reported_once_after_it_settles_and_not_when_filled_in_time() -> None:
    chain = Chain()
    _add(chain, 1, b"")
    _add(chain, 3)  # 2 is missing, for now
    assert chain.settled_gaps(now_ns=0, settle_ns=10) == []
    _add(chain, 2)  # a late batch fills it
    _add(chain, 6)  # 4 and 5 are missing for good
    assert chain.settled_gaps(now_ns=20, settle_ns=10) == []
    assert chain.settled_gaps(now_ns=35, settle_ns=10) == [(4, 5)]
    assert chain.settled_gaps(now_ns=99, settle_ns=10) == []  # reported once


def test_runs_are_bounded_per_chain() -> None:
    chain = Chain()
    for i in range(MAX_RUNS + 10):
        chain.add(2 * i + 1, b"", _sig(2 * i + 1))  # every other seq: a hole each
    assert len(chain.runs) == MAX_RUNS
    assert chain.runs[0].lo == 2 * 10 + 1  # the lowest were forgotten


def test_the_first_envelope_arriving_after_its_successors_is_no_restart() -> None:
    """Two forwarder workers: the batch holding seq 1 can be stored after the next one. Its
    empty prev_sig is the chain's beginning, not an unclean stop (a power-cut campaign on the
    emulated Pi counted it as a restart)."""
    chain = Chain()
    events = [_add(chain, seq) for seq in range(3, 7)]
    events += [_add(chain, seq, b"" if seq == 1 else None) for seq in (1, 2)]
    assert events == [[EventKind.START], [], [], [], [], []]
    assert [(r.lo, r.hi) for r in chain.runs] == [(1, 6)]
    assert _add(chain, 100_001, b"") == [EventKind.RESTART]
