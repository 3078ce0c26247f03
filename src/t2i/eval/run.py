"""`t2i eval`: generate from a prompt suite and measure whether the pictures obey the prompt.

    t2i eval --model runs/demo --data data/synthfaces [--sweep] [--out runs/demo/eval]

Metrics (definitions and chance levels in docs/eval.md): per-attribute balanced faithfulness
judged by the project's attribute classifier, the all-attributes-correct rate, held-out
attribute combinations (and, with the prompts that deny an attribute, the same requests
written as composed prompts: `a AND b AND NOT c`), FD on judge features (with real-vs-real, VAE-reconstruction and
shuffled-prompt references), CLIP score and R-precision with the project's CLIP, and
diversity. Everything is computed beside its ceiling and floor on real test images, so a
number can be read alone. A dataset without attribute labels gets the caption metrics of
`t2i.eval.caption_eval` (R-precision, CLIP score, FD on CLIP features, diversity) instead.

`evaluate(pipe, judge, data, cfg)` takes any object with the pipeline's call signature
(`pipe(prompts, num_images=, steps=, guidance=, sampler=, seed=, output_type="pt")`,
`pipe.vae`, `pipe.text_encoder`, `pipe.image_size`, `pipe.model_id`), so the metrics are
tested without a trained diffusion model.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i.attributes import ATTRIBUTE_INDEX
from t2i.checkpoint import atomic_write_json
from t2i.config import add_recipe_arguments, recipe_from_args, recipe_to_dict
from t2i.data.captions import DENIAL_WEIGHT
from t2i.data.options import DataOptions, add_data_arguments, data_options_from_args
from t2i.diffusion.samplers import SAMPLERS
from t2i.eval.caption_eval import evaluate_captions
from t2i.eval.clip_metrics import r_precision_scores
from t2i.eval.faithfulness import (
    bootstrap_gap,
    bootstrap_intervals,
    faithfulness,
    group_mean_pairwise_distance,
    judge_images,
    load_judge,
    same_attribute_diversity,
)
from t2i.eval.fd import FDMeter
from t2i.eval.generation import generate_images, vae_reconstruct
from t2i.eval.prompts import (
    PromptSuite,
    build_suite,
    caption_rows,
    column_shuffled,
    composed_text,
    denial_text,
    shuffled_rows,
)
from t2i.eval.report import (
    composed_table,
    fmt,
    headline_table,
    prompt_grid,
    report_header,
    sweep_table,
    wording_table,
    write_report,
)
from t2i.eval.wording import PHRASINGS, everyday_text, phrased_text
from t2i.pipeline import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, parse_prompt


@dataclass
class EvalConfig:
    n_prompts: int = 64  # prompts drawn from test-split attribute rows
    n_per_prompt: int = 4
    n_heldout: int = 32  # prompts with attribute combinations absent from the training split
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    sampler: str = DEFAULT_SAMPLER
    seed: int = 0
    batch_size: int = 64  # images per pipeline call
    max_real: int = 4000  # real test images loaded (ceiling, floor, FD reference)
    negate_prob: float = 0.25  # share of prompts that also deny one absent attribute
    # Test rows are added until each scored value is requested for this many images (48: a
    # rare attribute's balanced accuracy then moves by about +-0.05 between seeds, not +-0.1).
    min_images_per_class: int = 48
    fd_images: int = 256  # FD set: this many test rows drawn at random, one image each
    sweep: bool = False
    quick: bool = False  # sweep without the slow 400-step DDPM setting
    sweep_images: int = 128  # per sweep setting: test rows drawn at random, one image each
    sweep_steps: tuple[int, ...] = (10, 20, 50)
    sweep_guidance: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 7.5)
    sweep_samplers: tuple[str, ...] = ()  # () = every sampler the pipeline offers
    # The baseline's sampler and step count: the reference project (Text-To-Image-From-Scratch:
    # diffusers UNet2DConditionModel, pretrained DistilBERT) samples with 400 DDPM steps.
    baseline_setting: tuple[str, int] = ("ddpm", 400)
    grid_prompts: int = 12  # prompts per image grid in the HTML report
    clip_images: int = 512  # real images scored for the CLIP ceiling/floor
    composed: bool = True  # held-out and denying prompts again as composed prompts (`a AND NOT b`)
    wording_prompts: int = 32  # test prompts rewritten in everyday words and in new sentence shapes (0: skip)
    bootstrap: int = 1000  # resamples of the prompts for each 95% interval (0: no intervals)

    def __post_init__(self):
        for name in ("n_per_prompt", "steps", "batch_size", "max_real"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.n_prompts < 2:
            raise ValueError(f"--n-prompts must be >= 2 (FD needs two images), got {self.n_prompts}")
        if self.n_heldout < 0:
            raise ValueError(f"--n-heldout must be >= 0, got {self.n_heldout}")
        if self.guidance < 0:
            raise ValueError(f"--guidance must be >= 0, got {self.guidance}")


# Sizes per preset (the same names as the training presets, so `t2i train all --preset P`
# evaluates at a matching size); explicit flags override them.
PRESETS: dict[str, dict] = {
    "tiny": dict(n_prompts=2, n_per_prompt=2, n_heldout=1, steps=2, max_real=64, sweep_images=4, fd_images=8,
                 clip_images=16, grid_prompts=2, quick=True, min_images_per_class=2, wording_prompts=2),
    "synth64": {},
    "celeba128": dict(n_prompts=128, n_heldout=64, batch_size=128, max_real=5000, sweep_images=512,
                      fd_images=1024),
}


# ----------------------------------------------------------------------------- data


def load_eval_data(data: str | Path, image_size: int, max_real: int,
                   data_options=None) -> tuple[np.ndarray, torch.Tensor, np.ndarray, np.ndarray]:
    """(train rows (N_tr, 40) bool, test images (N, 3, S, S), test rows (N, 40) bool, all rows)."""
    from t2i.data.celeba import FaceDataset, read_annotations
    from t2i.data.tensors import split_tensors

    ann = read_annotations(data, data_options)
    if not ann.has_attributes:
        raise ValueError(f"{data}: no attribute labels; eval needs them to build prompts and score images")
    if ann.partition is None:
        raise ValueError(f"{data}: no train/val/test split file; eval needs a test split of real images")
    rows = ann.attributes > 0.5
    test = FaceDataset(data, split="test", image_size=image_size, options=data_options)
    if len(test) < 4:
        raise ValueError(f"{data}: the test split has {len(test)} images; eval needs at least 4")
    images, attrs = split_tensors(test, max_real)
    return rows[ann.partition == 0], images, attrs.numpy() > 0.5, rows


# ----------------------------------------------------------------------------- evaluate


@dataclass
class _Generated:
    """The suite's images (prompt-major, K per prompt) and what the judge reads in them."""

    images: torch.Tensor  # (P*K, 3, S, S) in [-1, 1]
    verdicts: torch.Tensor  # (P*K, 40) the judge's attribute verdicts
    features: torch.Tensor  # (P*K, F) the judge's penultimate features
    seconds: float  # generation time
    requested: np.ndarray  # (P*K, 40) what each image's prompt asked for
    negated: list  # per image: the attributes its prompt denies
    groups: dict[str, list[int]]  # image indices of the "test" and "heldout" prompts

    def faithfulness(self, group: str, scored: tuple[str, ...], cfg: EvalConfig) -> dict | None:
        """Faithfulness of one prompt group's images with its bootstrap intervals (None when the
        group is empty)."""
        r = self.groups[group]
        if not r:
            return None
        denied = [self.negated[i] for i in r]
        return with_intervals(faithfulness(self.verdicts[r], self.requested[r], scored, denied),
                              self.verdicts[r], self.requested[r], scored, cfg.n_per_prompt, denied, cfg)


def _wrong_notes(verdicts: torch.Tensor, requested: np.ndarray, scored: tuple[str, ...]) -> list[str]:
    idx = [ATTRIBUTE_INDEX[a] for a in scored]
    notes = []
    for v, r in zip(verdicts[:, idx].numpy(), requested[:, idx]):
        wrong = [scored[j] for j in np.nonzero(v != r)[0]]
        notes.append("ok" if not wrong else f"x{len(wrong)}: " + ", ".join(w.replace("_", " ").lower() for w in wrong))
    return notes


def evaluate(pipe, judge, data: str | Path, cfg: EvalConfig, out_dir: str | Path | None = None,
             judge_meta: dict | None = None, progress: bool = True, log=print, data_options=None) -> dict:
    """Run the whole evaluation; write the report to `out_dir` if given. Returns report.json's dict."""
    t_start = time.perf_counter()
    judge = judge.eval()
    K = cfg.n_per_prompt
    train_rows, real, real_rows, all_rows = load_eval_data(data, pipe.image_size, cfg.max_real, data_options)
    suite = build_suite(train_rows, real_rows, cfg.n_prompts, cfg.n_heldout, cfg.seed, cfg.negate_prob,
                        all_rows=all_rows, min_per_class=math.ceil(cfg.min_images_per_class / K))
    scored = _score_what_the_judge_learned(suite, judge_meta, log)
    log(f"[eval] {len(real)} real test images, {len(scored)} scored attributes; "
        f"{suite.info['test_prompts']} test ({suite.info['coverage_prompts']} added for rare attributes) + "
        f"{suite.info['heldout_prompts']} held-out prompts x {K}")

    # 1. The judge on real test images: ceiling (own attributes) and floor (shuffled captions).
    real_verdicts, real_features = judge_images(judge, real)
    shuffled = shuffled_rows(real_rows, cfg.seed)
    ceiling = faithfulness(real_verdicts, real_rows, scored)
    floor = faithfulness(real_verdicts, shuffled, scored)

    # 2. Generate the suite (test and held-out prompts together, prompt-major) and judge it.
    generated = generate_suite(pipe, judge, suite, cfg, progress)

    # 3. FD against half of the real test images; the other half gives the real-vs-real floor.
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(cfg.seed))
    ref, other = perm[: len(real) // 2], perm[len(real) // 2 :]
    meter = FDMeter(judge, real[ref])
    fd, vae_ceiling = measure_fd(pipe, judge, meter, real[other], real_rows[other.numpy()], scored, cfg, progress)

    # 4. CLIP score and R-precision with the project's CLIP.
    clip, rprec = clip_scores(pipe, suite, generated, real, real_rows, shuffled, scored, cfg)

    # 5. Diversity within a prompt, and among real images sharing all scored attributes.
    diversity = {
        "generated": group_mean_pairwise_distance(generated.features[generated.groups["test"]], K),
        "real_same_attributes": same_attribute_diversity(real_features, real_rows, scored, seed=cfg.seed),
    }

    # 6. The same requests as composed prompts and in other words; the sampler/steps/guidance sweep.
    plain = (generated.verdicts, generated.requested, generated.negated)
    composed = compare_composed(pipe, judge, suite, *plain, cfg, progress) if cfg.composed else None
    wording = compare_wordings(pipe, judge, suite, *plain, cfg, progress) if cfg.wording_prompts > 0 else None
    sweep = []
    if cfg.sweep:  # on real rows outside the FD reference
        some = other[: cfg.sweep_images]
        sweep = run_sweep(pipe, judge, scored, real_rows[some.numpy()], real[some], cfg, meter, progress, log)

    report = {
        **report_header(pipe, data, cfg),
        "judge": {k: (judge_meta or {}).get(k) for k in ("test_mean_balanced_accuracy", "path")},
        "suite": {"info": suite.info, "prompts": [p.to_dict(scored) for p in suite.prompts]},
        "faithfulness": {"test": generated.faithfulness("test", scored, cfg),
                         "heldout": generated.faithfulness("heldout", scored, cfg),
                         "all": faithfulness(generated.verdicts, generated.requested, scored, generated.negated),
                         "ceiling_real": ceiling, "ceiling_vae": vae_ceiling, "floor_shuffled": floor},
        "r_precision": rprec,
        "fd": fd,
        "clip_score": clip,
        "diversity": diversity,
        "timing": {"seconds_per_image": generated.seconds / max(1, len(generated.images)),
                   "images": int(len(generated.images)), "batch_size": cfg.batch_size},
        "composed": composed,
        "wording": wording,
        "sweep": sweep,
    }
    report["timing"]["total_seconds"] = round(time.perf_counter() - t_start, 1)
    if out_dir is not None:
        paths = write_report(report, out_dir, report_grids(suite, generated, scored, cfg))
        log(f"[eval] wrote {paths['json']} and {paths['html']}")
    return report


def _score_what_the_judge_learned(suite: PromptSuite, judge_meta: dict | None, log) -> tuple[str, ...]:
    """The suite's scored attributes, less those the judge was not trained on (it may come from
    another dataset). Narrows `suite.scored` and returns it."""
    trained = (judge_meta or {}).get("attributes")
    if trained:
        missing = [a for a in suite.scored if a not in trained]
        if missing:
            log(f"[eval] warning: the judge was not trained on {missing}; they are not scored")
            suite.scored = tuple(a for a in suite.scored if a in trained)
        if not suite.scored:
            raise ValueError("the judge was trained on none of the attributes this dataset varies; "
                             "train it on this dataset with `t2i train judge`")
    return suite.scored


def generate_suite(pipe, judge, suite: PromptSuite, cfg: EvalConfig, progress: bool) -> _Generated:
    """`cfg.n_per_prompt` images per suite prompt, judged."""
    K = cfg.n_per_prompt
    # One untimed call first: the first forward pays one-off costs (kernel selection, caches).
    pipe(suite.texts()[:1], num_images=1, steps=min(2, cfg.steps), guidance=cfg.guidance, sampler=cfg.sampler,
         seed=0, output_type="pt")
    images, seconds = generate_images(pipe, suite.texts(), K, cfg.steps, cfg.guidance, cfg.sampler, cfg.seed,
                                      cfg.batch_size, "suite", progress)
    verdicts, features = judge_images(judge, images)
    groups = {name: [i * K + k for i in suite.group(name) for k in range(K)] for name in ("test", "heldout")}
    return _Generated(images, verdicts, features, seconds, requested=np.repeat(suite.requested(), K, axis=0),
                      negated=[p.negated for p in suite.prompts for _ in range(K)], groups=groups)


def measure_fd(pipe, judge, meter: FDMeter, real: torch.Tensor, rows: np.ndarray, scored: tuple[str, ...],
               cfg: EvalConfig, progress: bool) -> tuple[dict, dict | None]:
    """FD of generated images against the meter's real reference, beside its real-vs-real floor
    (`real`: other real test images, `rows` their attributes), the VAE round trip and
    column-shuffled prompts. Returns (the FD section of the report, the judge's faithfulness on
    VAE round trips: the ceiling for any generator decoding through this VAE; None without a VAE).

    The FD set is its own: `fd_images` rows drawn at random with one image each, like the real
    images it is compared with. (K images per prompt would not do: a perfect generator's set
    would then hold fewer independent attribute draws than a real set of the same size, and FD
    would punish it; a faithful stand-in measured 18.5 that way against 8.0 real/real.)"""
    n_fd = max(2, min(cfg.fd_images, len(real)))
    real, rows = real[:n_fd], rows[:n_fd]
    fd_images, _ = generate_images(pipe, caption_rows(rows, scored), 1, cfg.steps, cfg.guidance, cfg.sampler,
                                   cfg.seed, cfg.batch_size, "fd", progress)
    fd = {
        "generated": meter.fd(fd_images),
        "real_vs_real": meter.fd(real),
        "vae_reconstruction": None,
        "column_shuffled_prompts": None,
        "n_generated": n_fd, "n_reference": meter.n_real, "n_real_other": len(real),
        "features": f"judge penultimate layer ({judge.num_features} dims); not Inception, not comparable to FID",
    }
    vae_ceiling = None
    if getattr(pipe, "vae", None) is not None:
        recon = vae_reconstruct(pipe.vae, real)
        fd["vae_reconstruction"] = meter.fd(recon)
        vae_ceiling = faithfulness(judge_images(judge, recon)[0], rows, scored)
    # Control: the same attribute frequencies, with each column shuffled across prompts, so the
    # combinations ignore the data's correlations; FD should rise if it sees attributes at all.
    mixed = caption_rows(column_shuffled(rows, scored, cfg.seed), scored)
    mixed_images, _ = generate_images(pipe, mixed, 1, cfg.steps, cfg.guidance, cfg.sampler, cfg.seed,
                                      cfg.batch_size, "shuffled", progress)
    fd["column_shuffled_prompts"] = meter.fd(mixed_images)
    return fd, vae_ceiling


def clip_scores(pipe, suite: PromptSuite, generated: _Generated, real: torch.Tensor, real_rows: np.ndarray,
                shuffled: np.ndarray, scored: tuple[str, ...], cfg: EvalConfig) -> tuple[dict | None, dict | None]:
    """(CLIP score, R-precision) with the project's CLIP, (None, None) when the pipeline's text
    encoder cannot score. CLIP score of the test prompts' images, and of real images with their
    own and with shuffled captions (ceiling and floor). R-precision beside it: each image's
    prompt against 99 captions of other test rows, worded like the suite's prompts
    (caption_rows), so wording cannot give it away."""
    text_encoder = getattr(pipe, "text_encoder", None)
    if text_encoder is None or not hasattr(text_encoder, "score"):
        return None, None
    gen_test = generated.images[generated.groups["test"]]
    texts = [suite.prompts[i].text for i in suite.group("test") for _ in range(cfg.n_per_prompt)]
    n = min(cfg.clip_images, len(real))
    real_captions = caption_rows(real_rows[:n], scored)
    clip = {
        "generated": float(text_encoder.score(gen_test, texts).mean()),
        "real": float(text_encoder.score(real[:n], real_captions).mean()),
        "real_shuffled": float(text_encoder.score(real[:n], caption_rows(shuffled[:n], scored)).mean()),
    }
    return clip, r_precision_scores(text_encoder, gen_test, texts, real[:n], real_captions, cfg.seed)


def report_grids(suite: PromptSuite, generated: _Generated, scored: tuple[str, ...], cfg: EvalConfig
                 ) -> dict[str, Image.Image]:
    """Up to `grid_prompts` prompts per group, their images in a row, the judge's misses in red."""
    K = cfg.n_per_prompt
    grids = {}
    for name, group in (("test prompts", "test"), ("held-out combinations", "heldout")):
        idx = suite.group(group)[: cfg.grid_prompts]
        if idx:
            rows = [i * K + k for i in idx for k in range(K)]
            grids[f"Generated images: {name} (judge's misses in red)"] = prompt_grid(
                generated.images[rows], suite.texts(idx), K,
                _wrong_notes(generated.verdicts[rows], generated.requested[rows], scored))
    return grids


# The composed forms `compare_composed` measures: (key, how the request is written, text builder).
COMPOSED_FORMS = (
    ("terms", "one term per requested attribute (subject kept, hair words together), NOT per explicit denial, "
              "every weight 1", composed_text),
    ("denials", f"the request's description as one term, NOT per explicit denial at weight {DENIAL_WEIGHT:g}",
     denial_text),
)


def compare_composed(pipe, judge, suite: PromptSuite, plain_verdicts: torch.Tensor, requested: np.ndarray,
                     negated: list[tuple[str, ...]], cfg: EvalConfig, progress: bool) -> dict | None:
    """The held-out combinations and every prompt with an explicit denial, generated again in
    each of the COMPOSED_FORMS and scored against the same requests as the plain prompts' images
    (`plain_verdicts`, (P*K, 40), from the suite's own run, so the sets share settings but not
    start noise). {form: {"form", "heldout", "negations", "prompts", "seconds_per_image", "images"}}."""
    K = cfg.n_per_prompt
    held = suite.group("heldout")
    denying = [i for i, p in enumerate(suite.prompts) if p.negated]
    chosen = list(dict.fromkeys(held + denying))
    if not chosen:
        return None
    at = {i: n for n, i in enumerate(chosen)}

    def both(ids: list[int], verdicts: torch.Tensor) -> dict | None:
        if not ids:
            return None
        plain_rows = [i * K + k for i in ids for k in range(K)]
        composed_rows = [at[i] * K + k for i in ids for k in range(K)]
        denied = [negated[r] for r in plain_rows]
        pair = (plain_verdicts[plain_rows], verdicts[composed_rows])
        return {"plain": with_intervals(faithfulness(pair[0], requested[plain_rows], suite.scored, denied),
                                        pair[0], requested[plain_rows], suite.scored, K, denied, cfg),
                "composed": with_intervals(faithfulness(pair[1], requested[plain_rows], suite.scored, denied),
                                           pair[1], requested[plain_rows], suite.scored, K, denied, cfg),
                "gap": (bootstrap_gap(*pair, requested[plain_rows], suite.scored, K, denied, cfg.bootstrap,
                                      cfg.seed) if cfg.bootstrap else None)}

    out = {}
    for key, form, compose in COMPOSED_FORMS:
        texts = [compose(suite.prompts[i], suite.scored) for i in chosen]
        # A composed image runs (terms + 1) UNet rows a step: keep a call's rows near a plain call's.
        rows_per_image = max(len(parse_prompt(t).terms) for t in texts) + 1
        batch = max(K, cfg.batch_size * 2 // rows_per_image)
        images, seconds = generate_images(pipe, texts, K, cfg.steps, cfg.guidance, cfg.sampler, cfg.seed, batch,
                                          f"composed-{key}", progress, composed=True)
        verdicts, _ = judge_images(judge, images)
        out[key] = {
            "form": form + "; same steps, sampler and guidance as the plain prompts",
            "heldout": both(held, verdicts),
            "negations": both(denying, verdicts),
            "prompts": [{"plain": suite.prompts[i].text, "composed": t} for i, t in zip(chosen, texts)],
            "seconds_per_image": seconds / max(1, len(images)),
            "images": int(len(images)),
        }
    return out


def with_intervals(figures: dict, verdicts, requested, scored, K: int, negated, cfg: EvalConfig) -> dict:
    """`figures` (from `faithfulness`) with "intervals": 95% bootstrap intervals over prompts."""
    if cfg.bootstrap > 0:
        figures["intervals"] = bootstrap_intervals(verdicts, requested, scored, K, negated, cfg.bootstrap, cfg.seed)
    return figures


def compare_wordings(pipe, judge, suite: PromptSuite, plain_verdicts: torch.Tensor, requested: np.ndarray,
                     negated: list[tuple[str, ...]], cfg: EvalConfig, progress: bool) -> dict | None:
    """The first `cfg.wording_prompts` test prompts generated again in other words: the
    vocabulary suite (everyday words, canonical frame) and the phrasing suite (canonical words,
    sentence shapes the caption templates never produce; `t2i.eval.wording`). Each is scored
    against the same requests as the canonical prompts' images (`plain_verdicts`, from the
    suite's own run), with the gap canonical - other and its paired 95% bootstrap interval."""
    K = cfg.n_per_prompt
    chosen = suite.group("test")[: cfg.wording_prompts]
    if not chosen:
        return None
    rows = [i * K + k for i in chosen for k in range(K)]
    denied = [negated[r] for r in rows]
    canonical_verdicts = plain_verdicts[rows]
    canonical = with_intervals(faithfulness(canonical_verdicts, requested[rows], suite.scored, denied),
                               canonical_verdicts, requested[rows], suite.scored, K, denied, cfg)
    rewrite = {
        "vocabulary": lambda n, p: everyday_text(p.requested, p.negated, suite.scored,
                                                  random.Random(f"t2i-eval-vocabulary/{cfg.seed}/{n}")),
        "phrasing": lambda n, p: phrased_text(p.requested, p.negated, suite.scored, PHRASINGS[n % len(PHRASINGS)]),
    }
    out = {}
    for name, write in rewrite.items():
        texts = [write(n, suite.prompts[i]) for n, i in enumerate(chosen)]
        images, seconds = generate_images(pipe, texts, K, cfg.steps, cfg.guidance, cfg.sampler, cfg.seed,
                                          cfg.batch_size, name, progress)
        verdicts, _ = judge_images(judge, images)
        unseen = getattr(pipe, "unseen_words", None)
        out[name] = {
            "canonical": canonical,
            "variant": with_intervals(faithfulness(verdicts, requested[rows], suite.scored, denied),
                                      verdicts, requested[rows], suite.scored, K, denied, cfg),
            "gap": bootstrap_gap(canonical_verdicts, verdicts, requested[rows], suite.scored, K, denied,
                                 max(cfg.bootstrap, 1), cfg.seed),
            # Words of the rewritten prompts that the model's training captions never contained.
            "unseen_words": sorted({u.word for t in texts for u in unseen(t)}) if callable(unseen) else None,
            "prompts": [{"canonical": suite.prompts[i].text, "variant": t} for i, t in zip(chosen, texts)],
            "seconds_per_image": seconds / max(1, len(images)),
        }
    return out


def sweep_settings(cfg: EvalConfig, samplers: list[str]) -> list[tuple[str, int, float]]:
    """(sampler, steps, guidance) settings, without repeats: steps at the default sampler and
    guidance, every sampler at the default steps, every guidance at the default sampler/steps,
    and the baseline's 400-step DDPM unless `quick`."""
    out: list[tuple[str, int, float]] = []
    for s in cfg.sweep_steps:
        out.append((cfg.sampler, s, cfg.guidance))
    for sampler in cfg.sweep_samplers or samplers:
        out.append((sampler, cfg.steps, cfg.guidance))
    for g in cfg.sweep_guidance:
        out.append((cfg.sampler, cfg.steps, float(g)))
    if not cfg.quick:
        out.append((cfg.baseline_setting[0], int(cfg.baseline_setting[1]), cfg.guidance))
    seen, unique = set(), []
    for setting in out:
        if setting not in seen:
            seen.add(setting)
            unique.append(setting)
    return unique


def run_sweep(pipe, judge, scored: tuple[str, ...], rows: np.ndarray, real: torch.Tensor, cfg: EvalConfig,
              meter: FDMeter, progress: bool, log) -> list[dict]:
    """Each setting generates one image for each of `rows` (test rows drawn at random, the
    attributes of the real images `real`), scored for faithfulness and FD from the same images.
    Each row carries 95% bootstrap intervals over the prompts and, but for the default
    setting's own row, "gap_to_default": default minus this setting with its paired interval
    (every setting draws the same prompts from the same start noise, so the pairing is exact)."""
    samplers = list(SAMPLERS)
    prompts = caption_rows(rows, scored)
    n = len(prompts)
    fd_floor = meter.fd(real) if n >= 2 else None
    default = (cfg.sampler, cfg.steps, cfg.guidance)
    results, verdicts_of = [], {}
    for sampler, steps, guidance in sweep_settings(cfg, samplers):
        # Every setting starts from the same noise (same tag and seeds): only the setting differs.
        images, seconds = generate_images(pipe, prompts, 1, steps, guidance, sampler, cfg.seed, cfg.batch_size,
                                          "sweep", progress)
        verdicts, _ = judge_images(judge, images)
        verdicts_of[(sampler, steps, guidance)] = verdicts
        f = with_intervals(faithfulness(verdicts, rows, scored), verdicts, rows, scored, 1, None, cfg)
        row = {"sampler": sampler, "steps": steps, "guidance": guidance, "macro_balanced": f["macro_balanced"],
               "all_correct_rate": f["all_correct_rate"], "intervals": f.get("intervals"),
               "fd": meter.fd(images) if n >= 2 else None,
               "fd_real_vs_real": fd_floor, "seconds_per_image": seconds / n, "images": n}
        results.append(row)
        log(f"[eval] sweep {sampler:>14} {steps:4d} steps guidance {guidance:4.1f}: balanced "
            f"{fmt(row['macro_balanced'])} all-correct {fmt(row['all_correct_rate'])} FD {fmt(row['fd'], 2)} "
            f"{row['seconds_per_image'] * 1000:.1f} ms/img")
    if default in verdicts_of and cfg.bootstrap > 0:
        for row in results:
            setting = (row["sampler"], row["steps"], row["guidance"])
            if setting != default:
                row["gap_to_default"] = bootstrap_gap(verdicts_of[default], verdicts_of[setting], rows, scored, 1,
                                                      None, cfg.bootstrap, cfg.seed)
    return results


# ----------------------------------------------------------------------------- CLI


def dataset_has_attributes(data: str | Path, data_options=None) -> bool:
    """Whether the dataset labels its images with attributes that vary (CelebA's columns, or
    attribute columns in an imagefolder's metadata or a parquet set): then a judge can learn
    them and measure faithfulness."""
    from t2i.data.celeba import read_annotations

    ann = read_annotations(data, data_options)
    return bool(ann.has_attributes) and bool((ann.attributes.min(axis=0) != ann.attributes.max(axis=0)).any())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = EvalConfig()
    parser.add_argument("--model", required=True, help="model directory (vae/, clip/, unet/, tokenizer.json)")
    parser.add_argument("--judge", help="judge (model dir or judge dir); default MODEL/judge")
    parser.add_argument("--data", required=True,
                        help="dataset directory with a test split; without attribute labels, caption metrics only")
    parser.add_argument("--out", help="report directory; default MODEL/eval")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="synth64",
                        help="sizes of the evaluation (flags below override them)")
    parser.add_argument("--n-prompts", type=int, help=f"prompts from test-split rows (default {d.n_prompts})")
    parser.add_argument("--n-per-prompt", type=int, help=f"images per prompt (default {d.n_per_prompt})")
    parser.add_argument("--n-heldout", type=int, help=f"prompts with unseen combinations (default {d.n_heldout})")
    parser.add_argument("--steps", type=int, help=f"sampling steps (default {d.steps})")
    parser.add_argument("--guidance", type=float, help=f"classifier-free guidance scale (default {d.guidance})")
    parser.add_argument("--sampler", help=f"sampler (default {d.sampler})")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--batch-size", type=int, help=f"images per pipeline call (default {d.batch_size})")
    parser.add_argument("--max-real", type=int, help=f"real test images to load (default {d.max_real})")
    parser.add_argument("--sweep", action="store_true", help="also sweep steps, samplers and guidance")
    parser.add_argument("--quick", action="store_true", help="sweep without the 400-step DDPM setting")
    parser.add_argument("--sweep-images", type=int, help=f"images per sweep setting (default {d.sweep_images})")
    parser.add_argument("--fd-images", type=int, help=f"generated images for FD (default {d.fd_images})")
    parser.add_argument("--no-composed", action="store_true",
                        help="skip generating the held-out and denying prompts again as composed prompts")
    parser.add_argument("--device", help="cuda | mps | cpu (default: the best available)")
    parser.add_argument("--no-progress", action="store_true")
    add_recipe_arguments(parser)
    add_data_arguments(parser)


def recipe_bases(preset: str) -> dict:
    """The recipe sections `t2i eval` reads, as the preset has them."""
    return {"data": DataOptions(), "eval": EvalConfig(**PRESETS[preset])}


def config_from_args(args: argparse.Namespace, base: EvalConfig | None = None) -> EvalConfig:
    """`base` (default: the preset) with the flags that were given."""
    flags = {name: getattr(args, name) for name in ("n_prompts", "n_per_prompt", "n_heldout", "steps", "guidance",
                                                     "sampler", "seed", "batch_size", "max_real", "sweep_images",
                                                     "fd_images")}
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.sweep:
        flags["sweep"] = True
    if args.quick:
        flags["quick"] = True
    if args.no_composed:
        flags["composed"] = False
    return replace(base or EvalConfig(**PRESETS[args.preset]), **flags)


def run(args: argparse.Namespace) -> int:
    from t2i.checkpoint import resolve_component
    from t2i.pipeline import T2IPipeline, check_settings

    recipe = recipe_from_args(args, recipe_bases)
    recipe["data"] = data_options_from_args(args, recipe["data"])
    recipe["eval"] = cfg = config_from_args(args, recipe["eval"])
    check_settings(steps=cfg.steps, guidance=cfg.guidance, sampler=cfg.sampler)
    model = Path(args.model)
    pipe = T2IPipeline.from_pretrained(model, device=args.device)
    out = Path(args.out) if args.out else model / "eval"
    if not dataset_has_attributes(args.data, recipe["data"]):
        # Nothing for a judge to check: measure with the model's own CLIP instead.
        if args.judge:
            print(f"[eval] --judge {args.judge} not used: {args.data} has no attribute labels")
        if cfg.sweep:
            print("[eval] --sweep scores attribute faithfulness with the judge; skipped without attribute labels")
            cfg = replace(cfg, sweep=False)
        atomic_write_json(out / "recipe.json", recipe_to_dict(recipe))
        report = evaluate_captions(pipe, args.data, cfg, out, progress=not args.no_progress,
                                   data_options=recipe["data"])
        print(headline_table(report))
        print(f"report: {out / 'report.html'}")
        return 0
    judge_path = Path(args.judge) if args.judge else model
    judge, meta = load_judge(judge_path, device=pipe.device)
    judge_meta = {"path": str(resolve_component(judge_path, "judge")), "attributes": meta.get("attributes")}
    metrics_path = Path(judge_meta["path"]) / "metrics.json"
    if metrics_path.is_file():
        judge_meta.update(json.loads(metrics_path.read_text()))
    atomic_write_json(out / "recipe.json", recipe_to_dict(recipe))
    report = evaluate(pipe, judge, args.data, cfg, out, judge_meta=judge_meta, progress=not args.no_progress,
                      data_options=recipe["data"])
    print(headline_table(report))
    if report["composed"]:
        print(composed_table(report))
    if report["wording"]:
        print(wording_table(report))
    if report["sweep"]:
        print(sweep_table(report))
    print(f"report: {out / 'report.html'}")
    return 0
