"""The agent's chain state across restarts: sequence numbers and the previous signature.

Sequence numbers must never repeat and the chain must never be forged, yet writing the state on
every sealed record would wear the card. So the state file holds a *lease*:

- while running, the file says `clean: false` and `seq_lease: L`; sealing may use numbers up to
  L, and the file is rewritten (write temp, fsync, rename) only when the lease runs out
  (every LEASE records);
- on a clean shutdown it records the exact last `seq` and `prev_sig` with `clean: true`, and the
  next start continues the chain without a gap;
- after a crash the file still says `clean: false`: the agent starts at the lease's end (numbers
  sealed before the crash are never reused) with an empty `prev_sig`. The bus sees a chain that
  restarts: the honest mark of an unclean stop, whose last flush window may be lost.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import CommandError

LEASE = 100_000


@dataclass
class ChainStart:
    """Where a new run continues: the last used seq and the prev_sig for the next envelope."""

    seq: int
    prev_sig: bytes
    clean: bool


class ChainState:
    """Owns the chain state file (see the module docstring)."""

    def __init__(self, path: Path, lease: int = LEASE) -> None:
        self.path = path
        self.lease = lease
        self._lease_end = 0

    def start(self) -> ChainStart:
        """Read the file (a fresh box has none), take a new lease, return where to continue."""
        state: dict[str, object] = {}
        if self.path.exists():
            try:
                state = json.loads(self.path.read_text())
                if not isinstance(state, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError) as exc:
                raise CommandError(
                    f"chain state {self.path} is unreadable ({exc}); move it aside to start a "
                    "new chain"
                ) from exc
        clean = bool(state.get("clean"))
        if clean:
            start = ChainStart(
                int(state.get("seq", 0)),  # type: ignore[call-overload]
                bytes.fromhex(str(state.get("prev_sig", ""))),
                True,
            )
        else:
            start = ChainStart(int(state.get("seq_lease", 0)), b"", not state)  # type: ignore[call-overload]
        self._write(seq_lease=start.seq + self.lease, clean=False)
        return start

    def reserve(self, seq: int) -> None:
        """Called with each seq about to be used; extends the lease when it runs out."""
        if seq > self._lease_end:
            self._write(seq_lease=seq + self.lease, clean=False)

    def finish(self, seq: int, prev_sig: bytes) -> None:
        """Clean shutdown: the next run continues exactly here."""
        self._write(
            seq_lease=max(self._lease_end, seq), clean=True, seq=seq, prev_sig=prev_sig.hex()
        )

    def _write(self, *, seq_lease: int, clean: bool, **extra: object) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"seq_lease": seq_lease, "clean": clean, **extra}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self._lease_end = seq_lease
