"""The committed generated code is exactly what proto/ generates."""

from pathlib import Path

from appliance.devkit import codegen


def test_regenerating_from_proto_changes_nothing(tmp_path: Path) -> None:
    files = codegen.generate(tmp_path)
    assert files, "protoc generated nothing"
    for f in files:
        committed = codegen.OUT_DIR / f.name
        assert committed.exists(), f"{f.name} is generated but not committed: run make proto"
        assert committed.read_bytes() == f.read_bytes(), f"{f.name} is stale: run make proto"
    committed_names = {p.name for p in codegen.OUT_DIR.iterdir() if p.is_file()}
    assert committed_names == {f.name for f in files}


def test_seed_field_numbers_are_unchanged() -> None:
    from appliance.wire import Envelope, FlowEvent, PublishAck

    flow = {f.name: f.number for f in FlowEvent.DESCRIPTOR.fields if f.number <= 11}
    assert flow == {
        "src_ip": 1,
        "dst_ip": 2,
        "src_port": 3,
        "dst_port": 4,
        "proto": 5,
        "bytes_tx": 6,
        "bytes_rx": 7,
        "duration_ms": 8,
        "start_time": 9,
        "end_time": 10,
        "flags": 11,
    }
    env = {f.name: f.number for f in Envelope.DESCRIPTOR.fields if f.number <= 6}
    assert env == {
        "version": 1,
        "ts_ns": 2,
        "idempotency_key": 3,
        "flow": 4,
        "sig": 5,
        "prev_sig": 6,
    }
    assert {v.name: v.number for v in PublishAck.Status.DESCRIPTOR.values} == {
        "OK": 0,
        "RETRY": 1,
        "INVALID": 2,
    }
