"""Recipes without editing source: --config FILE (JSON, TOML, YAML), repeated
--set section.field=value, unknown or mistyped fields refused by their full path, and the
resolved recipe written beside a stage's outputs."""

from __future__ import annotations

import json

import pytest

from t2i.cli import main
from t2i.config import parse_set, read_config_file, recipe_to_dict
from t2i.config import resolve_recipe as resolve
from t2i.data.options import DataOptions
from t2i.train.unet import PRESETS as UNET_PRESETS
from t2i.workflow import recipe_bases


def resolve_recipe(preset, files=None, sets=None):
    """The whole recipe, as `t2i train all` resolves it."""
    return resolve(recipe_bases, preset, files, sets)


def test_set_overrides_nested_fields_parsed_as_json():
    r = resolve_recipe("tiny", sets=["unet.model.channels=[96,192,384]", "unet.loop.steps=5000",
                                     "unet.loop.lr=2e-3", "unet.loop.mixed_precision=bf16",
                                     "data.val_fraction=0.25"])
    assert r["unet"].unet.channels == (96, 192, 384)  # `model` names the stage's model config
    assert r["unet"].loop.steps == 5000 and r["unet"].loop.lr == 0.002
    assert r["unet"].loop.mixed_precision == "bf16"  # a bare word is a string
    assert r["data"] == DataOptions(val_fraction=0.25)
    # everything not set is the preset's
    assert r["unet"].diffusion == UNET_PRESETS["tiny"].diffusion
    assert r["unet"].unet.context_dim == UNET_PRESETS["tiny"].unet.context_dim
    assert parse_set("eval.sampler=ddim") == (["eval", "sampler"], "ddim")


@pytest.mark.parametrize("item,match", [
    ("unet.loop.stepz=5", r"unknown field unet\.loop\.stepz of LoopConfig \(did you mean unet\.loop\.steps\?\)"),
    ("vae.model.chanels=[8,16]", r"unknown field vae\.model\.chanels of VAEConfig"),
    ("unett.loop.steps=5", r"unett: unknown recipe section \(did you mean unet\?\)"),
    ("clip.loop.steps=many", r"clip\.loop\.steps: expected int, got 'many'"),
    ("unet.model.channels=[64,\"wide\"]", r"unet\.model\.channels\[1\]: expected int"),
    ("unet.unet.channels=[64,\"wide\"]", r"unet\.unet\.channels\[1\]: expected int"),
    ("judge.flip=3", r"judge\.flip: expected bool"),
    ("data.val_fraction=1.5", r"data\.val_fraction must be in \[0, 1\)"),
    ("unet.loop.steps", r"expected section\.field=value"),
])
def test_bad_fields_are_refused_with_their_path(item, match):
    with pytest.raises(ValueError, match=match):
        resolve_recipe("tiny", sets=[item])


def test_json_toml_and_yaml_files_layer_under_set(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"preset": "tiny", "unet": {"loop": {"steps": 7, "lr": 0.01}}}))
    (tmp_path / "r.toml").write_text('preset = "tiny"\n[unet.loop]\nsteps = 7\nlr = 0.01\n')
    (tmp_path / "r.yaml").write_text("preset: tiny\nunet:\n  loop:\n    steps: 7\n    lr: 0.01\n")
    resolved = [recipe_to_dict(resolve_recipe(None, files=[str(tmp_path / f"r.{ext}")]))
                for ext in ("json", "toml", "yaml")]
    assert resolved[0] == resolved[1] == resolved[2]
    assert resolved[0]["preset"] == "tiny" and resolved[0]["unet"]["loop"]["steps"] == 7
    # later files and --set win; an explicit --preset beats the file's
    (tmp_path / "more.yaml").write_text("unet:\n  loop:\n    lr: 0.5\n")
    r = resolve_recipe(None, files=[str(tmp_path / "r.json"), str(tmp_path / "more.yaml")],
                       sets=["unet.loop.steps=9"])
    assert (r["unet"].loop.steps, r["unet"].loop.lr) == (9, 0.5)
    assert resolve_recipe("synth64", files=[str(tmp_path / "r.json")])["unet"].unet == UNET_PRESETS["synth64"].unet
    # the written recipe reads back to itself
    (tmp_path / "resolved.json").write_text(json.dumps(recipe_to_dict(r)))
    assert recipe_to_dict(resolve_recipe(None, files=[str(tmp_path / "resolved.json")])) == recipe_to_dict(r)


def test_bad_files_are_named(tmp_path):
    (tmp_path / "r.yaml").write_text("unet: [unclosed\n")
    with pytest.raises(ValueError, match=r"r\.yaml: not valid YAML"):
        read_config_file(tmp_path / "r.yaml")
    (tmp_path / "r.ini").write_text("x")
    with pytest.raises(ValueError, match="unknown config format"):
        read_config_file(tmp_path / "r.ini")
    (tmp_path / "r.json").write_text(json.dumps({"unet": {"loop": {"steps": 1, "warmup": 0}}}))
    with pytest.raises(ValueError, match=r"unknown field unet\.loop\.warmup of LoopConfig"):
        resolve_recipe("tiny", files=[str(tmp_path / "r.json")])


def test_stage_refuses_an_unknown_field_before_training(synth_dir, tmp_path, capsys):
    out = tmp_path / "model"
    code = main(["train", "vae", "--data", str(synth_dir), "--out", str(out), "--preset", "tiny",
                 "--set", "vae.loop.stepz=3"])
    assert code == 2
    assert "unknown field vae.loop.stepz of LoopConfig" in capsys.readouterr().err
    assert not (out / "vae").exists() and not (out / "checkpoints").exists()


def test_stage_writes_the_resolved_recipe_and_takes_it_back(synth_dir, tmp_path):
    out = tmp_path / "model"
    (tmp_path / "r.toml").write_text("[vae]\nstats_images = 4\nval_images = 4\n[vae.loop]\nbatch_size = 2\n")
    # flags beat --set, which beats the file, which beats the preset
    argv = ["train", "vae", "--data", str(synth_dir), "--out", str(out), "--preset", "tiny",
            "--config", str(tmp_path / "r.toml"), "--set", "vae.loop.steps=5", "--steps", "1",
            "--set", "vae.loop.ckpt_every=1", "--val-fraction", "0.2"]
    assert main(argv) == 0
    written = json.loads((out / "recipes" / "vae.json").read_text())
    assert written["preset"] == "tiny" and written["vae"]["loop"]["steps"] == 1
    assert written["vae"]["loop"]["batch_size"] == 2 and written["vae"]["stats_images"] == 4
    assert written["data"]["val_fraction"] == 0.2
    assert json.loads((out / "vae" / "metrics.json").read_text())["latent_stats_images"] == 4
    again = resolve(lambda p: {k: v for k, v in recipe_bases(p).items() if k in ("data", "vae")}, None,
                    files=[str(out / "recipes" / "vae.json")])
    assert recipe_to_dict(again) == written
