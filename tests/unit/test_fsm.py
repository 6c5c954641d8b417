"""The shared state-machine helper: moves only along its table, fails loudly otherwise."""

from __future__ import annotations

import enum
from pathlib import Path

import pytest

from appliance.fsm import IllegalTransition, Machine
from appliance.qemu import boards
from appliance.qemu.machine import TRANSITIONS as BOARD_TRANSITIONS
from appliance.qemu.machine import Event as BoardEvent
from appliance.qemu.machine import Machine as BoardMachine
from appliance.qemu.machine import State as BoardState
from appliance.wal.recovery import TRANSITIONS, RecoveryEvent, RecoveryState


class Door(enum.Enum):
    SHUT = "shut"
    OPEN = "open"


class Push(enum.Enum):
    OPEN = "open"
    SHUT = "shut"
    KNOCK = "knock"


TABLE = {
    (Door.SHUT, Push.OPEN): Door.OPEN,
    (Door.OPEN, Push.SHUT): Door.SHUT,
    (Door.SHUT, Push.KNOCK): Door.SHUT,
}


def test_move_follows_the_table_and_reports_only_real_changes() -> None:
    seen: list[tuple[Door, Push, Door]] = []
    door = Machine("door", TABLE, Door.SHUT, on_change=lambda *t: seen.append(t))
    assert door.move(Push.KNOCK) is Door.SHUT
    assert door.move(Push.OPEN) is Door.OPEN
    assert door.can(Push.SHUT) and not door.can(Push.OPEN)
    assert seen == [(Door.SHUT, Push.OPEN, Door.OPEN)]


def test_illegal_move_raises_naming_machine_state_and_event_and_keeps_the_state() -> None:
    door = Machine("front door", TABLE, Door.OPEN)
    with pytest.raises(IllegalTransition, match="front door: no transition from OPEN on KNOCK"):
        door.move(Push.KNOCK)
    assert door.state is Door.OPEN
    assert issubclass(IllegalTransition, RuntimeError)


def test_wal_lifecycle_reaches_every_state_and_every_state_can_close() -> None:
    reached = {RecoveryState.CLOSED}
    frontier = [RecoveryState.CLOSED]
    while frontier:
        state = frontier.pop()
        for (before, _), after in TRANSITIONS.items():
            if before is state and after not in reached:
                reached.add(after)
                frontier.append(after)
    assert reached == set(RecoveryState)
    for state in RecoveryState:
        if state is not RecoveryState.CLOSED:
            # every state leads to CLOSED: directly, or through FAILED or READY
            m = Machine("wal", TRANSITIONS, state)
            while m.state is not RecoveryState.CLOSED:
                m.move(RecoveryEvent.CLOSE if m.can(RecoveryEvent.CLOSE) else RecoveryEvent.ERROR)


def test_board_lifecycle_can_always_be_cut_and_refuses_ready_before_power_on(
    tmp_path: Path,
) -> None:
    for state in BoardState:  # pulling the power is legal whatever the board is doing
        assert Machine("board", BOARD_TRANSITIONS, state).move(BoardEvent.OFF) is BoardState.OFF
    board = BoardMachine(boards.load("virt"), tmp_path / "card.img", tmp_path)
    board.power_cut()  # off already: a no-op, not an error
    assert board.state is BoardState.OFF
    with pytest.raises(IllegalTransition, match="virt board: no transition from OFF on READY"):
        board._lifecycle.move(BoardEvent.READY)
    assert board.state is BoardState.OFF
