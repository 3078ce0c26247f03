"""How well a CLIP reads the attributes: what `t2i train clip` writes to clip/metrics.json.

Metrics (all on validation images; see docs/clip.md):
- zero-shot attribute accuracy: for each captioned attribute that varies, score every image
  against two prompts that differ *only* in that attribute (the image's own complete caption
  with the attribute set, and with it unset -- denied explicitly where training captions
  would deny it: "..., without eyeglasses"); correct when the prompt matching the image's
  true value scores higher. Reported per attribute (accuracy and class-balanced accuracy) and
  as means.
- retrieval R@1/R@5 over unique captions, text->image and image->text, for the complete
  canonical captions and for the dataset's own (partial) captions. A hit is an item with the
  same attribute vector; for partial captions also "consistent" (the image has every
  attribute the caption asserts).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from t2i.attributes import ATTRIBUTE_INDEX
from t2i.data.caption_edits import attribute_prompt_pair
from t2i.data.captions import caption_mentions, complete_caption
from t2i.data.tensors import spread_indices
from t2i.models.clip import CLIP
from t2i.tokenizer import CaptionTokenizer


@torch.no_grad()
def _text_features(model: CLIP, tokenizer: CaptionTokenizer, prompts: list[str], device,
                   batch_size: int = 512) -> torch.Tensor:
    feats = []
    for i in range(0, len(prompts), batch_size):
        ids, mask = tokenizer.encode(prompts[i : i + batch_size])
        L = int(mask.sum(dim=1).max())
        feats.append(model.encode_text(ids[:, :L].to(device), mask[:, :L].to(device))[1].float())
    return F.normalize(torch.cat(feats), dim=-1)


@torch.no_grad()
def _image_features(model: CLIP, images: torch.Tensor, device, batch_size: int = 256) -> torch.Tensor:
    feats = [model.encode_image(images[i : i + batch_size].to(device)).float()
             for i in range(0, len(images), batch_size)]
    return F.normalize(torch.cat(feats), dim=-1)


def _recall(sim: torch.Tensor, hit: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """sim (Q, G) scores; hit (Q, G) bool: which gallery items count as correct for a query.
    R@k = fraction of queries with a correct item among their k best-scored."""
    out = {}
    for k in ks:
        top = sim.topk(min(k, sim.shape[1]), dim=1).indices  # (Q, k)
        out[f"r{k}"] = round(float(hit.gather(1, top).any(dim=1).float().mean()), 4)
    return out


@torch.no_grad()
def evaluate(model: CLIP, tokenizer: CaptionTokenizer, dataset, varied: tuple[str, ...],
             eval_images: int = 1000, zeroshot_images: int = 500, device="cpu") -> dict:
    """Retrieval and zero-shot attribute metrics on `dataset` (see the module docstring)."""
    model.eval()
    idx = spread_indices(len(dataset), max(eval_images, zeroshot_images))
    items = [dataset[i] for i in idx]
    items = [it for it in items if it is not None]
    if not items:
        return {"val_images": 0}
    images = torch.stack([it["image"] for it in items])  # (N, 3, S, S)
    attrs = torch.stack([it["attributes"] for it in items]) > 0  # (N, 40) bool
    captions = [it["caption"] for it in items]
    img_feat = _image_features(model, images, device)
    cols = [ATTRIBUTE_INDEX[a] for a in varied]
    # The attribute vector that captions can express; without labels, each image's own index
    # (a hit is then the image itself or one with an identical caption).
    key = attrs[:, cols] if cols else torch.arange(len(items))[:, None]
    metrics: dict = {"val_images": len(items), "attributes": list(varied)}

    # -- retrieval (first eval_images images)
    n = min(eval_images, len(items))
    same = (key[:n, None, :] == key[None, :n, :]).all(-1)  # (n, n) same attribute vector
    # Captions made from attributes ("complete") and attribute-consistency need attribute labels.
    for kind in ("complete", "dataset") if cols else ("dataset",):
        if kind == "complete":
            caps = [complete_caption(a.numpy().astype(np.float32), attributes=varied) for a in attrs[:n]]
        else:
            caps = captions[:n]
        unique = sorted(set(caps))
        col = {c: j for j, c in enumerate(unique)}
        owner = torch.zeros(len(unique), n, dtype=torch.bool)  # caption j was drawn for image i
        for i, c in enumerate(caps):
            owner[col[c], i] = True
        txt_feat = _text_features(model, tokenizer, unique, device)
        sim = txt_feat @ img_feat[:n].t()  # (U, n)
        # A hit: an image whose attribute vector equals that of an image the caption belongs to.
        t2i_hit = (owner.float() @ same.float()) > 0  # (U, n)
        res = {"unique_captions": len(unique)}
        res.update({f"t2i_{k}": v for k, v in _recall(sim, t2i_hit).items()})
        res.update({f"i2t_{k}": v for k, v in _recall(sim.t(), t2i_hit.t()).items()})
        if kind == "dataset" and cols:
            # Consistent: the image has every attribute value the caption asserts.
            consistent = torch.ones(len(unique), n, dtype=torch.bool)
            for j, c in enumerate(unique):
                for a, v in caption_mentions(c).items():
                    consistent[j] &= attrs[:n, ATTRIBUTE_INDEX[a]] == v
            res.update({f"t2i_consistent_{k}": v for k, v in _recall(sim, consistent).items()})
            res.update({f"i2t_consistent_{k}": v for k, v in _recall(sim.t(), consistent.t()).items()})
        metrics[f"retrieval_{kind}"] = res

    # -- zero-shot attribute accuracy (first zeroshot_images images)
    m = min(zeroshot_images, len(items))
    per_attr = {}
    for a in varied:
        j = ATTRIBUTE_INDEX[a]
        truth = attrs[:m, j]
        if truth.all() or not truth.any():
            continue  # does not vary among these images
        prompts = []
        for v in attrs[:m]:
            prompts += list(attribute_prompt_pair(v.numpy().astype(np.float32), a, varied))
        feats = _text_features(model, tokenizer, prompts, device).view(m, 2, -1)  # (m, [with, without], E)
        scores = (feats * img_feat[:m, None, :]).sum(-1)  # (m, 2)
        pred = scores[:, 0] > scores[:, 1]
        correct = pred == truth
        per_attr[a] = {
            "accuracy": round(float(correct.float().mean()), 4),
            "balanced_accuracy": round(0.5 * (float(correct[truth].float().mean())
                                              + float(correct[~truth].float().mean())), 4),
            "positives": int(truth.sum()), "images": m,
        }
    metrics["zeroshot"] = per_attr
    if per_attr:
        metrics["zeroshot_mean_accuracy"] = round(float(np.mean([r["accuracy"] for r in per_attr.values()])), 4)
        metrics["zeroshot_mean_balanced_accuracy"] = round(
            float(np.mean([r["balanced_accuracy"] for r in per_attr.values()])), 4)
        metrics["zeroshot_min_accuracy"] = min(r["accuracy"] for r in per_attr.values())
    return metrics
