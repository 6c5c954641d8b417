"""A small explicit state machine: an Enum of states, an Enum of events, one transition table.

Contract (for every lifecycle that adopts it: WAL recovery, the forwarder's connection, the
provisioning dialogue on the device, the bus server and the QEMU board harness):

- States and events are members of two `enum.Enum` classes owned by the component.
- The table is a plain `dict[(state, event), next state]` written at module level next to the
  Enums, so the whole lifecycle reads in one place. A pair that is not in the table is an
  illegal move.
- `Machine.move(event)` returns the new state, or raises `IllegalTransition` (a RuntimeError:
  an illegal move is a bug in the caller, not a condition to handle) whose message names the
  machine, the current state and the event. The state is unchanged when it raises.
- `on_change(before, event, after)`, if given, is called after every move that changes the
  state (not for self-loops): the one place a component logs or counts its transitions.
- Not thread-safe by itself: the owner calls move() under the lock that guards its state.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


class IllegalTransition(RuntimeError):
    """move() was called with an event the transition table has no entry for."""


class Machine(Generic[S, E]):
    """The current state of one lifecycle, moved only through its transition table."""

    def __init__(
        self,
        name: str,
        table: Mapping[tuple[S, E], S],
        initial: S,
        *,
        on_change: Callable[[S, E, S], None] | None = None,
    ) -> None:
        self.name = name
        self.table = table
        self.state = initial
        self._on_change = on_change

    def can(self, event: E) -> bool:
        """Whether event is a legal move from the current state."""
        return (self.state, event) in self.table

    def move(self, event: E) -> S:
        """Take the transition for event from the current state; IllegalTransition if none."""
        before = self.state
        after = self.table.get((before, event))
        if after is None:
            raise IllegalTransition(
                f"{self.name}: no transition from {before.name} on {event.name}"
            )
        self.state = after
        if after is not before and self._on_change is not None:
            self._on_change(before, event, after)
        return after
