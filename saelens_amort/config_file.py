"""Frozen dataclass configs from YAML files: a mapping of the dataclass's fields, each value of its field's type.

A file that is not a mapping, an unknown key or a value of the wrong type (`tokens: lots`, `budgets: 5`) is one
`SaeAmortError` naming the file, the key and the expected type, before any run starts. Lists become tuples where the
field is a tuple. A float field also takes a numeric string, because PyYAML reads `3e-4` (no dot) as a string.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from saelens_amort.errors import SaeAmortError


class _Mismatch(Exception):
    """A value that does not have the expected type (internal; becomes a SaeAmortError with the key's name)."""


def read_yaml_mapping(path: Path, option: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file given with `option` (an empty file is an empty mapping)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise SaeAmortError(f"cannot read {option} {path} ({' '.join(str(e).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise SaeAmortError(f"{option} {path} must be a mapping of option names to values (key: value lines), "
                            f"got a YAML {type(data).__name__}")
    return data


def typed_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """`data` checked against the fields of dataclass `cls`: known keys only, values of the annotated types."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SaeAmortError(f"{where} has unknown keys {unknown}; known: {sorted(known)}")
    out = {}
    for key, value in data.items():
        try:
            out[key] = _coerce(value, hints[key])
        except _Mismatch:
            raise SaeAmortError(f"{where}: {key} must be {_describe(hints[key])}, got {value!r}") from None
    return out


def _coerce(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is float:
        return _float(value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise TypeError(f"config field type {hint!r} has no YAML reading")


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise _Mismatch from None
    raise _Mismatch


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        kinds = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" or null" if type(None) in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return "a list [" + ", ".join(_describe(a) for a in args) + "]"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))
