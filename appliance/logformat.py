"""Log output of every command: sentences for people, JSON lines for log collectors.

The `log` configuration section (docs/CONFIG.md, "Logging") and its overrides:

- `level`: DEBUG, INFO, WARNING or ERROR, in any case; `format`: `text` or `json`;
- precedence, strongest first: the command line (`--log-level`, `--log-format`), the
  environment (`IS_LOG_LEVEL`, `IS_LOG_FORMAT`), the config file's `log` section (the command's
  `--config`), the defaults (INFO, text).

The JSON format is one object per line, whatever the message holds:

- `ts` (RFC 3339, UTC, microseconds, `Z`), `level`, `logger`, `message`, then every field the
  call passed in `extra=` under its own name (a name the four above already use gets a
  trailing `_`), then `exception` (the whole traceback as one string) when there is one;
- every control character (a newline in a message, a traceback's lines) and every non-ASCII
  character is escaped, so a line is always exactly one record: some readers split lines at
  U+2028 or U+0085 too;
- a value JSON cannot hold (a path, bytes, a NaN) is written as its text.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")

#: Environment overrides -> keys of the `log` section.
LOG_ENV = {"IS_LOG_LEVEL": "level", "IS_LOG_FORMAT": "format"}

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every LogRecord has: anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName"}
)
_CORE_KEYS = ("ts", "level", "logger", "message")


@dataclass
class LogConfig:
    """The `log` section: how much to log and in which format."""

    #: DEBUG, INFO, WARNING or ERROR (any case).
    level: str = "INFO"
    #: text (for people) or json (one object per line, for collectors).
    format: str = "text"

    def validate(self) -> None:
        self.level = self.level.strip().upper()
        self.format = self.format.strip().lower()
        if self.level not in LEVELS:
            raise ValueError(
                f"level: {self.level!r} is not one of {', '.join(LEVELS)} "
                "(set by --log-level, IS_LOG_LEVEL or the config file)"
            )
        if self.format not in FORMATS:
            raise ValueError(
                f"format: {self.format!r} is not one of {', '.join(FORMATS)} "
                "(set by --log-format, IS_LOG_FORMAT or the config file)"
            )


def cli_level(text: str) -> str:
    """argparse type of --log-level: a level in any case, normalized to upper case."""
    return text.strip().upper()


def cli_format(text: str) -> str:
    """argparse type of --log-format: normalized to lower case."""
    return text.strip().lower()


def resolve(
    level: str | None,
    fmt: str | None,
    config: Path | None,
    env: Mapping[str, str],
) -> LogConfig:
    """The log settings: command line (level, fmt; None when not given) over the environment
    over the config file's `log` section over the defaults. Raises ConfigError naming the
    key path on a bad value."""
    from appliance.config import build_section, load_document

    doc = load_document(config)
    cfg = build_section(LogConfig, doc.get("log"), "log", env=env, env_names=LOG_ENV)
    if level is not None:
        cfg.level = level
    if fmt is not None:
        cfg.format = fmt
    cfg.validate()
    return cfg


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}


def _rfc3339(created: float) -> str:
    stamp = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    """value made JSON-safe: non-finite floats and unknown types become their text."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            out[f"{key}_" if key in _CORE_KEYS else key] = _plain(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=True, allow_nan=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, then the call's `extra=` fields as ` key=value`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        extras = _extras(record)
        if extras:
            line += "".join(f" {k}={v!r}" for k, v in extras.items())
        return line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of the record (as logging's last-resort
    handler does), so that a replaced stderr never leaves it writing to a closed stream."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it
        pass


def configure(cfg: LogConfig) -> None:
    """Send the root logger's records to stderr in cfg's format and level. Like
    logging.basicConfig, it leaves alone a root logger that someone else (an embedding program,
    pytest) already gave handlers; calling it again replaces its own handler."""
    root = logging.getLogger()
    foreign = [h for h in root.handlers if not isinstance(h, _StderrHandler)]
    if foreign:
        return
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(cfg.level)
