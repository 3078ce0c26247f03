"""Configs: dataclass <-> JSON with clear errors, and recipes.

Each model keeps its `@dataclass` config beside it (nanoGPT style) and each training stage its
presets (`PRESETS` in `t2i.train.<stage>`); this module converts them to and from JSON,
rejecting unknown or ill-typed fields by their full path instead of failing later inside torch.

A **recipe** is one config per stage plus how to read the data, as plain data:

    {"preset": "tiny", "data": {...DataOptions}, "vae": {...VAEPreset}, "clip": {...},
     "unet": {...UNetStageConfig}, "judge": {...}, "eval": {...EvalConfig}}

resolved in this order, each step overriding the one before: the preset (`--preset`), a
recipe file (`--config FILE`: JSON, TOML or YAML, any subset of the sections), repeated
`--set section.field=value` (the value parsed as JSON where it parses, else taken as a string),
then a stage's own flags (`--steps`). `model` is accepted for a stage's model config whatever
the field is called (`unet.model.channels` is `unet.unet.channels`). Every `t2i train` stage,
`t2i train all` and `t2i eval` resolve recipes here; the resolved recipe is written beside
their outputs (OUT/recipes/STAGE.json, OUT/recipe.json) and is what `train all`'s stage
fingerprints hash.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# The sections a recipe may have. Each command builds the bases of the sections it uses (the
# stage's PRESETS entry, DataOptions()) and passes them in: this module imports no stage.
SECTIONS = ("data", "vae", "clip", "unet", "judge", "eval")
DEFAULT_PRESET = "synth64"


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
        raise ValueError(f"{where}: expected an object of {cls.__name__} fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            raise ValueError(f"unknown field {where}.{name} of {cls.__name__}"
                             + (f" (did you mean {where}.{close[0]}?)" if close else "")
                             + f"; its fields are {sorted(fields)}")
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without default is missing
        raise ValueError(f"{where}: {e}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif args and len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {hint}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is not bool and isinstance(value, bool))):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def replace(config: T, **overrides: Any) -> T:
    """`dataclasses.replace` that ignores None overrides (unset CLI flags)."""
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


# ----------------------------------------------------------------------------- recipe files


def read_config_file(path: str | Path) -> dict:
    """A recipe file as a dict: .json, .toml or .yaml/.yml (chosen by the suffix)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise ValueError(f"{path}: unknown config format {suffix!r}; use .json, .toml, .yaml or .yml")
    except ValueError as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ValueError(f"{path}: {e}") from None
    except Exception as e:  # yaml.YAMLError
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
    return data


def parse_set(item: str) -> tuple[list[str], Any]:
    """`section.field.sub=value` -> (["section", "field", "sub"], value parsed as JSON if it parses)."""
    key, sep, raw = item.partition("=")
    path = key.strip().split(".")
    if not sep or len(path) < 2 or not all(path):
        raise ValueError(f"--set {item!r}: expected section.field=value (e.g. unet.loop.steps=5000)")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare word: a string
    return path, value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


Bases = Callable[[str], dict[str, Any]]  # preset name -> {section: its base config (a dataclass)}


def resolve_recipe(bases: Bases, preset: str | None = None, files: list[str] | None = None,
                   sets: list[str] | None = None) -> dict:
    """{"preset": name, section: dataclass instance} for the sections `bases` gives, resolved as
    the module docstring says. Unknown sections and fields are refused with their full path;
    sections of a file that this command does not use are checked by the commands that do."""
    overrides: dict = {}
    for f in files or []:
        overrides = _merge(overrides, read_config_file(f))
    file_preset = overrides.pop("preset", None)
    for item in sets or []:
        path, value = parse_set(item)
        if path[0] == "preset":
            raise ValueError("--set preset=...: choose the preset with --preset")
        node = overrides
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = value
    unknown = [s for s in overrides if s not in SECTIONS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], SECTIONS, n=1)
        raise ValueError(f"{unknown[0]}: unknown recipe section" + (f" (did you mean {close[0]}?)" if close else "")
                         + f"; the sections are {list(SECTIONS)}")
    preset = preset or file_preset or DEFAULT_PRESET
    try:
        base_configs = bases(preset)
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}") from None
    recipe: dict[str, Any] = {"preset": preset}
    for section, base in base_configs.items():
        given = overrides.get(section, {})
        if not isinstance(given, dict):
            raise ValueError(f"{section}: expected a table of fields, got {given!r}")
        cls = type(base)
        aliased = _model_alias_for(cls, given)
        try:
            recipe[section] = config_from_dict(cls, _merge(config_to_dict(base), aliased), where=section)
        except ValueError as e:  # name the field as the user wrote it (unet.model.x, not unet.unet.x)
            field = next((k for k in aliased if k not in given), None)
            raise ValueError(str(e).replace(f"{section}.{field}.", f"{section}.model.") if field else str(e)) from None
    return recipe


def _model_alias_for(cls, given: dict) -> dict:
    """`model` names the stage's model config whatever its field is called (UNetStageConfig's
    `unet`, JudgeStageConfig's `judge`)."""
    names = [f.name for f in dataclasses.fields(cls)]
    if "model" not in given or "model" in names:
        return given
    hints = typing.get_type_hints(cls)
    models = [n for n in names if dataclasses.is_dataclass(hints[n]) and hints[n].__name__.endswith("Config")
              and n not in ("loop", "loss", "diffusion")]
    if len(models) != 1:
        return given
    return {(models[0] if k == "model" else k): v for k, v in given.items()}


def recipe_to_dict(recipe: dict) -> dict:
    """A resolved recipe as plain JSON data (sorted sections, tuples as lists)."""
    plain = {k: (v if isinstance(v, str) else config_to_dict(v)) for k, v in recipe.items()}
    return json.loads(json.dumps(plain))  # tuples -> lists: equal to what a file reads back


def recipe_fingerprint(recipe: dict, *sections: str) -> str:
    """A stable hash of the named sections of a resolved recipe."""
    import hashlib

    data = {s: config_to_dict(recipe[s]) for s in sections}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- command line


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --set (a command that reads a dataset adds data.options' flags too)."""
    if any(a.dest == "preset" for a in parser._actions):
        parser.set_defaults(preset=None)  # unset: the recipe file's preset, else DEFAULT_PRESET
    g = parser.add_argument_group("recipe (docs/recipes.md)")
    g.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="recipe file (JSON, TOML or YAML) with any of the sections "
                        f"{', '.join(SECTIONS)}; repeat to layer files")
    g.add_argument("--set", action="append", default=[], dest="set_items", metavar="SECTION.FIELD=VALUE",
                   help="override one recipe field, the value as JSON where it parses "
                        "(e.g. --set unet.loop.steps=5000 --set unet.model.channels=[96,192,384]); repeatable")


def recipe_from_args(args: argparse.Namespace, bases: Bases) -> dict:
    """The recipe of a command from its --preset, --config and --set (its own flags are applied
    by the command on top); sets `args.preset` to the preset used."""
    recipe = resolve_recipe(bases, getattr(args, "preset", None), args.config, args.set_items)
    args.preset = recipe["preset"]
    return recipe
