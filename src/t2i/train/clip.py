"""Stage 2: train the tokenizer and CLIP (`t2i train clip`).

1. If MODEL_DIR/tokenizer.json is missing, train the byte-level BPE tokenizer on the training
   captions (deterministic) and save it; their words and counts go to MODEL_DIR/vocabulary.json.
2. Train CLIP on (image, caption) pairs with the shared loop (a CLIP whose image tower reads
   VAE latents, `image_input="latents"`, trains on the latent cache MODEL_DIR/latents from
   `t2i encode` and scores pixels through MODEL_DIR/vae). Loss: the symmetric contrastive
   loss with multi-positive soft targets (`--loss multipos`, default): pairs whose captions or
   attribute vectors are identical are positives of each other, so duplicates are not pushed
   apart; `--loss infonce` is CLIP's plain InfoNCE. Optional extras (on in the presets):
   hard-negative captions (one attribute flipped to a false claim) and an auxiliary
   attribute loss on the image embedding. With several processes, features are gathered
   (with gradients) so the loss sees the global batch.
3. Evaluate on the validation split (`t2i.train.clip_metrics.evaluate`: zero-shot attribute
   accuracy, retrieval R@1/R@5; see docs/clip.md) and write MODEL_DIR/clip/{config.json,
   model.safetensors, metrics.json}.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from t2i.attributes import ATTRIBUTE_INDEX, NUM_ATTRIBUTES
from t2i.checkpoint import atomic_write_json, save_component
from t2i.config import replace
from t2i.data.caption_edits import hard_negative_caption
from t2i.data.captions import varied_attributes
from t2i.data.celeba import FaceDataset
from t2i.data.latents import LatentCache
from t2i.models.clip import CLIP, CLIPConfig, contrastive_loss, positive_mask
from t2i.tokenizer import DEFAULT_CONTEXT_LENGTH, CaptionTokenizer
from t2i.train.clip_metrics import evaluate
from t2i.train.encode import check_cache_matches, load_vae
from t2i.train.loop import (
    Context,
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
from t2i.train.tokenizer import ensure_tokenizer
from t2i.train.unet import LatentDataset

LOSSES = ("multipos", "infonce")


@dataclass
class ClipPreset:
    model: CLIPConfig
    loop: LoopConfig
    image_size: int = 64  # dataset resolution (the pipeline's); the tower resizes to model.image_size
    flip: bool = True  # random horizontal flips (every captioned attribute is flip-invariant)
    loss: str = "multipos"
    # Hard-negative captions per image per step (NegCLIP, Yuksekgonul et al. 2023): the
    # image's caption with one attribute flipped to a false claim ("with glasses" for a face
    # without them, "without glasses" for one with). They only enter the image->text softmax
    # and force the towers to notice every single attribute, which in-batch negatives (that
    # differ in many attributes at once) rarely do.
    hard_negatives: int = 0
    text_buckets: int = 4  # run the text tower on length-sorted groups (exact; less padding)
    # Weight of an auxiliary attribute loss: a linear head on the joint image embedding
    # predicts the captioned attributes (class-balanced BCE). The labels come with the data
    # (captions are made from them); without it, small attributes that captions rarely
    # contrast (earrings, necklace, wavy hair) stayed near chance. 0 = pure contrastive.
    attribute_loss: float = 0.0
    vocab_size: int = 1024  # upper bound; caption text usually needs fewer merges
    context_length: int = DEFAULT_CONTEXT_LENGTH
    tokenizer_images: int = 20_000  # images whose captions train the tokenizer
    eval_images: int = 1000  # validation images for retrieval
    zeroshot_images: int = 500  # validation images for zero-shot attribute accuracy


PRESETS: dict[str, ClipPreset] = {
    # Seconds on CPU: tests and smoke runs (every loss term switched on).
    "tiny": ClipPreset(
        model=CLIPConfig(text_width=32, text_layers=1, text_heads=2, image_size=32, stem_stride=2,
                         image_channels=(8, 16), embed_dim=32),
        loop=LoopConfig(steps=20, batch_size=8, lr=1e-3, warmup_steps=2, log_every=5, ckpt_every=10),
        image_size=32, vocab_size=512, context_length=48, hard_negatives=1, attribute_loss=1.0,
        eval_images=32, zeroshot_images=16,
    ),
    # The one-command demo's CLIP on SynthFaces 64px: 7 min on 2 idle cores, mean zero-shot
    # attribute accuracy 0.94 (docs/clip.md). The tower reads full-resolution pixels (stem
    # stride 1) with a fifth level to keep its receptive field: with a stride-2 stem, open
    # mouth and smile stayed near chance (0.63 / 0.62). 1500 steps were not enough to learn
    # them reliably (0.58-0.97 across runs); 2500 steps got 0.89 / 0.88.
    "synth64": ClipPreset(
        model=CLIPConfig(text_width=128, text_layers=2, text_heads=4, image_size=64, stem_stride=1,
                         image_channels=(16, 32, 64, 128, 128), embed_dim=128),
        loop=LoopConfig(steps=2500, batch_size=64, lr=2e-3, warmup_steps=50, log_every=25,
                        ckpt_every=500),
        image_size=64, hard_negatives=1, attribute_loss=1.0, eval_images=1000, zeroshot_images=500,
    ),
    # CelebA 128px: a wider, deeper model for real faces, for a GPU (not yet measured on CelebA).
    "celeba128": ClipPreset(
        model=CLIPConfig(text_width=256, text_layers=4, text_heads=4, image_size=128, stem_stride=2,
                         image_channels=(32, 64, 128, 256, 256), image_blocks=2, embed_dim=256),
        loop=LoopConfig(steps=20_000, batch_size=256, lr=1e-3, warmup_steps=500, log_every=100,
                        ckpt_every=2000),
        image_size=128, hard_negatives=1, attribute_loss=1.0, eval_images=2000, zeroshot_images=2000,
    ),
}


class CachedLatentImages(LatentDataset):
    """The UNet's latent dataset as a latent-reading CLIP's training images: `ds[(i, seed)]` ->
    {"image": the normalised posterior mean (C, h, w), "caption", "attributes"}, the caption and
    flip variant picked by the sample seed. The mean, not a sample: the posterior's std is
    ~0.005, noise CLIP has no use for."""

    def __init__(self, cache: LatentCache):
        super().__init__(cache)
        self.attributes = torch.from_numpy(np.asarray(cache.attributes, dtype=np.float32))  # (N, 40)

    def __getitem__(self, key):
        item = super().__getitem__(key)
        i = key[0] if isinstance(key, tuple) else key
        return {"image": self.cache.normalize(item["mean"][None])[0], "caption": item["caption"],
                "attributes": self.attributes[i]}


def caption_key(caption: str) -> int:
    """A stable 63-bit hash of a caption (identical across processes, unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(caption.encode("utf-8"), digest_size=8).digest(), "little") >> 1


class ClipStage(Stage):
    name = "clip"

    def __init__(self, preset: ClipPreset, tokenizer: CaptionTokenizer, val_set=None, varied=(),
                 attribute_rates=None, vae=None):
        if preset.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {preset.loss!r}")
        self.preset = preset
        self.tokenizer = tokenizer
        self.val_set = val_set
        self.vae = vae  # a latent-reading CLIP scores the (pixel) validation images through it
        self.varied = tuple(varied)
        # Without attribute labels (captions only) there is nothing to flip into a false claim
        # and no attribute vector to match: hard negatives are off, and the positives of an
        # image are its own caption and identical ones (all-zero labels would make every pair
        # in the batch "the same attributes", a positive, and nothing left to contrast).
        self.hard_negatives = preset.hard_negatives if self.varied else 0
        # Auxiliary attribute loss: varied attributes only, positives weighted by neg/pos rate.
        cols = [ATTRIBUTE_INDEX[a] for a in self.varied]
        self.attr_cols = torch.tensor(cols, dtype=torch.long)
        rates = torch.full((NUM_ATTRIBUTES,), 0.5) if attribute_rates is None else torch.as_tensor(
            attribute_rates, dtype=torch.float32)
        self.attr_pos_weight = ((1 - rates[cols]) / rates[cols].clamp(min=1e-3)).clamp(max=30.0)
        # Sizes the data decides: the tokenizer's, and a latent tower's input channels (the VAE's).
        latent_channels = vae.config.latent_channels if vae is not None else preset.model.latent_channels
        self.config = dataclasses.replace(preset.model, vocab_size=tokenizer.vocab_size,
                                          context_length=tokenizer.context_length, latent_channels=latent_channels)

    def build(self):
        modules = {"clip": CLIP(self.config)}
        if self.preset.attribute_loss > 0:
            modules["attr_head"] = nn.Linear(self.config.embed_dim, NUM_ATTRIBUTES)
        return modules

    def collate(self, items: list) -> dict:
        items = [x for x in items if x is not None]
        captions = [x["caption"] for x in items]
        ids, mask = self.tokenizer.encode(captions)
        L = int(mask.sum(dim=1).max())  # trailing padding changes nothing (masked): drop it
        return {
            "image": torch.stack([x["image"] for x in items]),
            "ids": ids[:, :L],
            "mask": mask[:, :L],
            "caption_key": torch.tensor([caption_key(c) for c in captions], dtype=torch.long),
            "owner": torch.arange(len(items)),  # text j describes image owner[j]
            "attributes": torch.stack([x["attributes"] for x in items]),
            "captions": captions,
        }

    def training_step(self, batch, ctx: Context) -> StepOutput:
        ids, mask, keys, owner = batch["ids"], batch["mask"], batch["caption_key"], batch["owner"]
        attrs = batch["attributes"]
        text_attrs = attrs[owner]  # (N, 40) what each text describes
        if self.hard_negatives:
            negs, neg_attrs = self._hard_negatives(batch, ctx)
            n_ids, n_mask = self.tokenizer.encode(negs)
            L = max(ids.shape[1], int(n_mask.sum(dim=1).max()))
            ids = torch.cat([F.pad(ids, (0, L - ids.shape[1]), value=self.tokenizer.pad_id),
                             n_ids[:, :L].to(ids.device)])
            mask = torch.cat([F.pad(mask, (0, L - mask.shape[1])), n_mask[:, :L].to(mask.device)])
            keys = torch.cat([keys, torch.tensor([caption_key(c) for c in negs], device=keys.device)])
            owner = torch.cat([owner, torch.full((len(negs),), -1, device=owner.device)])
            text_attrs = torch.cat([text_attrs, neg_attrs.to(attrs.device)])
        # The image each text was written from (its owner; for a hard negative, its source).
        source = torch.arange(ids.shape[0], device=owner.device) % attrs.shape[0]
        img, txt, scale = ctx.models["clip"](batch["image"], ids, mask, self.preset.text_buckets)
        img, txt, scale = img.float(), txt.float(), scale.float()  # the loss in fp32
        if ctx.world_size > 1:
            img, txt, keys, owner, source, attrs, text_attrs = _gather(
                img, txt, keys, owner, source, attrs, text_attrs)
        own = owner[None, :] == torch.arange(img.shape[0], device=owner.device)[:, None]
        if self.preset.loss == "multipos":
            pos = (positive_mask(keys, attrs, owner, text_attributes=text_attrs) if self.varied
                   else positive_mask(keys, owner=owner))
        else:  # InfoNCE: only an image's own captions are positives (the diagonal when k = 1)
            pos = own
        loss = contrastive_loss(img, txt, scale, pos)
        logs = {}
        if self.preset.attribute_loss > 0 and len(self.attr_cols):
            cols = self.attr_cols.to(attrs.device)
            logits = ctx.models["attr_head"](img)[:, cols].float()  # (B, A)
            aux = F.binary_cross_entropy_with_logits(
                logits, attrs[:, cols].float(), pos_weight=self.attr_pos_weight.to(attrs.device))
            loss = loss + self.preset.attribute_loss * aux
            logs["attribute_bce"] = aux.detach()
        with torch.no_grad():
            logits = img @ txt.t()  # (B_img, B_txt)
            # In-batch retrieval: the top text of each image is one of its positives.
            hit = pos.gather(1, logits.argmax(dim=1, keepdim=True)).float().mean()
            logs.update(logit_scale=scale.detach(), batch_i2t_acc=hit,
                        positives_per_row=pos.float().sum(1).mean(), texts_per_row=float(txt.shape[0]))
            if self.hard_negatives:
                # How often an image prefers its own caption to a hard negative made from it.
                first = own.float().argmax(dim=1)  # (B,) index of each image's caption
                negative = (owner < 0).nonzero()[:, 0]  # (N_neg,) text indices
                src = source[negative]
                own_score = logits[src, first[src]]
                logs["hard_negative_acc"] = (own_score > logits[src, negative]).float().mean()
        return StepOutput(loss, logs)

    def _hard_negatives(self, batch, ctx: Context) -> tuple[list[str], torch.Tensor]:
        """`hard_negatives` false captions per image, built from its caption; the k-th round
        holds one per image, in image order. Randomness from ctx (exact on resume)."""
        attrs = batch["attributes"].cpu()
        B = attrs.shape[0]
        captions = batch["captions"]  # caption b belongs to image b
        texts, flipped = [], []
        for _ in range(self.hard_negatives):
            seeds = ctx.randint(0, 2**31 - 1, B).tolist()
            for b in range(B):
                text, v = hard_negative_caption(attrs[b].numpy(), captions[b], self.varied,
                                                random.Random(seeds[b]))
                texts.append(text)
                flipped.append(torch.from_numpy(v))
        return texts, torch.stack(flipped)

    def finish(self, ctx: Context) -> dict:
        model = ctx.ema("clip").eval()
        if self.vae is not None:
            model.attach_vae(self.vae.to(ctx.device))
        t0 = time.perf_counter()
        metrics: dict = {}
        if self.val_set is not None and len(self.val_set):
            metrics = evaluate(model, self.tokenizer, self.val_set, self.varied,
                               self.preset.eval_images, self.preset.zeroshot_images, ctx.device)
        metrics.update(loss_type=self.preset.loss, params=sum(p.numel() for p in model.parameters()),
                       params_text=sum(p.numel() for p in model.text.parameters()),
                       params_image=sum(p.numel() for p in model.image.parameters()),
                       logit_scale=round(float(model.scale().detach()), 3),
                       eval_seconds=round(time.perf_counter() - t0, 1))
        out = ctx.out_dir / "clip"
        save_component(out, model, model.config, "clip", extra={"training": _preset_dict(self.preset)})
        atomic_write_json(out / "metrics.json", metrics)
        return metrics


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 with a gradient: backward sums every rank's gradient for the
    gathered tensor and returns this rank's slice (as open_clip's gather_with_grad)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(ctx.world)[ctx.rank]


def _gather(img, txt, keys, owner, source, attrs, text_attrs):
    """All-gather the batch from every process. Features keep their gradients: each rank then
    computes the loss of the global batch, and since DDP averages the ranks' gradients, the
    update is that of one process holding the whole batch."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = torch.tensor([img.shape[0], txt.shape[0]], device=img.device)
    all_sizes = [torch.empty_like(sizes) for _ in range(world)]
    dist.all_gather(all_sizes, sizes)
    if any(not torch.equal(s, sizes) for s in all_sizes):
        raise RuntimeError(f"contrastive gather needs equal batches on every rank, got "
                           f"{[s.tolist() for s in all_sizes]} (images, texts)")
    # Owners and sources index into the global image batch (-1, no owner, stays -1).
    owner = torch.where(owner >= 0, owner + rank * img.shape[0], owner)
    source = source + rank * img.shape[0]
    img, txt = _AllGather.apply(img), _AllGather.apply(txt)
    out = []
    for t in (keys, owner, source, attrs, text_attrs):
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        out.append(torch.cat(parts))
    return (img, txt, *out)


# ---------------------------------------------------------------------------------------------
# CLI


def _preset_dict(p: ClipPreset) -> dict:
    d = dataclasses.asdict(p)
    d.pop("model")  # already the component's config
    return d


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory (CelebA layout or SynthFaces)")
    parser.add_argument("--out", required=True, help="model directory: OUT/tokenizer.json and OUT/clip/")
    parser.add_argument("--preset", default="synth64", choices=sorted(PRESETS))
    parser.add_argument("--loss", choices=LOSSES, help="multipos (default) or plain CLIP infonce")
    parser.add_argument("--hard-negatives", type=int, help="hard-negative captions per image (default: preset)")
    parser.add_argument("--attribute-loss", type=float, help="weight of the auxiliary attribute loss (0 = off)")
    parser.add_argument("--image-size", type=int, help="dataset image size (pixels)")
    parser.add_argument("--eval-images", type=int, help="validation images for retrieval")
    parser.add_argument("--zeroshot-images", type=int, help="validation images for zero-shot accuracy")
    parser.add_argument("--no-preload", action="store_true", help="read images from disk each step")
    add_loop_arguments(parser)
    add_stage_recipe_arguments(parser)


def preset_from_args(args: argparse.Namespace, base: ClipPreset | None = None) -> ClipPreset:
    """`base` (default: the preset) with the stage's flags that were given."""
    p = base or PRESETS[args.preset]
    loop = loop_config_from_args(p.loop, args)
    return replace(p, loop=loop, loss=args.loss, hard_negatives=args.hard_negatives, attribute_loss=args.attribute_loss,
                   image_size=args.image_size,
                   eval_images=args.eval_images, zeroshot_images=args.zeroshot_images)


def train_clip(data: str | Path, out: str | Path, preset: ClipPreset, preload: bool = True,
               data_options=None) -> dict:
    """Train the tokenizer (if missing) and CLIP on `data` into `out`; returns the metrics."""
    data, out = Path(data), Path(out)
    if preset.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {preset.loss!r}")
    latents = preset.model.image_input == "latents"
    train_set = FaceDataset(data, split="train", image_size=preset.image_size, flip=preset.flip,
                            preload=preload and not latents, options=data_options)
    if len(train_set) == 0:
        raise ValueError(f"{data}: the train split is empty")
    vae, images = _latent_training_set(out, preset, train_set) if latents else (None, train_set)
    try:
        val_set = FaceDataset(data, split="val", image_size=preset.image_size, preload=preload, options=data_options)
    except ValueError as e:
        print(f"[clip] no validation split ({e}); metrics use training images")
        val_set = None
    if val_set is None or len(val_set) == 0:
        val_set = FaceDataset(data, split="train", image_size=preset.image_size, preload=preload,
                              options=data_options)
    tokenizer = ensure_tokenizer(out, train_set, preset.vocab_size, preset.context_length, preset.tokenizer_images)
    varied = varied_attributes(np.where(train_set.attributes > 0, 1, -1)) if train_set.has_attributes else ()
    stage = ClipStage(preset, tokenizer, val_set, varied, attribute_rates=train_set.attributes.mean(axis=0), vae=vae)
    metrics = train(stage, images, preset.loop, out)
    if metrics:
        keys = ("zeroshot_mean_accuracy", "zeroshot_mean_balanced_accuracy", "train_seconds")
        print(f"[clip] {json.dumps({k: metrics[k] for k in keys if k in metrics})} -> {out / 'clip'}")
        atomic_write_json(out / "clip" / "metrics.json", metrics)  # with the loop's timing fields
    return metrics


def _latent_training_set(out: Path, preset: ClipPreset, train_set: FaceDataset):
    """(VAE, CachedLatentImages) for a latent-reading CLIP: OUT/vae and the cache `t2i encode`
    wrote from it, checked to match the tower and the training split."""
    vae_dir, cache_dir = out / "vae", out / "latents"
    if not (vae_dir / "model.safetensors").is_file() or not (cache_dir / "index.json").is_file():
        raise FileNotFoundError(
            f"this CLIP reads VAE latents: it needs {vae_dir} and the latent cache {cache_dir}; run "
            f"`t2i train vae --out {out}` and `t2i encode --vae {out} --out {cache_dir} --flip` first")
    vae = load_vae(vae_dir)
    cache = LatentCache.open(cache_dir, expect_vae_hash=vae.fingerprint())
    size = preset.model.image_size
    if tuple(cache.latent_shape[1:]) != (size, size):
        raise ValueError(f"{cache_dir} holds latents of shape {tuple(cache.latent_shape)}, but the image "
                         f"tower reads {size}x{size} (clip.model.image_size)")
    check_cache_matches(cache, train_set)
    return vae, CachedLatentImages(cache)


def run(args: argparse.Namespace) -> int:
    recipe = stage_recipe(args, "clip", PRESETS)
    recipe["clip"] = preset = preset_from_args(args, recipe["clip"])
    record_recipe(args.out, "clip", recipe)
    train_clip(args.data, args.out, preset, preload=not args.no_preload, data_options=recipe["data"])
    return 0


__all__ = ["PRESETS", "ClipPreset", "ClipStage", "train_clip", "caption_key"]
