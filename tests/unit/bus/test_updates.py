"""The bus's update store, offer rule and per-peer rate, without a network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry
from testsupport.update_rig import make_bundle

from appliance.bus.gate import Caller
from appliance.bus.updates import PeerRate, UpdateMetrics, UpdateService, UpdateStore
from appliance.errors import CommandError
from appliance.wire import pb

KEY = SigningKey(bytes(range(50, 82)))


class Aborted(Exception):
    pass


class Context:
    def __init__(self) -> None:
        self.trailing: Any = ()

    def abort(self, code: Any, details: str) -> None:
        raise Aborted(code, details)

    def set_trailing_metadata(self, md: Any) -> None:
        self.trailing = md


def _service(tmp_path: Path, rate: float = 0) -> UpdateService:
    store = UpdateStore(tmp_path / "updates")
    return UpdateService(
        store, UpdateMetrics(CollectorRegistry()), max_chunk=65536, rate_bytes_per_peer=rate
    )


def _check(svc: UpdateService, agent: str, **status: Any) -> Any:
    status.setdefault("board", "rpi")
    req = pb.UpdateCheckRequest(status=pb.UpdateStatus(**status)).SerializeToString()
    return pb.UpdateOffer.FromString(svc.check(req, Context(), Caller(agent, KEY.verify_key)))


def test_a_token_bucket_per_peer_grants_a_second_of_burst_then_says_how_long_to_wait() -> None:
    now = [0.0]
    rate = PeerRate(1000, clock=lambda: now[0])
    assert rate.take("a", 600) == 0 and rate.take("a", 400) == 0
    assert rate.take("a", 500) == pytest.approx(0.5)
    assert rate.take("b", 1000) == 0  # another peer has its own bucket
    now[0] += 0.5
    assert rate.take("a", 500) == 0
    now[0] += 100  # idle time refills at most one second's worth
    assert rate.take("a", 1000) == 0 and rate.take("a", 1) > 0


def test_the_agents_own_desired_version_wins_over_its_groups(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    b2 = svc.store.upload(make_bundle(tmp_path, KEY, build=2000), [KEY.verify_key])
    b3 = svc.store.upload(make_bundle(tmp_path, KEY, version="0.3.0", build=3000), [KEY.verify_key])
    assert _check(svc, "x", group="lab").version == ""  # nothing desired yet
    svc.store.set_desired("group", "lab", "0.2.0")
    svc.store.set_desired("agent", "x", "0.3.0")
    assert _check(svc, "x", group="lab").bundle == b3.sha256
    assert _check(svc, "y", group="lab").bundle == b2.sha256
    assert _check(svc, "z", group="other").version == ""
    # not offered to another board, nor to a box already running it
    assert _check(svc, "y", group="lab", board="pi9").version == ""
    assert _check(svc, "y", group="lab", version="0.2.0", build=2000).version == ""
    assert svc.store.clear_desired("agent", "x")
    assert _check(svc, "x", group="lab").bundle == b2.sha256
    assert {r.agent_id for r in svc.store.reports()} == {"x", "y", "z"}


def test_set_of_a_version_not_stored_is_refused(tmp_path: Path) -> None:
    store = UpdateStore(tmp_path / "u")
    with pytest.raises(CommandError, match=r"no bundle of version '9\.9'"):
        store.set_desired("group", "lab", "9.9")


def test_a_report_keeps_at_most_200_characters_of_each_text(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    _check(svc, "x", last_reason="r" * 5000)
    assert len(svc.store.reports()[0].last_reason) == 200


def test_fetch_serves_by_offset_at_most_max_chunk_and_marks_the_end(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    path = make_bundle(tmp_path, KEY)
    info = svc.store.upload(path, [KEY.verify_key])
    data = path.read_bytes()
    caller = Caller("x", KEY.verify_key)

    def fetch(offset: int, length: int) -> Any:
        req = pb.UpdateFetchRequest(bundle=info.sha256, offset=offset, length=length)
        return pb.UpdateChunk.FromString(svc.fetch(req.SerializeToString(), Context(), caller))

    first = fetch(0, 1 << 20)
    assert first.data == data[:65536] and not first.eof
    last = fetch(len(data) - 10, 65536)
    assert last.data == data[-10:] and last.eof
    with pytest.raises(Aborted, match="no bundle"):
        req = pb.UpdateFetchRequest(bundle="0" * 64, offset=0, length=10)
        svc.fetch(req.SerializeToString(), Context(), caller)


def test_fetch_above_the_peer_rate_is_refused_with_a_retry_hint(tmp_path: Path) -> None:
    svc = _service(tmp_path, rate=65536)
    now = [0.0]
    svc.rate.clock = lambda: now[0]
    info = svc.store.upload(make_bundle(tmp_path, KEY), [KEY.verify_key])
    req = pb.UpdateFetchRequest(bundle=info.sha256, offset=0, length=65536).SerializeToString()
    caller = Caller("x", KEY.verify_key)
    svc.fetch(req, Context(), caller)
    ctx = Context()
    with pytest.raises(Aborted, match="RESOURCE_EXHAUSTED"):
        svc.fetch(req, ctx, caller)
    assert ("retry-after-ms", "1000") in ctx.trailing
    now[0] += 1.0
    svc.fetch(req, Context(), caller)


def test_a_store_made_before_delta_downloads_gains_the_fetched_column(tmp_path: Path) -> None:
    """An update store of an older bus (reports without `fetched`): read-only readers see 0,
    opening it adds the column, old rows read 0 and new reports keep what the box fetched."""
    import sqlite3

    from appliance.bus.updates import DB_NAME, read_reports

    old = ["agent_id", "version", "downloaded", "reported_at"]
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute(
        "CREATE TABLE reports (agent_id TEXT PRIMARY KEY, version TEXT, build INTEGER, "
        "board TEXT, slot TEXT, state TEXT, last_result TEXT, last_reason TEXT, "
        "last_version TEXT, last_at INTEGER, update_group TEXT, download TEXT, "
        "downloaded INTEGER, reported_at INTEGER)"
    )
    conn.execute(f"INSERT INTO reports ({', '.join(old)}) VALUES ('branch-1', '0.1.0', 5, 9)")
    conn.commit()
    conn.close()
    assert read_reports(tmp_path)["branch-1"].fetched == 0
    store = UpdateStore(tmp_path)
    try:
        assert [(r.agent_id, r.version, r.fetched) for r in store.reports()] == [
            ("branch-1", "0.1.0", 0)
        ]
        store.record("branch-2", pb.UpdateStatus(version="0.1.0", downloaded=90, fetched=12))
        assert {r.agent_id: r.fetched for r in store.reports()} == {"branch-1": 0, "branch-2": 12}
    finally:
        store.close()
    assert read_reports(tmp_path)["branch-2"].fetched == 12
