"""The update state machine: its transitions and its record on /data."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.update.state import (
    HISTORY,
    TRANSITIONS,
    Event,
    Record,
    State,
    Store,
    TransitionError,
    advance,
    result,
    with_result,
)


def test_the_happy_path_runs_idle_to_committed() -> None:
    rec = Record()
    for event in (Event.START, Event.VERIFIED, Event.CHUNK, Event.WRITTEN, Event.TRY):
        rec = advance(rec, event)
    assert rec.state is State.TRYING
    assert advance(rec, Event.HEALTHY).state is State.COMMITTED
    assert advance(rec, Event.FAILED).state is State.ROLLED_BACK


@pytest.mark.parametrize("state", [State.VERIFYING, State.WRITING, State.WRITTEN])
def test_a_refusal_before_the_switch_goes_back_to_idle(state: State) -> None:
    assert advance(Record(state=state), Event.REFUSED).state is State.IDLE


def test_nothing_starts_while_a_trial_runs_and_a_trial_cannot_be_refused() -> None:
    with pytest.raises(TransitionError, match="start is not possible while trying"):
        advance(Record(state=State.TRYING), Event.START)
    with pytest.raises(TransitionError):
        advance(Record(state=State.TRYING), Event.REFUSED)


def test_only_a_written_slot_can_be_tried_and_only_a_trial_committed() -> None:
    for state in State:
        if state is not State.WRITTEN:
            assert (state, Event.TRY) not in TRANSITIONS
        if state is not State.TRYING:
            assert (state, Event.HEALTHY) not in TRANSITIONS


def test_the_record_survives_a_save_and_load(tmp_path: Path) -> None:
    store = Store(tmp_path / "update")
    assert store.load() == Record()
    rec = Record(state=State.WRITING, bundle="ab" * 32, progress=(1, 7), target="b")
    rec = advance(rec, Event.CHUNK, **with_result(rec, result(rec, "refused", "x", now=5)))
    store.save(rec)
    assert store.load() == rec
    assert not (tmp_path / "update/state.json.tmp").exists()


def test_history_is_bounded() -> None:
    rec = Record()
    for n in range(HISTORY + 5):
        rec = Record(**{**rec.__dict__, **with_result(rec, result(rec, "refused", str(n)))})
    assert len(rec.history) == HISTORY
    assert rec.last_result["reason"] == str(HISTORY + 4)
