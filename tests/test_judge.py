"""The judge: model shapes, the balanced-accuracy helper, the masked class-balanced loss, and a
3-step training run through the CLI on the synth_dir fixture."""

import json

import numpy as np
import pytest
import torch

from t2i.attributes import ATTRIBUTE_INDEX, CELEBA_ATTRIBUTES
from t2i.cli import main
from t2i.models.judge import Judge, JudgeConfig, balanced_accuracy
from t2i.train.judge import PRESETS, JudgeStage, trained_attribute_mask


def test_judge_shapes_and_resizing():
    torch.manual_seed(0)
    judge = Judge(JudgeConfig(image_size=32, stem_channels=8, channels=(8, 16))).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert judge(x).shape == (3, 40)
    assert judge.features(x).shape == (3, 16) == (3, judge.num_features)
    # Other sizes are resized to the judge's own: 64px and 32px inputs of the same picture agree.
    big = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    assert torch.allclose(judge.features(big), judge.features(x), atol=0.05)
    probs, feats = judge.predict(big, batch_size=2)
    assert probs.shape == (3, 40) and ((probs >= 0) & (probs <= 1)).all() and feats.shape == (3, 16)
    with pytest.raises(ValueError, match="3-channel"):
        judge(torch.zeros(1, 1, 32, 32))


def test_judge_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible"):
        JudgeConfig(image_size=36, channels=(8, 16, 32))  # 36 is not a multiple of 2**4
    with pytest.raises(ValueError, match="channels"):
        JudgeConfig(channels=())


def test_balanced_accuracy_known_values():
    pred = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=torch.bool)
    true = torch.tensor([[1, 0], [0, 0], [0, 0], [1, 0]], dtype=torch.bool)
    s = balanced_accuracy(pred, true)
    # Column 0: hit 1/2, rejection 1/2 -> 0.5. Column 1: no positives (skipped), rejection 3/4.
    assert s["hit_rate"][0] == 0.5 and s["rejection_rate"][0] == 0.5 and s["balanced"][0] == 0.5
    assert torch.isnan(s["hit_rate"][1]) and s["balanced"][1] == 0.75
    assert s["accuracy"].tolist() == [0.5, 0.75]
    # A verdict that ignores its input scores exactly 0.5, whatever the base rate.
    true = torch.rand(1000, 3, generator=torch.Generator().manual_seed(0)) < torch.tensor([0.05, 0.5, 0.9])
    assert torch.allclose(balanced_accuracy(torch.ones_like(true), true)["balanced"], torch.full((3,), 0.5, dtype=torch.float64))


def test_mask_and_class_balanced_weights():
    rows = np.zeros((100, 40), dtype=np.float32)
    rows[:10, ATTRIBUTE_INDEX["Smiling"]] = 1  # 10% positive
    rows[:, ATTRIBUTE_INDEX["Male"]] = 1  # constant: never trained
    mask = trained_attribute_mask(rows, 0.002)
    assert mask.sum() == 1 and mask[ATTRIBUTE_INDEX["Smiling"]]
    stage = JudgeStage(PRESETS["tiny"], "unused", rows)
    assert stage.names == ["Smiling"]
    s = ATTRIBUTE_INDEX["Smiling"]
    # Positives in total weigh as much as negatives: 10 x w_pos == 90 x w_neg.
    assert 10 * stage.w_pos[s] == pytest.approx(90 * stage.w_neg[s])
    with pytest.raises(ValueError, match="nothing to learn"):
        JudgeStage(PRESETS["tiny"], "unused", np.zeros((10, 40)))


def test_train_judge_cli_tiny(synth_dir, tmp_path):
    out = tmp_path / "model"
    rc = main(["train", "judge", "--data", str(synth_dir), "--out", str(out), "--preset", "tiny", "--steps", "3"])
    assert rc == 0
    judge_dir = out / "judge"
    assert (judge_dir / "config.json").is_file() and (judge_dir / "model.safetensors").is_file()
    meta = json.loads((judge_dir / "config.json").read_text())
    assert meta["type"] == "judge" and meta["config"]["image_size"] == 32
    metrics = json.loads((judge_dir / "metrics.json").read_text())
    # Only attributes that vary in the training split are trained and reported (SynthFaces
    # never varies e.g. Attractive).
    names = metrics["attributes"]
    assert "Attractive" not in names and set(names) <= set(CELEBA_ATTRIBUTES) and "Male" in names
    for name in names:
        v = metrics["val"]["per_attribute"][name]
        assert set(v) == {"accuracy", "balanced_accuracy", "n_pos", "n_neg"}
    assert set(metrics["test_balanced_accuracy"]) == set(names)
    assert 0 <= metrics["test_mean_balanced_accuracy"] <= 1
    assert metrics["steps"] == 3 and metrics["wall_seconds"] > 0

    from t2i.eval.faithfulness import load_judge

    judge, _ = load_judge(out)  # a model dir holding judge/, or the judge dir itself
    judge2, _ = load_judge(judge_dir)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(judge.features(x), judge2.features(x)) and judge.features(x).shape == (2, 8 * 2)


def test_train_judge_cli_names_bad_data(tmp_path, capsys):
    rc = main(["train", "judge", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--preset", "tiny"])
    assert rc == 2 and "nowhere" in capsys.readouterr().err
