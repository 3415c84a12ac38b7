"""Typed mappings: dataclasses built from plain YAML/JSON values with every key and type checked
(an unknown key or a wrong type is a ``ConfigError`` that names the key, the expected type and
the value found, with a close match for typos), and back."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from crossrec.errors import ConfigError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` and builds dataclasses recursively."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(
        f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
    )
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _convert(value, arg, where)
            except ConfigError:
                continue
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise bad
        return [_convert(v, args[0], f"{where or 'top level'}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {
            _convert(k, args[0], f"{where or 'top level'} key"): _convert(v, args[1], _at(where, k))
            for k, v in value.items()
        }
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise bad
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad


def _at(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Builds dataclass ``cls`` from a mapping, refusing unknown keys and wrong types; ``where``
    is the mapping's dotted place in the whole ("" = the top level), which errors name."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else f" Known keys: {', '.join(names)}."
            raise ConfigError(f"{where or 'top level'}: unknown key '{key}'.{hint}")
        kwargs[key] = _convert(value, hints[key], _at(where, key))
    return cls(**kwargs)


def to_dict(obj: Any) -> dict:
    """The YAML-ready mapping of a config dataclass."""
    return dataclasses.asdict(obj)
