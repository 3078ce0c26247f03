"""Train the judge: the attribute classifier `t2i eval` uses to check generated images.

It learns the 40 CelebA attributes from the *train split's real images* with a class-balanced
binary cross-entropy (each attribute's positives and negatives weigh the same in total, so the
0.5 threshold targets balanced accuracy, the metric eval reports), masked to the attributes
that take both values in the training data (SynthFaces never varies 19 of the 40). Validation
and test accuracies are written to `judge/metrics.json`; they bound what eval can measure.

    t2i train judge --data data/synthfaces --out runs/demo --preset synth64
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from t2i.attributes import CELEBA_ATTRIBUTES, NUM_ATTRIBUTES
from t2i.checkpoint import atomic_write_json, save_component
from t2i.config import config_to_dict, replace
from t2i.data.tensors import split_tensors
from t2i.models.judge import Judge, JudgeConfig, balanced_accuracy
from t2i.train.loop import (
    LoopConfig,
    Stage,
    StepOutput,
    add_loop_arguments,
    add_stage_recipe_arguments,
    loop_config_from_args,
    record_recipe,
    stage_recipe,
    train,
)

COMPONENT = "judge"


@dataclass
class JudgeStageConfig:
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    flip: bool = True  # horizontal flips: no face attribute is left/right specific
    # Share of training images blurred (2x average-pool, then bilinear back up): generated and
    # VAE-decoded images are softer than the real ones, and the judge should read attributes,
    # not sharpness.
    soften_prob: float = 0.25
    min_class_rate: float = 0.002  # attributes rarer than this (either value) are not trained
    max_eval_images: int = 20000  # per split, for the validation/test metrics


PRESETS: dict[str, JudgeStageConfig] = {
    "tiny": JudgeStageConfig(
        judge=JudgeConfig(image_size=32, stem_channels=8, channels=(8, 16), depth=0),
        loop=LoopConfig(steps=20, batch_size=8, lr=2e-3, warmup_steps=2, ckpt_every=10, log_every=5,
                        mixed_precision="no"),
    ),
    # Runs inside the one-command CPU demo: a few minutes on 2 cores (see docs/eval.md).
    "synth64": JudgeStageConfig(
        judge=JudgeConfig(image_size=64, stem_channels=32, channels=(64, 128, 256), depth=1),
        loop=LoopConfig(steps=600, batch_size=64, lr=2e-3, warmup_steps=50, weight_decay=1e-4,
                        min_lr_ratio=0.0, ckpt_every=250, log_every=25),
    ),
    "celeba128": JudgeStageConfig(
        judge=JudgeConfig(image_size=128, stem_channels=32, channels=(64, 128, 256, 256), depth=2,
                          dropout=0.2),
        loop=LoopConfig(steps=15000, batch_size=128, lr=1e-3, warmup_steps=500, weight_decay=0.05,
                        min_lr_ratio=0.05, ckpt_every=1000, log_every=100, num_workers=4),
    ),
}


def trained_attribute_mask(attributes: np.ndarray, min_rate: float) -> np.ndarray:
    """(40,) bool: attributes whose rarer value has a share >= min_rate in `attributes` (N, 40)."""
    rate = np.asarray(attributes, dtype=np.float64).mean(axis=0) if len(attributes) else np.zeros(NUM_ATTRIBUTES)
    return (rate >= min_rate) & (rate <= 1 - min_rate) & (rate > 0) & (rate < 1)


def attribute_report(probs: torch.Tensor, attributes: torch.Tensor, names: list[str]) -> dict:
    """Per-attribute accuracy / balanced accuracy of the judge on labelled images."""
    idx = [CELEBA_ATTRIBUTES.index(n) for n in names]
    stats = balanced_accuracy(probs[:, idx] > 0.5, attributes[:, idx] > 0.5)
    per = {
        n: {"accuracy": _f(stats["accuracy"][j]), "balanced_accuracy": _f(stats["balanced"][j]),
            "n_pos": int(stats["n_pos"][j]), "n_neg": int(stats["n_neg"][j])}
        for j, n in enumerate(names)
    }
    return {"per_attribute": per, "mean_balanced_accuracy": _f(torch.nanmean(stats["balanced"])),
            "mean_accuracy": _f(torch.nanmean(stats["accuracy"])), "images": int(probs.shape[0])}


def _f(x) -> float | None:
    x = float(x)
    return None if x != x else round(x, 5)  # NaN (undefined) -> null in JSON


class JudgeStage(Stage):
    name = COMPONENT

    def __init__(self, cfg: JudgeStageConfig, data_root: str | Path, train_attributes: np.ndarray,
                 data_options=None):
        self.cfg = cfg
        self.data_root, self.data_options = Path(data_root), data_options
        self.mask = torch.from_numpy(trained_attribute_mask(train_attributes, cfg.min_class_rate))
        if not self.mask.any():
            raise ValueError(f"{data_root}: no attribute takes both values in the training split; "
                             "the judge has nothing to learn")
        self.names = [n for n, m in zip(CELEBA_ATTRIBUTES, self.mask.tolist()) if m]
        # Class-balanced weights (King & Zeng 2001): positives weigh 0.5/p, negatives 0.5/(1-p),
        # so each value of an attribute contributes equally however rare it is.
        p = torch.from_numpy(np.asarray(train_attributes, dtype=np.float32).mean(axis=0)).clamp(0.01, 0.99)
        self.w_pos, self.w_neg = 0.5 / p, 0.5 / (1 - p)

    def build(self):
        return {COMPONENT: Judge(self.cfg.judge)}

    def training_step(self, batch, ctx):
        x, y = batch["image"], batch["attributes"].float()  # (B, 3, S, S), (B, 40)
        B = x.shape[0]
        if self.cfg.soften_prob > 0:
            soft = (ctx.rand(B) < self.cfg.soften_prob)[:, None, None, None]
            blurred = F.interpolate(F.avg_pool2d(x, 2), size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.where(soft, blurred, x)
        logits = ctx.models[COMPONENT](x).float()  # (B, 40)
        mask = self.mask.to(x.device)
        weight = (y * self.w_pos.to(x.device) + (1 - y) * self.w_neg.to(x.device)) * mask
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        loss = (bce * weight).sum() / (B * mask.sum())
        acc = ((logits > 0) == (y > 0.5)).float()[:, mask].mean()
        return StepOutput(loss, {"acc": acc.detach()})

    def _evaluate(self, judge: Judge, split: str) -> dict | None:
        from t2i.data.celeba import FaceDataset

        try:
            ds = FaceDataset(self.data_root, split=split, image_size=self.cfg.judge.image_size, preload=False,
                             options=self.data_options)
        except ValueError:  # a layout without splits
            return None
        if len(ds) == 0:
            return None
        images, attrs = split_tensors(ds, self.cfg.max_eval_images)
        probs, _ = judge.predict(images)
        return attribute_report(probs, attrs, self.names)

    def finish(self, ctx):
        judge = ctx.unwrap(COMPONENT).eval()
        t0 = time.perf_counter()
        val, test = self._evaluate(judge, "val"), self._evaluate(judge, "test")
        metrics = {
            "attributes": self.names,
            "val": val,
            "test_balanced_accuracy": (
                {n: v["balanced_accuracy"] for n, v in test["per_attribute"].items()} if test else None),
            "test_mean_balanced_accuracy": test["mean_balanced_accuracy"] if test else None,
            "test_images": test["images"] if test else 0,
            "eval_seconds": round(time.perf_counter() - t0, 1),
            "parameters": judge.num_params(),
            "data": str(self.data_root),
        }
        extra = {"attributes": self.names, "stage_config": config_to_dict(self.cfg)}
        directory = save_component(ctx.out_dir / COMPONENT, judge, self.cfg.judge, COMPONENT, extra=extra)
        atomic_write_json(directory / "metrics.json", metrics)
        return {"val_mean_balanced_accuracy": val["mean_balanced_accuracy"] if val else None,
                "test_mean_balanced_accuracy": metrics["test_mean_balanced_accuracy"]}


def train_judge(data: str | Path, out: str | Path, cfg: JudgeStageConfig, data_options=None) -> dict:
    """Train on DATA's train split and write OUT/judge/ (+ metrics.json). Returns the metrics
    (with `train_seconds` and `wall_seconds`)."""
    from t2i.data.celeba import FaceDataset

    t0 = time.perf_counter()
    dataset = FaceDataset(data, split="train", image_size=cfg.judge.image_size, flip=cfg.flip, preload=True,
                          options=data_options)
    if not dataset.has_attributes:
        raise ValueError(f"{data}: this dataset has no attribute labels; the judge needs them")
    stage = JudgeStage(cfg, data, dataset.attributes, data_options)
    metrics = train(stage, dataset, cfg.loop, out)
    if metrics:
        metrics["wall_seconds"] = round(time.perf_counter() - t0, 3)
        path = Path(out) / COMPONENT / "metrics.json"
        if path.is_file():  # add the timing to the file the stage wrote
            saved = json.loads(path.read_text())
            saved.update(train_seconds=metrics.get("train_seconds"), wall_seconds=metrics["wall_seconds"],
                         steps=metrics.get("steps"), global_batch=metrics.get("global_batch"))
            atomic_write_json(path, saved)
    return metrics


# -- CLI ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory with attribute labels")
    parser.add_argument("--out", required=True, help="output directory; the judge goes to OUT/judge/ "
                        "(use the model directory so `t2i eval` finds it)")
    parser.add_argument("--preset", default="synth64", choices=sorted(PRESETS))
    parser.add_argument("--image-size", type=int, help="input size (default: the preset's)")
    add_loop_arguments(parser)
    add_stage_recipe_arguments(parser)


def config_from_args(args: argparse.Namespace, base: JudgeStageConfig | None = None) -> JudgeStageConfig:
    """`base` (default: the preset) with the stage's flags that were given."""
    cfg = base or PRESETS[args.preset]
    loop = loop_config_from_args(cfg.loop, args)
    return replace(cfg, loop=loop, judge=replace(cfg.judge, image_size=args.image_size))


def run(args: argparse.Namespace) -> int:
    recipe = stage_recipe(args, COMPONENT, PRESETS)
    recipe[COMPONENT] = cfg = config_from_args(args, recipe[COMPONENT])
    record_recipe(args.out, COMPONENT, recipe)
    metrics = train_judge(args.data, args.out, cfg, recipe["data"])
    if metrics:
        print(f"[judge] done in {metrics['wall_seconds']:.0f} s: validation mean balanced accuracy "
              f"{metrics.get('val_mean_balanced_accuracy')}, test {metrics.get('test_mean_balanced_accuracy')} "
              f"-> {Path(args.out) / COMPONENT}")
    return 0
