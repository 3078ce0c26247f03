"""`t2i eval` for datasets without attribute labels: captions and images only.

What the attribute judge cannot measure here, the project's CLIP does (definitions in
docs/eval.md, "Caption-only evaluation"):

1. prompts: `n_prompts` captions of the test split, drawn at random (seeded), `n_per_prompt`
   images each;
2. R-precision: the own prompt against 99 other test captions (chance 1%), beside real test
   images with their own captions (ceiling) and with shuffled captions (floor);
3. CLIP score, with the same real-image ceiling and floor;
4. FD on CLIP image features: one image per test caption against the real test images, beside
   real-vs-real, VAE round trips (the floor for any model decoding through this VAE) and
   phrase-shuffled captions (a model that reads the text moves away from the data);
5. diversity: CLIP-feature spread of one prompt's images, beside the spread of real images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from t2i.eval.clip_metrics import (
    FD_FEATURES,
    ClipImageFeatures,
    clip_diversity,
    clip_scores,
    phrase_shuffled,
    r_precision_scores,
)
from t2i.eval.fd import FDMeter
from t2i.eval.generation import generate_images, vae_reconstruct
from t2i.eval.report import prompt_grid, report_header, write_report
from t2i.prompt_syntax import escape


@dataclass
class CaptionData:
    images: torch.Tensor  # (N, 3, S, S) in [-1, 1]: readable test-split images
    captions: list[str]  # one per image (the dataset's caption for it)


def load_caption_data(data: str | Path, image_size: int, max_real: int, seed: int,
                      data_options=None) -> CaptionData:
    """Up to `max_real` test-split images (a seeded random subset when there are more), each
    with one of its captions. Unreadable images are skipped and counted by the dataset.
    `data_options` (DataOptions) must be the ones training read the data with, so that a
    carved-out test split holds the same images."""
    from t2i.data.celeba import FaceDataset

    test = FaceDataset(data, split="test", image_size=image_size, options=data_options)
    if len(test) < 4:
        raise ValueError(f"{data}: the test split has {len(test)} images; eval needs at least 4")
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:max_real].sort().values
    items = [test[int(i)] for i in order]
    items = [x for x in items if x is not None]
    if len(items) < 4:
        raise ValueError(f"{data}: only {len(items)} readable test images; eval needs at least 4")
    return CaptionData(torch.stack([x["image"] for x in items]), [x["caption"] for x in items])


def _generator(pipe, cfg, progress: bool):
    def generate(prompts: list[str], per_prompt: int, tag: str) -> tuple[torch.Tensor, float]:
        return generate_images(pipe, prompts, per_prompt, cfg.steps, cfg.guidance, cfg.sampler, cfg.seed,
                               cfg.batch_size, tag, progress)

    return generate


def evaluate_captions(pipe, data: str | Path, cfg, out_dir: str | Path | None = None, progress: bool = True,
                      log=print, real: CaptionData | None = None, data_options=None) -> dict:
    """The caption-only evaluation (`cfg` is the EvalConfig); writes the report to `out_dir`
    if given and returns report.json's dict. `real` replaces the test split read from `data`."""
    t_start = time.perf_counter()
    text_encoder = getattr(pipe, "text_encoder", None)
    if text_encoder is None or not hasattr(text_encoder, "image_features"):
        raise ValueError("caption-only eval measures with the model's CLIP, and this pipeline has none")
    real = real or load_caption_data(data, pipe.image_size, cfg.max_real, cfg.seed, data_options)
    K, n_real = cfg.n_per_prompt, len(real.captions)
    generate = _generator(pipe, cfg, progress)

    # 1. Prompts: test captions drawn at random; K images each (prompt-major).
    perm = torch.randperm(n_real, generator=torch.Generator().manual_seed(cfg.seed))
    prompts = [real.captions[i] for i in perm[: cfg.n_prompts].tolist()]
    log(f"[eval] no attribute labels: caption metrics with the model's CLIP; {n_real} real test images, "
        f"{len(prompts)} test captions x {K}")
    # Dataset captions are literal text: escaped, so an "AND" or "score: 5" in one is not syntax.
    pipe([escape(p) for p in prompts[:1]], num_images=1, steps=min(2, cfg.steps), guidance=cfg.guidance, sampler=cfg.sampler,
         seed=0, output_type="pt")  # untimed warm-up: one-off costs of the first forward
    images, seconds = generate(prompts, K, "suite")
    per_image_prompts = [p for p in prompts for _ in range(K)]

    # 2-3. R-precision and CLIP score; the real images' captions are the distractor pool.
    n_clip = min(cfg.clip_images, n_real)
    clip_real, clip_captions = real.images[:n_clip], real.captions[:n_clip]
    rprec = r_precision_scores(text_encoder, images, per_image_prompts, clip_real, clip_captions, cfg.seed)
    clip = clip_scores(text_encoder, images, per_image_prompts, clip_real, clip_captions, cfg.seed)

    # 4. FD on CLIP features against half of the real images; the other half's captions
    # prompt one image each, so both sets hold the same number of independent draws.
    ref, other = perm[: n_real // 2], perm[n_real // 2 :]
    meter = FDMeter(ClipImageFeatures(text_encoder), real.images[ref])
    other = other[: max(2, min(cfg.fd_images, len(other)))]
    fd_prompts = [real.captions[i] for i in other.tolist()]
    fd_images, _ = generate(fd_prompts, 1, "fd")
    mixed_images, _ = generate(phrase_shuffled(fd_prompts, cfg.seed), 1, "shuffled")
    fd = {
        "generated": meter.fd(fd_images),
        "real_vs_real": meter.fd(real.images[other]),
        "vae_reconstruction": meter.fd(vae_reconstruct(pipe.vae, real.images[other]))
        if getattr(pipe, "vae", None) is not None else None,
        "phrase_shuffled_prompts": meter.fd(mixed_images),
        "n_generated": len(other), "n_reference": len(ref), "n_real_other": len(other),
        "features": FD_FEATURES.format(dims=text_encoder.clip.config.embed_dim),
    }

    report = {
        **report_header(pipe, data, cfg),
        "mode": "captions",
        "measured_with": "the model's own CLIP (no attribute labels, so no judge)",
        "suite": {"info": {"test_prompts": len(prompts), "heldout_prompts": 0, "real_test_images": n_real},
                  "prompts": [{"text": p, "group": "test"} for p in prompts]},
        "faithfulness": None,
        "r_precision": rprec,
        "fd": fd,
        "clip_score": clip,
        # 5. Diversity in CLIP space.
        "diversity": clip_diversity(text_encoder, images, K, real.images, cfg.seed),
        "timing": {"seconds_per_image": seconds / max(1, len(images)), "images": int(len(images)),
                   "batch_size": cfg.batch_size},
        "sweep": [],
    }
    report["timing"]["total_seconds"] = round(time.perf_counter() - t_start, 1)
    if out_dir is not None:
        shown = prompts[: cfg.grid_prompts]
        grids = {"Generated images: test captions": prompt_grid(images[: len(shown) * K], shown, K)}
        paths = write_report(report, out_dir, grids)
        log(f"[eval] wrote {paths['json']} and {paths['html']}")
    return report
