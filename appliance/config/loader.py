"""The strict dataclass builder behind appliance.config (see the package docstring)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from appliance.errors import CommandError

T = TypeVar("T")

#: Top-level sections a configuration file may contain.
KNOWN_SECTIONS = frozenset({"eventbus", "agent", "storage", "capture", "wal", "log"})

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(CommandError, ValueError):
    """A configuration problem; str() is one line naming the key path and what is wrong."""


def load_document(path: Path | None) -> dict[str, Any]:
    """Read a YAML configuration file (None or a missing default means: all defaults)."""
    if path is None:
        return {}
    import yaml  # here, not at the top: commands run without a file (`flows --pcap`) skip it

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a YAML text file (not UTF-8)") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    for key in doc:
        if key not in KNOWN_SECTIONS:
            known = ", ".join(sorted(KNOWN_SECTIONS))
            raise ConfigError(f"{key}: unknown section (known: {known})")
    return doc


def build_section(
    cls: type[T],
    data: Any,
    path: str,
    *,
    env: Mapping[str, str] | None = None,
    env_names: Mapping[str, str] | None = None,
) -> T:
    """Build dataclass cls from data (a mapping or None) strictly, then apply env overrides.

    env_names maps an environment variable to a key path below `path` (e.g. "port" or
    "tls.cert_dir"); the variable's text is parsed for that field's type.
    """
    raw: dict[str, Any] = {} if data is None else _as_mapping(data, path)
    raw = _deep_copy(raw)
    if env is not None and env_names:
        for var, key_path in env_names.items():
            if var in env:
                _set_path(raw, key_path.split("."), _EnvText(env[var], var))
    return _build(cls, raw, path)


class _EnvText(str):
    """A string that came from an environment variable: parsed for the field's type."""

    var: str

    def __new__(cls, value: str, var: str) -> _EnvText:
        obj = super().__new__(cls, value)
        obj.var = var
        return obj


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def _set_path(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        raw = raw.setdefault(key, {})
    raw[keys[-1]] = value


def _as_mapping(data: Any, path: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, found {_kind(data)}")
    return data


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _build(cls: type[T], raw: dict[str, Any], path: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in raw:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{path}.{key}: unknown key (known: {known})")
    values = {name: _convert(hints[name], raw[name], f"{path}.{name}") for name in raw}
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise ConfigError(f"{path}.{exc}") from exc
    return obj


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    from_env = isinstance(value, _EnvText)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, path)
        raise ConfigError(f"{path}: unsupported union type {tp}")
    if origin is typing.Literal:
        if value in args:
            return value
        allowed = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{path}: {value!r} is not one of {allowed}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, _as_mapping(value, path), path)
    if origin is list:
        (item,) = args
        if from_env:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, found {_kind(value)}")
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = args
        mapping = _as_mapping(value, path)
        return {
            _convert(key_tp, k, f"{path}.{k}"): _convert(val_tp, v, f"{path}.{k}")
            for k, v in mapping.items()
        }
    if tp is bool:
        if from_env:
            text = value.strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ConfigError(f"{path}: {value.var}={value!r} is not a boolean")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected a boolean, found {_kind(value)}")
    if tp is int:
        if from_env:
            try:
                return int(value.strip())
            except ValueError:
                raise ConfigError(f"{path}: {value.var}={value!r} is not an integer") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, found {_kind(value)}")
    if tp is float:
        if from_env:
            try:
                return float(value.strip())
            except ValueError:
                raise ConfigError(f"{path}: {value.var}={value!r} is not a number") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, found {_kind(value)}")
    if tp is str:
        if isinstance(value, str):
            return str(value)
        raise ConfigError(f"{path}: expected a string, found {_kind(value)}")
    if tp is Path:
        if isinstance(value, str) and value:
            return Path(value)
        raise ConfigError(f"{path}: expected a path, found {_kind(value)}")
    raise ConfigError(f"{path}: unsupported field type {tp}")
