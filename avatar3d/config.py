"""Dataclass configs filled from YAML: unknown keys are errors, not warnings.

Each component owns one dataclass; a YAML file in ``configs/`` only sets values. Those files ship as
named presets: ``load_config(TrainConfig, "cpu_small")`` finds one by name (see avatar3d.resources).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from avatar3d.errors import Avatar3DError
from avatar3d.resources import resolve_config

T = TypeVar("T")


def _default_values(f: dataclasses.Field) -> dict[str, Any]:
    """A nested config field's default as a dict, so YAML may set only some of its keys."""
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    elif f.default is not dataclasses.MISSING:
        default = f.default
    else:
        return {}
    return dataclasses.asdict(default) if dataclasses.is_dataclass(default) else {}


def _as_tuples(value: Any) -> Any:
    """Lists -> tuples at every depth (YAML has no tuples; a default of nested tuples must compare equal)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _optional_dataclass(hint: Any) -> Any:
    """``X | None`` with X a dataclass -> X (a mapping in the YAML switches the optional part on)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = args[0] if args[1] is type(None) else args[1]
        if dataclasses.is_dataclass(inner):
            return inner
    return hint


def from_dict(cls: type[T], values: dict[str, Any], *, source: str = "config") -> T:
    """Build dataclass ``cls`` from ``values``; nested dataclasses are built recursively."""
    if not isinstance(values, dict):
        raise Avatar3DError(f"{source}: expected a mapping of {cls.__name__} fields, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise Avatar3DError(
            f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; valid keys: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = _optional_dataclass(hints.get(name))
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, {**_default_values(fields[name]), **value}, source=f"{source}.{name}")  # type: ignore[arg-type]
        elif hint in (tuple, typing.Tuple) or typing.get_origin(hint) is tuple:
            value = _as_tuples(value)
        kwargs[name] = value
    return cls(**kwargs)  # type: ignore[call-arg]


def load_config(cls: type[T], path: str | Path | None = None, **overrides: Any) -> T:
    """Defaults of ``cls``, then the YAML file or named preset (if given), then non-None ``overrides``."""
    values: dict[str, Any] = {}
    if path is not None:
        path = resolve_config(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise Avatar3DError(f"config file {path} is not valid YAML ({first}): fix the syntax") from None
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, values, source=str(path) if path else cls.__name__)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-dict view of a dataclass config, for saving the resolved config beside outputs."""
    return dataclasses.asdict(config)
