"""`bus query` / `bus tail` as a user types them: filters, order, broken inputs, terminal safety."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.bus.store import FlowStore, Record
from appliance.cli import main


def _row(key: str, ts: int, src: str, dst: str, *, agent: str = "a", proto: str = "TCP") -> Record:
    row = (agent, key, int(key), ts, ts, "flow", src, dst, 5000, 443, proto,
           10, 20, 1, 2, ts // 10**6, ts // 10**6, 0, b"env", "k1")  # fmt: skip
    return Record(row, b"", bytes(64))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Four flows, oldest first: two IPv4 in 10/8, one in 192.0.2/24, one IPv6."""
    path = tmp_path / "bus.sqlite"
    store = FlowStore(path, sync="normal")
    store.submit(
        [
            _row("1", 1_000_000_000, "10.1.2.3", "192.0.2.9"),
            _row("2", 2_000_000_000, "192.0.2.1", "10.200.0.1", proto="UDP"),
            _row("3", 3_000_000_000, "192.0.2.1", "198.51.100.7"),
            _row("4", 4_000_000_000, "2001:db8::1", "2001:db8:1::2"),
        ]
    ).result(5)
    store.close()
    return path


def _srcs(out: str) -> list[str]:
    return [json.loads(line)["src_ip"] for line in out.splitlines()]


def test_query_on_a_file_that_is_not_a_store_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "capture.pcap"
    junk.write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(4000))
    for argv in (["bus", "query", "--db", str(junk)], ["bus", "tail", "--db", str(junk)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(junk) in err and "not a bus store" in err


def test_query_on_an_sqlite_file_without_records_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    assert main(["bus", "query", "--db", str(other)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a bus store" in err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--proto", "FOO", "unknown protocol 'FOO'"),
        ("--proto", "300", "unknown protocol '300'"),
        ("--address", "999.1.1.1", "not an IP address or network"),
        ("--address", "10.0.0.1/33", "not an IP address or network"),
        ("--address", "10.0.0.1/8", "has host bits set"),
    ],
)
def test_query_refuses_filters_that_can_match_nothing(
    db: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    assert main(["bus", "query", "--db", str(db), flag, value]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_query_address_takes_a_network_in_cidr_form(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def srcs(address: str) -> list[str]:
        assert main(["bus", "query", "--db", str(db), "--json", "--address", address]) == 0
        return _srcs(capsys.readouterr().out)

    assert srcs("10.0.0.0/8") == ["192.0.2.1", "10.1.2.3"]
    assert srcs("192.0.2.0/24") == ["192.0.2.1", "192.0.2.1", "10.1.2.3"]
    assert srcs("2001:db8::/48") == ["2001:db8::1"]
    assert srcs("2001:db8:1::/48") == ["2001:db8::1"]
    assert srcs("2001:db8::/32") == ["2001:db8::1"]
    assert srcs("172.16.0.0/12") == []


def test_query_address_exact_matches_the_canonical_form(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bus", "query", "--db", str(db), "--json", "--address", "2001:DB8:0::1"]) == 0
    assert _srcs(capsys.readouterr().out) == ["2001:db8::1"]
    assert main(["bus", "query", "--db", str(db), "--json", "--address", "10.1.2.3/32"]) == 0
    assert _srcs(capsys.readouterr().out) == ["10.1.2.3"]


def test_query_accepts_protocol_names_in_any_case_and_numbers(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bus", "query", "--db", str(db), "--json", "--proto", "udp"]) == 0
    assert _srcs(capsys.readouterr().out) == ["192.0.2.1"]
    assert main(["bus", "query", "--db", str(db), "--json", "--proto", "17"]) == 0
    assert _srcs(capsys.readouterr().out) == ["192.0.2.1"]


def test_query_shows_the_newest_first_and_says_when_more_matched(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bus", "query", "--db", str(db), "--json", "--limit", "2"]) == 0
    out, err = capsys.readouterr()
    assert _srcs(out) == ["2001:db8::1", "192.0.2.1"]
    assert "2 of 4 flows shown" in err and "--limit" in err
    assert main(["bus", "query", "--db", str(db), "--json", "--order", "oldest"]) == 0
    out, err = capsys.readouterr()
    assert _srcs(out) == ["10.1.2.3", "192.0.2.1", "192.0.2.1", "2001:db8::1"]
    assert "4 flows (oldest stored first)" in err and " of " not in err


def test_tail_on_a_folder_that_does_not_exist_fails_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "bus.sqlite"
    assert main(["bus", "tail", "--db", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no folder" in err and str(missing.parent) in err


def test_tail_says_it_is_waiting_for_the_store_and_timeout_bounds_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bus", "tail", "--db", str(tmp_path / "bus.sqlite"), "--timeout", "0.1"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("infraspectre: waiting for the bus to create")
    assert lines[1].startswith("infraspectre: no bus store appeared at") and len(lines) == 2


HOSTILE = "evil\x1b]0;owned\x07\x1b[2J\r\x00x"


def test_text_output_escapes_control_characters_from_agent_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bus.sqlite"
    store = FlowStore(path, sync="normal")
    store.submit(
        [_row("1", 10**9, "192.0.2.1\x1b[31m", "\u009b2J", agent=HOSTILE, proto="T\x1bCP")]
    ).result(5)
    store.close()
    for argv in (
        ["bus", "query", "--db", str(path)],
        ["bus", "tail", "--db", str(path), "--from-start", "--count", "1"],
    ):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert not any(ch in out for ch in "\x1b\x07\x00\r\u009b"), repr(out)
        assert "\\x1b" in out and "\\x9b" in out


def test_json_output_keeps_agent_fields_exact_and_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bus.sqlite"
    store = FlowStore(path, sync="normal")
    store.submit([_row("1", 10**9, "192.0.2.1", "192.0.2.2", agent=HOSTILE)]).result(5)
    store.close()
    assert main(["bus", "query", "--db", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\x00" not in out
    assert json.loads(out)["agent_id"] == HOSTILE


def _csv_rows(out: str) -> list[dict[str, str]]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(out, newline="")))


@pytest.mark.parametrize(
    ("expr", "srcs"),
    [
        ("proto=TCP and dst_port=443", ["2001:db8::1", "192.0.2.1", "10.1.2.3"]),
        ("proto = udp", ["192.0.2.1"]),
        ("PROTO != 6", ["192.0.2.1"]),
        ("ip=10.0.0.0/8", ["192.0.2.1", "10.1.2.3"]),
        ("src_ip = 192.0.2.1 AND dst_ip = 198.51.100.7", ["192.0.2.1"]),
        ("not ip = 10.0.0.0/8 and not ip=2001:db8::/32", ["192.0.2.1"]),
        ("dst_ip=2001:db8:1::/48 or (proto=udp and port=5000)", ["2001:db8::1", "192.0.2.1"]),
        ("bytes >= 30 and packets < 4 and vlan = 0", ["2001:db8::1", "192.0.2.1", "192.0.2.1",
                                                      "10.1.2.3"]),
        ("bytes > 30", []),
        ("agent = 'a' and src_port = 5000", ["2001:db8::1", "192.0.2.1", "192.0.2.1", "10.1.2.3"]),
        ('agent = "b"', []),
    ],
)  # fmt: skip
def test_where_expressions_select_like_the_options_do(
    db: Path, capsys: pytest.CaptureFixture[str], expr: str, srcs: list[str]
) -> None:
    assert main(["bus", "query", "--db", str(db), "--json", "--where", expr]) == 0
    assert _srcs(capsys.readouterr().out) == srcs


def test_where_is_anded_with_the_other_filters(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bus", "query", "--db", str(db), "--json", "--proto", "TCP", "--where", "ip=10.0.0.0/8"]
    assert main(argv) == 0
    assert _srcs(capsys.readouterr().out) == ["10.1.2.3"]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("proto", "expected an operator after 'proto'"),
        ("port = tcp", "port takes a whole number, not 'tcp'"),
        ("colour = red", "expected a field"),
        ("port = 1 and", "expected a field"),
        ("(port = 1", "expected ')' at the end"),
        ("ip < 10.0.0.1", "ip takes = or !=, not <"),
        ("ip = 10.0.0.1/8", "has host bits set"),
        ("src_ip = 999.1.1.1", "src_ip '999.1.1.1' is not an IP address or network"),
        ("proto = FOO", "unknown protocol 'FOO'"),
        ("port = 1; DROP TABLE records", "cannot read '; DROP TAB' at 8"),
        ("agent = 'x' or 1=1", "expected a field"),
        ("port = 1 port = 2", "expected 'and', 'or' or the end, found 'port' at 9"),
        ("(" * 40 + "port=1" + ")" * 40, "nested deeper than 32"),
    ],
)
def test_a_bad_where_expression_is_one_line_saying_what_was_expected(
    db: Path, capsys: pytest.CaptureFixture[str], expr: str, message: str
) -> None:
    assert main(["bus", "query", "--db", str(db), "--where", expr]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--where: " in err and message in err, err


def test_where_values_never_become_sql(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    from appliance.bus.query import parse_where

    sql, args = parse_where("agent = \"a' OR '1'='1\" or agent = 'x\"; DROP TABLE records; --'")
    assert (
        "DROP" not in sql
        and "'" not in sql
        and args
        == [
            "a' OR '1'='1",
            'x"; DROP TABLE records; --',
        ]
    )
    assert (
        main(["bus", "query", "--db", str(db), "--json", "--where", "agent = \"a' OR 'a'='a\""])
        == 0
    )
    assert _srcs(capsys.readouterr().out) == []
    assert sqlite3.connect(db).execute("SELECT count(*) FROM records").fetchone()[0] == 4


def test_a_bad_where_on_tail_fails_before_waiting_for_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bus", "tail", "--db", str(tmp_path / "bus.sqlite"), "--where", "port ="]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--where" in err and "waiting" not in err


def test_csv_is_rfc4180_with_a_header_row_and_the_json_values(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bus", "query", "--db", str(db), "--csv", "--order", "oldest"]) == 0
    out = capsys.readouterr().out
    lines = out.split("\r\n")
    assert lines[0].split(",") == [
        "agent_id", "seq", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "bytes_tx",
        "bytes_rx", "packets_tx", "packets_rx", "vlan", "start_time", "end_time", "ts_ns",
    ]  # fmt: skip
    assert lines[-1] == "" and len(lines) == 6 and "\n" not in out.replace("\r\n", "")
    assert main(["bus", "query", "--db", str(db), "--json", "--order", "oldest"]) == 0
    as_json = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rows = _csv_rows(out)
    assert [{k: str(v) for k, v in r.items()} for r in as_json] == rows


def test_csv_quotes_commas_quotes_and_line_breaks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bus.sqlite"
    store = FlowStore(path, sync="normal")
    odd = 'branch "7", hall\r\nB'
    store.submit([_row("1", 10**9, "192.0.2.1", "192.0.2.2", agent=odd)]).result(5)
    store.close()
    assert main(["bus", "query", "--db", str(path), "--csv"]) == 0
    out = capsys.readouterr().out
    assert '"branch ""7"", hall\r\nB",1,192.0.2.1' in out
    (row,) = _csv_rows(out)
    assert row["agent_id"] == odd


def test_csv_and_json_exclude_each_other(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bus", "query", "--db", str(db), "--csv", "--json"])
    assert "not allowed with" in capsys.readouterr().err
