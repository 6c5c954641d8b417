"""The store: group commit, dedupe, and the query filters behind `bus query`."""

from pathlib import Path

import pytest

from appliance.bus.cli import parse_time
from appliance.bus.query import Query, count, open_reader, query
from appliance.bus.store import FlowStore, Record, StoreClosed

_SEQ = iter(range(1, 10**6))


def _row(agent: str, key: str, ts: int, src: str, dst: str, sport: int, dport: int, proto: str):
    row = (agent, key, next(_SEQ), ts, ts, "flow", src, dst, sport, dport, proto,
           10, 20, 1, 2, ts // 10**6, ts // 10**6, 0, b"env", "k1")  # fmt: skip
    return Record(row, b"", bytes(64))


def test_duplicates_are_stored_once_and_counted(tmp_path: Path) -> None:
    store = FlowStore(tmp_path / "s.sqlite", sync="normal")
    r = _row("a", "k1", 1, "192.0.2.1", "198.51.100.1", 1, 2, "TCP")
    first = store.submit([r]).result(5)
    again = store.submit([r, r]).result(5)
    store.close()
    assert (first.inserted, first.duplicates) == (1, 0)
    assert (again.inserted, again.duplicates) == (0, 2)
    assert count(open_reader(tmp_path / "s.sqlite")) == 1
    with pytest.raises(StoreClosed):
        store.submit([r])


def test_query_filters(tmp_path: Path) -> None:
    store = FlowStore(tmp_path / "s.sqlite", sync="normal")
    rows = [
        _row("a", "1", 1_000, "192.0.2.1", "198.51.100.1", 5000, 443, "TCP"),
        _row("a", "2", 2_000, "192.0.2.2", "198.51.100.1", 5001, 53, "UDP"),
        _row("b", "3", 3_000, "2001:db8::1", "2001:db8::2", 5002, 443, "TCP"),
    ]
    store.submit(rows).result(5)
    store.close()
    conn = open_reader(tmp_path / "s.sqlite")

    def keys(**kw: object) -> list[str]:
        return [r["idem_key"] for r in query(conn, Query(**kw))]  # type: ignore[arg-type]

    assert keys() == ["1", "2", "3"]
    assert keys(agent="a") == ["1", "2"]
    assert keys(address="198.51.100.1") == ["1", "2"]
    assert keys(port=443) == ["1", "3"]
    assert keys(proto="udp") == ["2"]
    assert keys(since_ns=2_000, until_ns=3_000) == ["2"]
    assert keys(limit=1) == ["1"]


def test_parse_time_forms() -> None:
    assert parse_time("10m", now=1000.0) == int(400 * 1e9)
    assert parse_time("1700000000") == 1_700_000_000 * 10**9
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000 * 10**9
    with pytest.raises(Exception, match="cannot read time"):
        parse_time("yesterday")
