"""Typed configuration: dataclasses loaded from YAML/JSON, overridden from the command line, validated.

Every component owns a small config dataclass (``DiTConfig`` in ``dit.py``, ``FlowConfig`` in ``flow.py`` ...);
this module only knows how to fill such a dataclass from a mapping and report what is wrong with it:

    cfg = load_config(RunConfig, "configs/stage_a_9b.yaml", ["optim.lr=3e-4", "train.steps=100"])

A config file is found as given, else among the files shipped with the package (``shipped.py``).

Errors name the source file, the dotted field and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        (item,) = get_args(tp) or (Any,)
        return f"a list of {_type_name(item)}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (ints and numeric strings pass as floats)."""
    origin = get_origin(tp)

    def fail() -> ConfigError:
        return ConfigError(f"{source}: field '{where}': expected {_type_name(tp)}, got {value!r}")

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _coerce(option, value, where, source)
            except ConfigError:
                continue
        raise fail()
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise fail()
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail()
        (item,) = get_args(tp) or (Any,)
        return [_coerce(item, v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise fail()
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise fail()
        return from_dict(tp, value, source=source, prefix=where + ".")
    if tp is type(None):
        if value is None:
            return None
        raise fail()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    raise ConfigError(f"{source}: field '{where}': unsupported annotation {tp!r}")


def from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>", prefix: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, recursively, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(names)})"
        raise ConfigError(f"{source}: unknown field '{prefix}{key}'{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], prefix + f.name, source)
        elif dataclasses.is_dataclass(hints[f.name]):  # an absent section still gets validated
            kwargs[f.name] = from_dict(hints[f.name], {}, source, prefix + f.name + ".")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required field '{prefix}{f.name}' ({_type_name(hints[f.name])})")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """The plain-data form of a config (inverse of ``from_dict``)."""
    return dataclasses.asdict(obj)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file that must hold a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ConfigError(f"config file '{path}' is not valid {kind}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. optim.lr=3e-4")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML: {exc}") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from an optional file plus ``KEY=VALUE`` overrides; errors name the file and field."""
    if path is not None:
        from .shipped import resolve  # shipped.py reports through ConfigError, defined here

        path = resolve(path, "config file")
    data = read_mapping(path) if path is not None else {}
    apply_overrides(data, overrides or [])
    source = str(path) if path is not None else "<defaults>"
    if overrides:
        source += " + overrides"
    return from_dict(cls, data, source=source)


def save_config(obj: Any, path: str | Path) -> None:
    """Write a config as YAML (readable back with ``load_config``)."""
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


__all__ = ["ConfigError", "from_dict", "to_dict", "load_config", "save_config", "apply_overrides", "read_mapping"]
