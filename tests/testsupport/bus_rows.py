"""Reading what a test's bus stored, as the board tests wait for a box to deliver."""

from __future__ import annotations

import time

from appliance.bus.query import Query, open_reader, query
from appliance.bus.server import BusServer


def stored_rows(
    bus: BusServer,
    agent: str,
    *,
    kind: str | None = None,
    timeout: float = 0.0,
    more_than: int = 0,
    poll_s: float = 1.0,
) -> list[dict[str, object]]:
    """Every record of agent (of kind, or of every kind) the bus stored, once there are more
    than more_than, or what there is when timeout seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        conn = open_reader(bus.store.path)
        try:
            rows = [dict(r) for r in query(conn, Query(agent=agent, kind=kind, limit=None))]
        finally:
            conn.close()
        if len(rows) > more_than or time.monotonic() > deadline:
            return rows
        time.sleep(poll_s)
