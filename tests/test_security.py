"""Hostile inputs to model loading: nothing is unpickled, nothing outside the model dir is read,
absurd configs are refused before allocating."""

import json
import os
import pickle
import shutil

import pytest
import torch

from t2i.checkpoint import load_component
from t2i.models.unet import UNet, UNetConfig
from t2i.pipeline import T2IPipeline
from t2i.text_encoder import TextEncoder, find_tokenizer


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    dest = tmp_path / "model"
    shutil.copytree(tiny_model, dest, ignore=shutil.ignore_patterns("checkpoints", "latents", "logs", "samples"))
    return dest


class Boom:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_disguised_as_safetensors_is_refused(model_copy, tmp_path):
    marker = tmp_path / "pwned"
    (model_copy / "unet" / "model.safetensors").write_bytes(pickle.dumps({"w": Boom(marker)}))
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        T2IPipeline.from_pretrained(model_copy)
    assert not marker.exists()


def test_pickle_weights_are_never_loaded(model_copy):
    unet = model_copy / "unet"
    (unet / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, unet / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pickle files are never loaded"):
        T2IPipeline.from_pretrained(model_copy)


def test_absurd_config_refused_before_allocating(model_copy):
    path = model_copy / "unet" / "config.json"
    meta = json.loads(path.read_text())
    meta["config"]["channels"] = [65536, 65536]
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="refusing to allocate"):
        load_component(model_copy / "unet", UNet, UNetConfig, "unet")


def test_unknown_config_field_is_named(model_copy):
    path = model_copy / "vae" / "config.json"
    meta = json.loads(path.read_text())
    meta["config"]["chanels"] = [1]
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown field.*chanels"):
        T2IPipeline.from_pretrained(model_copy)


def test_component_symlinked_outside_the_model_dir_is_refused(model_copy, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.move(str(model_copy / "unet"), outside)
    (model_copy / "unet").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        T2IPipeline.from_pretrained(model_copy)


def test_weights_symlinked_outside_are_refused(model_copy, tmp_path):
    weights = model_copy / "vae" / "model.safetensors"
    target = tmp_path / "stolen.safetensors"
    shutil.move(str(weights), target)
    weights.symlink_to(target)
    with pytest.raises(ValueError, match="outside"):
        T2IPipeline.from_pretrained(model_copy)


def test_wrong_component_type_is_named(model_copy):
    shutil.copy(model_copy / "vae" / "config.json", model_copy / "unet" / "config.json")
    with pytest.raises(ValueError, match="expected a 'unet' component config"):
        T2IPipeline.from_pretrained(model_copy)


def move_out_and_link(path, outside):
    """Replace `path` by a symlink to a copy moved outside the model dir."""
    shutil.move(str(path), outside)
    path.symlink_to(outside)


@pytest.mark.parametrize("name", ["tokenizer.json", "model_index.json", "unet/config.json", "clip/config.json"])
def test_model_files_symlinked_outside_are_refused(model_copy, tmp_path, name):
    path = model_copy / name
    if not path.exists():  # model_index.json is written by `t2i train all`, not the tiny fixture
        path.write_text(json.dumps({"id": "stolen"}))
    move_out_and_link(path, tmp_path / ("outside_" + path.name))
    with pytest.raises(ValueError, match="points outside"):
        T2IPipeline.from_pretrained(model_copy, device="cpu")


def test_model_index_inside_is_read(model_copy):
    (model_copy / "model_index.json").write_text(json.dumps({"id": "my-faces"}))
    assert T2IPipeline.from_pretrained(model_copy, device="cpu").model_id == "my-faces"


def test_clip_dir_finds_its_model_dirs_tokenizer_only(model_copy, tmp_path):
    """A clip/ dir passed directly uses the tokenizer of the model dir holding it, which must
    not be a symlink out of that dir; any other dir never looks in its parent."""
    assert find_tokenizer(model_copy / "clip") == (model_copy / "tokenizer.json").resolve()
    TextEncoder.from_pretrained(model_copy / "clip")  # the documented `--clip MODEL/clip`
    lone = tmp_path / "lone" / "text"  # a clip component dir not named clip/
    shutil.copytree(model_copy / "clip", lone)
    shutil.copy(model_copy / "tokenizer.json", lone.parent / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        find_tokenizer(lone)
    move_out_and_link(model_copy / "tokenizer.json", tmp_path / "outside_tokenizer.json")
    with pytest.raises(ValueError, match="points outside"):
        find_tokenizer(model_copy / "clip")


@pytest.mark.parametrize("image_size", [10**7, 62, 0, -64, 64.0, "64"])
def test_absurd_image_size_refused_at_load(model_copy, image_size):
    path = model_copy / "unet" / "config.json"
    meta = json.loads(path.read_text())
    meta["image_size"] = image_size  # the tiny VAE's factor is 4: 62 is not a multiple of it
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="image_size must be a multiple"):
        T2IPipeline.from_pretrained(model_copy, device="cpu")


@pytest.mark.parametrize("schedule", [{"T": 10**9}, {"T": 1e4}, {"T": True}, {"kind": "linear", "beta_end": 5.0}])
def test_absurd_schedule_refused_at_load(model_copy, schedule):
    """T = 1e9 would spend minutes building tables (cosine betas are a Python loop) and GBs."""
    path = model_copy / "unet" / "config.json"
    meta = json.loads(path.read_text())
    meta["diffusion"]["schedule"].update(schedule)
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="bad diffusion schedule"):
        T2IPipeline.from_pretrained(model_copy, device="cpu")
