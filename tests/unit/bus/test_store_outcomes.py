"""The store's outcome per record, and a writer that no record can kill."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.bus.chain import EventKind
from appliance.bus.query import count, open_reader
from appliance.bus.store import FlowStore, Outcome, Record, StoreUnavailable


def _sig(seq: int, salt: int = 0) -> bytes:
    return (seq + salt * 1_000_003).to_bytes(8, "big") * 8


def _rec(
    seq: int,
    *,
    key: str | None = None,
    prev: bytes | None = None,
    salt: int = 0,
    agent: str = "a",
    key_id: str = "k1",
    bytes_tx: int = 10,
) -> Record:
    sig = _sig(seq, salt)
    prev = _sig(seq - 1, salt) if prev is None else prev
    row = (agent, key or f"key-{seq}-{salt}", seq, 1, 1, "flow", "192.0.2.1", "198.51.100.1",
           1, 2, "TCP", bytes_tx, 20, 1, 2, 0, 0, 0, b"env" + sig, key_id)  # fmt: skip
    return Record(row, prev, sig)


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    events: list[EventKind] = []
    s = FlowStore(tmp_path / "s.sqlite", sync="normal", on_event=events.append)
    s.events = events  # type: ignore[attr-defined]
    yield s
    s.close()


def _outcomes(store: FlowStore, records: list[Record]) -> list[Outcome]:
    return store.submit(records).result(10).outcomes


def test_retransmission_is_duplicate_and_other_content_under_the_same_key_is_conflict(
    store: FlowStore,
) -> None:
    first = _rec(1, prev=b"")
    assert _outcomes(store, [first]) == [Outcome.STORED]
    assert _outcomes(store, [first, first]) == [Outcome.DUPLICATE, Outcome.DUPLICATE]
    other = _rec(2, key=first.row[1])
    assert _outcomes(store, [other]) == [Outcome.CONFLICT]
    assert count(open_reader(store.path)) == 1


def test_a_seq_used_by_other_content_is_refused(store: FlowStore) -> None:
    assert _outcomes(store, [_rec(1, prev=b"")]) == [Outcome.STORED]
    assert _outcomes(store, [_rec(1, prev=b"", salt=1)]) == [Outcome.SEQ_REUSED]


def test_chain_links_are_checked_against_stored_neighbours(store: FlowStore) -> None:
    assert _outcomes(store, [_rec(1, prev=b""), _rec(2)]) == [Outcome.STORED] * 2
    forged_link = _rec(3, prev=b"\x07" * 64)
    assert _outcomes(store, [forged_link]) == [Outcome.CHAIN_BROKEN]
    assert _outcomes(store, [_rec(5)]) == [Outcome.STORED]  # its predecessor is not here yet
    wrong_sig = _rec(4, salt=9, prev=_sig(3))  # 5 named another sig as its predecessor
    assert _outcomes(store, [_rec(3), wrong_sig]) == [Outcome.STORED, Outcome.CHAIN_BROKEN]
    assert _outcomes(store, [_rec(4)]) == [Outcome.STORED]
    assert count(open_reader(store.path)) == 5


def test_a_bad_record_in_a_batch_costs_only_itself(store: FlowStore) -> None:
    batch = [_rec(1, prev=b""), _rec(2, bytes_tx=1 << 63), _rec(3)]
    assert _outcomes(store, batch) == [Outcome.STORED, Outcome.UNSTORABLE, Outcome.STORED]
    assert _outcomes(store, [_rec(4)]) == [Outcome.STORED]  # the writer carries on
    assert store.healthy()


def test_rekey_and_restart_and_gap_events(tmp_path: Path) -> None:
    events: list[EventKind] = []
    store = FlowStore(
        tmp_path / "s.sqlite", sync="normal", gap_settle_s=1.0, on_event=events.append
    )
    try:
        _outcomes(store, [_rec(1, prev=b""), _rec(2)])
        _outcomes(store, [_rec(9, prev=b"")])  # an unclean stop: a new chain start, 3..8 lost
        _outcomes(store, [_rec(1, prev=b"", key_id="k2", key="new-1")])  # re-provisioned
        store._idle(sqlite3.connect(store.path, isolation_level=None))  # a sweep, now
        assert events == [EventKind.START, EventKind.RESTART, EventKind.REKEY]
        store._clock_ns = lambda: 2 * 10**18  # type: ignore[method-assign]  # much later
        conn = sqlite3.connect(store.path, isolation_level=None)
        store._idle(conn)
        store._idle(conn)
        assert events.count(EventKind.GAP) == 1
        kinds = [r[0] for r in conn.execute("SELECT kind FROM chain_events ORDER BY id")]
        assert kinds == ["start", "restart", "rekey", "gap"]
    finally:
        store.close()


def test_chain_state_survives_a_restart_of_the_store(tmp_path: Path) -> None:
    store = FlowStore(tmp_path / "s.sqlite", sync="normal")
    _outcomes(store, [_rec(1, prev=b""), _rec(2)])
    store.close()
    store = FlowStore(tmp_path / "s.sqlite", sync="normal")
    try:
        assert _outcomes(store, [_rec(3, prev=b"\x01" * 64)]) == [Outcome.CHAIN_BROKEN]
        assert _outcomes(store, [_rec(3)]) == [Outcome.STORED]
    finally:
        store.close()


def test_a_version_1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        """CREATE TABLE records (id INTEGER PRIMARY KEY, agent_id TEXT NOT NULL,
        idem_key TEXT NOT NULL, seq INTEGER NOT NULL, ts_ns INTEGER NOT NULL,
        received_ns INTEGER NOT NULL, kind TEXT NOT NULL, src_ip TEXT, dst_ip TEXT,
        src_port INTEGER, dst_port INTEGER, proto TEXT, bytes_tx INTEGER, bytes_rx INTEGER,
        packets_tx INTEGER, packets_rx INTEGER, start_ms INTEGER, end_ms INTEGER, vlan INTEGER,
        envelope BLOB NOT NULL, UNIQUE (agent_id, idem_key));
        INSERT INTO records VALUES (1, 'a', 'old', 1, 1, 1, 'flow', NULL, NULL, NULL, NULL,
        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, x'00');"""
    )
    conn.commit()
    conn.close()
    store = FlowStore(path, sync="normal")
    try:
        assert _outcomes(store, [_rec(1, prev=b"")]) == [Outcome.STORED]  # old rows: no key id
    finally:
        store.close()
    assert count(open_reader(path)) == 2


def test_database_failure_fails_the_group_and_marks_the_store_unhealthy_until_it_commits(
    store: FlowStore, tmp_path: Path
) -> None:
    # the writer may still be opening its connection (switching to WAL takes a lock): wait
    blocker = sqlite3.connect(store.path, timeout=30, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    store_conn_timeout = 6
    with pytest.raises(StoreUnavailable):
        store.submit([_rec(1, prev=b"")]).result(store_conn_timeout + 10)
    assert not store.healthy()
    blocker.execute("ROLLBACK")
    assert _outcomes(store, [_rec(1, prev=b"")]) == [Outcome.STORED]
    assert store.healthy()
