"""TOML recipes with dotted command-line overrides, checked against dataclasses.

Every stage describes its settings as a dataclass; a recipe is a TOML file whose
sections map onto those dataclasses. Users change one value from the command line
with `section.key=value`; a key that does not exist, or a value of the wrong type,
is an error that names the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from pasture.errors import PastureError


def load_toml_recipe(name_or_path: str | os.PathLike, recipe_dir: str | os.PathLike) -> dict[str, Any]:
    """Read a recipe given as a file path, or as a name shipped in `recipe_dir` (`web` is
    `recipe_dir/web.toml`); each stage ships its recipes in a folder of its own."""
    path = Path(name_or_path)
    if not path.is_file():
        path = Path(recipe_dir) / f"{name_or_path}.toml"
        if not path.is_file():
            shipped = sorted(p.stem for p in Path(recipe_dir).glob("*.toml"))
            raise PastureError(
                f"recipe {str(name_or_path)!r} is neither a file nor a shipped recipe "
                f"(shipped: {', '.join(shipped) or 'none'})"
            )
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise PastureError(f"recipe {path}: not valid TOML ({e})") from None


def _parse_value(text: str) -> Any:
    """A TOML literal (`3`, `1e-4`, `true`, `"x"`, `[1, 2]`), or the raw text when it is not one."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `recipe` with each `a.b.c=value` applied; values are parsed as TOML literals."""
    result = _deep_copy(recipe)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise PastureError(f"override {item!r} is not of the form section.key=value")
        *parents, leaf = key.split(".")
        node = result
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise PastureError(f"override {key}: {'.'.join(parents[: depth + 1])} is a value, not a section")
            node = child
        node[leaf] = _parse_value(raw.strip())
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check(value: Any, tp: Any, key: str) -> Any:
    """`value` converted to `tp` where that is lossless (int -> float), else a PastureError naming `key`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _check(value, option, key)
            except PastureError:
                continue
        raise PastureError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise PastureError(f"{key}: expected a section (table), got {type(value).__name__} {value!r}")
        return build_dataclass(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise PastureError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_check(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise PastureError(f"{key}: expected a table, got {type(value).__name__} {value!r}")
        key_tp, value_tp = typing.get_args(tp) or (str, Any)
        return {k: _check(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise PastureError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def build_dataclass(cls: type, values: dict[str, Any], section_name: str) -> Any:
    """Construct `cls` from a recipe section, rejecting unknown keys, missing keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{section_name}." if section_name else ""
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise PastureError(
            f"unknown key {prefix}{unknown[0]} (known keys in [{section_name or 'top level'}]: {', '.join(fields)})"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            kwargs[name] = _check(values[name], hints[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise PastureError(f"missing key {prefix}{name}")
    return cls(**kwargs)
