"""The update's state machine, persisted on /data so that a power cut at any point resumes or
falls back.

    idle --start--> verifying --verified--> writing --written--> written --try--> trying
      ^                 |                   |  ^ chunk                              |
      |                 +--refused--+       +--+ (progress after each chunk)        |
      +----------- refused ---------+-------+                     healthy / failed  |
                                                                                     v
                                              committed  or  rolled_back  <----------+

- `start` is allowed from every state except trying (a trial must end first); from writing
  with the same bundle it resumes at the recorded chunk;
- a refusal (bad signature, hash, downgrade, truncation, an I/O error) goes back to idle with
  the reason in `last_result`: nothing was switched;
- `try` is taken after tryboot.txt names the new slot and before the reboot that asks the
  firmware to try it; `healthy` after config.txt names it (the commit); `failed` when the trial
  slot did not become healthy, or the box came back on the old slot (reset, power cut or crash
  during the trial): the slot is marked bad and the old one stays committed.

The record is one JSON file, replaced atomically (write, fsync, rename, fsync the directory):
after a power cut it holds the last state entered, never a mix.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import time
from pathlib import Path
from typing import Any

from appliance.errors import CommandError


class State(enum.Enum):
    IDLE = "idle"
    VERIFYING = "verifying"
    WRITING = "writing"
    WRITTEN = "written"
    TRYING = "trying"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"


class Event(enum.Enum):
    START = "start"
    VERIFIED = "verified"
    REFUSED = "refused"
    CHUNK = "chunk"
    WRITTEN = "written"
    TRY = "try"
    HEALTHY = "healthy"
    FAILED = "failed"


S, E = State, Event
TRANSITIONS: dict[tuple[State, Event], State] = {
    **{(s, E.START): S.VERIFYING for s in State if s is not S.TRYING},
    (S.VERIFYING, E.VERIFIED): S.WRITING,
    (S.VERIFYING, E.REFUSED): S.IDLE,
    (S.WRITING, E.CHUNK): S.WRITING,
    (S.WRITING, E.REFUSED): S.IDLE,
    (S.WRITING, E.WRITTEN): S.WRITTEN,
    (S.WRITTEN, E.REFUSED): S.IDLE,
    (S.WRITTEN, E.TRY): S.TRYING,
    (S.TRYING, E.HEALTHY): S.COMMITTED,
    (S.TRYING, E.FAILED): S.ROLLED_BACK,
}

#: how many past results the record keeps for reporting (phase 2 sends them to the bus)
HISTORY = 10


class TransitionError(CommandError):
    """An event that the current state does not allow (a bug, or a second updater)."""


@dataclasses.dataclass
class Record:
    """What /data/update/state.json holds."""

    state: State = State.IDLE
    #: SHA-256 of the bundle's manifest: the update in progress
    bundle: str = ""
    version: str = ""
    build: int = 0
    source: str = ""
    target: str = ""
    previous: str = ""
    #: next (file index, chunk index) to write
    progress: tuple[int, int] = (0, 0)
    health_timeout: float = 300.0
    #: boots of the trial slot seen while trying (0: the trial never reached the system)
    trial_boots: int = 0
    #: per slot: {"status": empty|writing|written|good|bad, "version": str, "build": int}
    slots: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    last_result: dict[str, Any] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["state"] = self.state.value
        doc["progress"] = list(self.progress)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Record:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in doc.items() if k in fields}
        values["state"] = State(values.get("state", "idle"))
        values["progress"] = tuple(values.get("progress", (0, 0)))
        return cls(**values)


def advance(record: Record, event: Event, **changes: Any) -> Record:
    """The record after event (with changes applied); TransitionError if not allowed."""
    after = TRANSITIONS.get((record.state, event))
    if after is None:
        raise TransitionError(f"update: {event.value} is not possible while {record.state.value}")
    return dataclasses.replace(record, state=after, **changes)


def result(record: Record, outcome: str, reason: str, now: float | None = None) -> dict[str, Any]:
    """A result entry for last_result/history."""
    return {
        "result": outcome,
        "reason": reason,
        "version": record.version,
        "build": record.build,
        "slot": record.target,
        "at": int(now if now is not None else time.time()),
    }


def with_result(record: Record, entry: dict[str, Any]) -> dict[str, Any]:
    """Changes recording entry as the last result (and in the bounded history)."""
    return {"last_result": entry, "history": [*record.history, entry][-HISTORY:]}


class Store:
    """The record's file; load() of a missing file is a fresh idle record."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json"

    def load(self) -> Record:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return Record()
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read the update state {self.path}: {exc}") from exc
        return Record.from_json(doc)

    def save(self, record: Record) -> None:
        data = json.dumps(record.to_json(), sort_keys=True, indent=1).encode() + b"\n"
        replace_durably(self.path, data)


def replace_durably(path: Path, data: bytes) -> None:
    """Replace path's content with data so that a power cut leaves the old or the new file:
    write a temporary file, fsync it, rename it over path, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, an unlink) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
