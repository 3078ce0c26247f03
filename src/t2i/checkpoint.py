"""Atomic save/load of model components and training state: safetensors + JSON only.

Nothing here ever unpickles. A component directory holds `config.json`
(`{"type": kind, "config": {...}, ...extra}`) and `model.safetensors`. Training checkpoints are
directories `step_0000100/` holding `state.safetensors` (every tensor) and `state.json` (the
rest of the state tree plus the SHA-256 of the tensor file), written to a temporary directory
and renamed into place, so a crash never leaves a half-written checkpoint that looks valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from t2i.config import config_from_dict, config_to_dict
from t2i.files import atomic_write_text

M = TypeVar("M", bound=nn.Module)

CONFIG_NAME = "config.json"
INDEX_NAME = "model_index.json"  # MODEL_DIR/model_index.json, written by `t2i train all`
WEIGHTS_NAME = "model.safetensors"
# Files that would need unpickling to read. Their presence is reported, never loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Refuse configs that would allocate more than this many parameters (a hostile or mistyped
# config must fail before allocating memory).
MAX_PARAMETERS = 2_000_000_000


# ---------------------------------------------------------------------------------------------
# Atomic file writing


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(tensors, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning any parse failure into a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing weights file: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(
            f"{path} is not a valid safetensors file ({e}); refusing to load it. "
            "t2i never reads pickle checkpoints."
        ) from None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Paths


def inside(root: str | Path, path: str | Path) -> Path:
    """`path` resolved (symlinks followed); an error if it is not inside `root`."""
    root_real = Path(root).resolve()
    real = Path(path).resolve()
    if real != root_real and root_real not in real.parents:
        raise ValueError(f"path {path} points outside {root}; refusing to follow it")
    return real


def read_model_index(model_dir: str | Path) -> dict:
    """MODEL_DIR/model_index.json as a dict ({} when there is none). A symlink out of the model
    dir is refused; invalid JSON is a ValueError naming the file."""
    path = Path(model_dir) / INDEX_NAME
    if not (path.exists() or path.is_symlink()):
        return {}
    try:
        data = json.loads(inside(model_dir, path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def resolve_component(path: str | Path, kind: str) -> Path:
    """Accept a model dir (holding `kind/`) or the component dir itself; return the latter."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{kind}: no such directory: {path}")
    if (path / kind / CONFIG_NAME).is_file():
        return inside(path, path / kind)
    if (path / CONFIG_NAME).is_file():
        return path.resolve()
    raise FileNotFoundError(
        f"{path} holds no {kind} component: expected {path / kind / CONFIG_NAME} "
        f"(a model dir) or {path / CONFIG_NAME} (a {kind} dir). Train it with `t2i train {kind}`."
    )


# ---------------------------------------------------------------------------------------------
# Components


def save_component(
    directory: str | Path,
    model: nn.Module,
    config: Any,
    kind: str,
    extra: dict | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `config.json` and `model.safetensors` (weights first, so a readable config always
    has its weights beside it)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(state_dict if state_dict is not None else model.state_dict(), directory / WEIGHTS_NAME)
    atomic_write_json(
        directory / CONFIG_NAME, {"type": kind, "config": config_to_dict(config), **(extra or {})}
    )
    return directory


def read_component_config(directory: str | Path, kind: str) -> dict:
    """`directory/config.json` of a `kind` component; a symlink out of `directory` is refused."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not (path.exists() or path.is_symlink()):
        raise FileNotFoundError(f"{kind}: missing {path}")
    real = inside(directory, path)
    if not real.is_file():
        raise FileNotFoundError(f"{kind}: {path} is not a file")
    try:
        data = json.loads(real.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("type") != kind or "config" not in data:
        found = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a {kind!r} component config, found type={found!r}")
    return data


def load_component(
    directory: str | Path, model_cls: type[M], config_cls: type, kind: str, device: str | torch.device = "cpu"
) -> tuple[M, dict]:
    """Build `model_cls(config)` from `directory` and load its weights strictly.

    Returns (model in eval mode, the full config.json dict for extras such as latent scale).
    """
    directory = resolve_component(directory, kind)
    meta = read_component_config(directory, kind)
    config = config_from_dict(config_cls, meta["config"], where=f"{directory / CONFIG_NAME}:config")
    _refuse_pickles(directory)
    # Count parameters on the meta device first: an absurd config fails before allocating.
    with torch.device("meta"):
        n_params = sum(p.numel() for p in model_cls(config).parameters())
    if n_params > MAX_PARAMETERS:
        raise ValueError(
            f"{directory / CONFIG_NAME}: config asks for {n_params:,} parameters "
            f"(> {MAX_PARAMETERS:,}); refusing to allocate"
        )
    weights_path = inside(directory, directory / WEIGHTS_NAME)
    state = load_tensors(weights_path)
    model = model_cls(config)
    _load_state_strict(model, state, weights_path)
    return model.to(device).eval(), meta


def _refuse_pickles(directory: Path) -> None:
    if not (directory / WEIGHTS_NAME).exists():
        pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
        hint = f" Found {pickles}: pickle files are never loaded (they can run code)." if pickles else ""
        raise FileNotFoundError(f"missing {directory / WEIGHTS_NAME}.{hint}")


def _load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if bad_shape:
            k = bad_shape[0]
            parts.append(f"shape mismatch for {k}: file {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}")
        raise ValueError(f"{source} does not match its config.json: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------
# Training state: nested dicts/lists of tensors and JSON values <-> (safetensors, JSON)


def flatten_state(tree: Any, prefix: str = "", tensors: dict | None = None) -> tuple[Any, dict]:
    """Replace every tensor in a nested dict/list by {"__tensor__": key}; collect the tensors."""
    tensors = {} if tensors is None else tensors
    if isinstance(tree, torch.Tensor):
        tensors[prefix] = tree
        return {"__tensor__": prefix}, tensors
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            # JSON keys are strings: remember int keys (optimizer state is keyed by int).
            key = f"__int__{k}" if isinstance(k, int) else str(k)
            out[key], _ = flatten_state(v, f"{prefix}.{key}" if prefix else key, tensors)
        return out, tensors
    if isinstance(tree, (list, tuple)):
        return [flatten_state(v, f"{prefix}.{i}", tensors)[0] for i, v in enumerate(tree)], tensors
    if dataclasses.is_dataclass(tree):
        return config_to_dict(tree), tensors
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree, tensors
    raise TypeError(f"cannot store {type(tree).__name__} at {prefix!r} in a checkpoint")


def unflatten_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        return {
            (int(k[len("__int__"):]) if k.startswith("__int__") else k): unflatten_state(v, tensors)
            for k, v in tree.items()
        }
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    return tree


def save_training_state(root: str | Path, step: int, state: dict, keep_last: int = 2) -> Path:
    """Write checkpoint `root/step_{step:07d}` atomically and prune to the newest `keep_last`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-step_{step:07d}-"))
    try:
        tree, tensors = flatten_state(state)
        atomic_save_tensors(tensors, tmp / "state.safetensors")
        meta = {"step": step, "sha256": sha256_file(tmp / "state.safetensors"), "state": tree}
        atomic_write_json(tmp / "state.json", meta)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint directories under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def load_latest_training_state(root: str | Path) -> tuple[int, dict] | None:
    """The newest checkpoint that verifies (hash + parse); corrupt ones are reported and skipped."""
    for ckpt in reversed(list_checkpoints(root)):
        try:
            meta = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
            if sha256_file(ckpt / "state.safetensors") != meta["sha256"]:
                raise ValueError("tensor file does not match its recorded SHA-256 (truncated or modified)")
            tensors = load_tensors(ckpt / "state.safetensors")
            return int(meta["step"]), unflatten_state(meta["state"], tensors)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            warnings.warn(f"checkpoint {ckpt} is unreadable ({e}); falling back to the previous one", stacklevel=2)
    return None
