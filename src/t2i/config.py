"""Config helpers: dataclass <-> JSON with clear errors.

Each model keeps its `@dataclass` config beside it (nanoGPT style) and each training stage its
presets (`PRESETS` in `t2i.train.<stage>`); this module only converts them to and from JSON,
rejecting unknown or ill-typed fields by name instead of failing later inside torch.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def config_to_dict(config: Any) -> dict:
    """A dataclass as a JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass `cls` from `data`, naming the offending key on any problem.

    Unknown keys are an error (a typo must not silently fall back to a default); missing keys
    take the dataclass default; lists become tuples where the field is a tuple; nested
    dataclasses are built recursively.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for {cls.__name__}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without default is missing
        raise ValueError(f"{where}: {e}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value, where)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for option in typing.get_args(hint):
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return config_from_dict(option, value, where)
            if typing.get_origin(option) is tuple and isinstance(value, list):
                return tuple(value)
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def replace(config: T, **overrides: Any) -> T:
    """`dataclasses.replace` that ignores None overrides (unset CLI flags)."""
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
