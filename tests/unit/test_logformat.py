"""Log output: JSON lines that stay one record per line, and where level and format come from."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import logformat
from appliance.cli import build_parser
from appliance.config import ConfigError
from appliance.logformat import JsonFormatter, LogConfig, TextFormatter, resolve


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("appliance.test", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def _json(record: logging.LogRecord) -> dict[str, object]:
    line = JsonFormatter().format(record)
    assert len(line.splitlines()) == 1, line
    out = json.loads(line)
    assert isinstance(out, dict)
    return out


def test_a_record_is_one_json_object_with_time_level_logger_and_message() -> None:
    record = _record("agent %s running", "branch-1")
    out = _json(record)
    assert list(out)[:4] == ["ts", "level", "logger", "message"]
    assert out["level"] == "WARNING" and out["logger"] == "appliance.test"
    assert out["message"] == "agent branch-1 running"
    ts = str(out["ts"])
    assert ts.endswith("Z")
    parsed = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert parsed.utcoffset() == datetime.timedelta(0)
    assert abs(parsed.timestamp() - record.created) < 1e-5


@pytest.mark.parametrize(
    "message",
    [
        "two\nlines",
        "carriage\rreturn",
        "nul\x00byte",
        "escape\x1b[31m red",
        "tab\there",
        "line\u2028separator",
        "next\x85line",
        "paragraph\u2029separator",
        "del\x7f and é",
    ],
)
def test_control_characters_are_escaped_so_a_record_stays_one_line(message: str) -> None:
    line = JsonFormatter().format(_record("%s", message))
    assert line.isascii() and line.isprintable(), line
    assert len(line.splitlines()) == 1
    assert json.loads(line)["message"] == message


def test_an_exception_is_one_escaped_field_never_several_lines() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "appliance.test", logging.ERROR, __file__, 1, "it failed", (), exc_info
    )
    out = _json(record)
    assert out["message"] == "it failed"
    text = str(out["exception"])
    assert text.startswith("Traceback (most recent call last):")
    assert text.rstrip().endswith("ValueError: bad\nvalue")


def test_extra_fields_are_structured_and_never_replace_the_core_ones() -> None:
    out = _json(
        _record(
            "sealed",
            agent="branch-1",
            records=3,
            ratio=0.5,
            ok=True,
            path=Path("/data/wal"),
            raw=b"\x00\xff",
            nan=math.nan,
            ifaces=("m1", "m2"),
            level="mine",
            message_="m",
        )
    )
    assert out["agent"] == "branch-1" and out["records"] == 3 and out["ratio"] == 0.5
    assert out["ok"] is True and out["path"] == "/data/wal" and out["raw"] == "b'\\x00\\xff'"
    assert out["nan"] == "nan" and out["ifaces"] == ["m1", "m2"]
    assert out["level"] == "WARNING" and out["level_"] == "mine"


def test_text_lines_carry_the_extra_fields_after_the_sentence() -> None:
    line = TextFormatter().format(_record("agent %s running", "b1", bus="127.0.0.1:50051"))
    assert line.endswith("WARNING appliance.test: agent b1 running bus='127.0.0.1:50051'")


# -- where the level and the format come from ------------------------------------------------


def _config(tmp_path: Path, level: str = "ERROR", fmt: str = "json") -> Path:
    path = tmp_path / "infraspectre.yaml"
    path.write_text(f"log:\n  level: {level}\n  format: {fmt}\n")
    return path


def test_defaults_are_info_and_text() -> None:
    assert resolve(None, None, None, {}) == LogConfig("INFO", "text")


def test_the_config_file_sets_level_and_format(tmp_path: Path) -> None:
    assert resolve(None, None, _config(tmp_path), {}) == LogConfig("ERROR", "json")


def test_the_environment_overrides_the_config_file(tmp_path: Path) -> None:
    env = {"IS_LOG_LEVEL": "debug", "IS_LOG_FORMAT": "TEXT"}
    assert resolve(None, None, _config(tmp_path), env) == LogConfig("DEBUG", "text")


def test_the_command_line_overrides_the_environment_and_the_file(tmp_path: Path) -> None:
    env = {"IS_LOG_LEVEL": "DEBUG", "IS_LOG_FORMAT": "text"}
    assert resolve("WARNING", "json", _config(tmp_path), env) == LogConfig("WARNING", "json")
    # each setting on its own: the level from the command line, the format from the env
    assert resolve("WARNING", None, _config(tmp_path), env) == LogConfig("WARNING", "text")


@pytest.mark.parametrize("level", ["debug", "Info", "WARNING", "eRRoR"])
def test_levels_are_accepted_in_any_case_everywhere(tmp_path: Path, level: str) -> None:
    args = build_parser().parse_args(["--log-level", level, "bus", "query"])
    assert args.log_level == level.upper()
    assert resolve(None, None, None, {"IS_LOG_LEVEL": level}).level == level.upper()
    assert resolve(None, None, _config(tmp_path, level=level), {}).level == level.upper()


def test_the_format_option_takes_json_in_any_case() -> None:
    args = build_parser().parse_args(["--log-format", "JSON", "bus", "query"])
    assert args.log_format == "json"
    assert build_parser().parse_args(["bus", "query"]).log_format is None


def test_an_unknown_level_on_the_command_line_is_refused_by_the_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--log-level", "verbose", "bus", "query"])
    assert "--log-level" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "config", "message"),
    [
        ({"IS_LOG_LEVEL": "verbose"}, None, r"^log\.level: 'VERBOSE' is not one of .*IS_LOG_LEVEL"),
        ({"IS_LOG_FORMAT": "xml"}, None, r"^log\.format: 'xml' is not one of text, json"),
        ({}, "log:\n  colour: true\n", r"^log\.colour: unknown key"),
        ({}, "log:\n  level: 10\n", r"^log\.level: expected a string"),
    ],
)
def test_a_bad_setting_is_refused_naming_its_key_path(
    tmp_path: Path, env: dict[str, str], config: str | None, message: str
) -> None:
    path = None
    if config is not None:
        path = tmp_path / "bad.yaml"
        path.write_text(config)
    with pytest.raises(ConfigError, match=message):
        resolve(None, None, path, env)


# -- installing it -------------------------------------------------------------------------


@contextlib.contextmanager
def _bare_root() -> Iterator[logging.Logger]:
    """The root logger without pytest's capture handlers (added around each test's call, so
    removed inside it), restored afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    for h in saved:
        root.removeHandler(h)
    try:
        yield root
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)


def test_configure_writes_json_lines_to_stderr_at_the_level_asked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with _bare_root() as root:
        logformat.configure(LogConfig("INFO", "json"))
        log = logging.getLogger("appliance.test")
        log.debug("not shown")
        log.info("shown\nonce", extra={"agent": "b1"})
        logformat.configure(LogConfig("WARNING", "text"))  # replaces its own handler
        log.info("not shown either")
        log.warning("as text")
        assert len(root.handlers) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert json.loads(lines[0]) | {"ts": None} == {
        "ts": None, "level": "INFO", "logger": "appliance.test", "message": "shown\nonce",
        "agent": "b1",
    }  # fmt: skip
    assert lines[1].endswith("WARNING appliance.test: as text")


def test_configure_leaves_a_host_programs_own_handlers_alone() -> None:
    with _bare_root() as root:
        mine = logging.NullHandler()
        root.addHandler(mine)
        logformat.configure(LogConfig("DEBUG", "json"))
        assert root.handlers == [mine]
