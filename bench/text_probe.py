"""What the UNet can read from the text encoder: a linear probe per attribute.

For complete captions of the training split's attribute rows, each candidate cross-attention
context (CLIP's input token embeddings, the output of each transformer block, the final
layer-normed states, the pooled embedding) is pooled over the real tokens (mean and max,
concatenated) and a logistic regression predicts each attribute from it. Balanced accuracy on
held-out captions says how much of a word survives in that context: an attribute the probe
cannot find there is one the UNet cannot follow either. Not a test.

    python bench/text_probe.py --model runs/demo --data data/synthfaces

Writes bench/results/text_probe.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from t2i.attributes import ATTRIBUTE_INDEX
from t2i.data.captions import complete_caption, varied_attributes
from t2i.data.celeba import FaceDataset
from t2i.text_encoder import TextEncoder


@torch.no_grad()
def contexts(encoder: TextEncoder, captions: list[str]) -> dict[str, torch.Tensor]:
    """Each candidate context pooled over real tokens: name -> (N, features)."""
    text = encoder.clip.text
    ids, mask = encoder.tokenize(captions)
    m = mask.bool()
    states = {"token embeddings": text.token_embedding(ids)}
    x = states["token embeddings"] + text.positional_embedding[: ids.shape[1]]
    for i, block in enumerate(text.blocks):
        x = block(x, self_mask=m)
        states[f"block {i + 1} of {len(text.blocks)}"] = x
    states["final states (UNet context)"] = text.ln_final(x)
    w = m[..., None].float()  # (N, L, 1)
    pooled = {name: torch.cat([(h * w).sum(1) / w.sum(1), h.masked_fill(~m[..., None], -1e4).amax(1)], 1)
              for name, h in states.items()}  # (N, 2W)
    pooled["pooled embedding"] = encoder.clip.encode_text(ids, mask)[1]
    return pooled


def probe(x: torch.Tensor, y: torch.Tensor, n_train: int, steps: int = 200) -> float | None:
    """Balanced accuracy of an L2-regularised logistic regression trained on the first n_train
    rows (None when the held-out rows hold one class only)."""
    x = (x - x[:n_train].mean(0)) / (x[:n_train].std(0) + 1e-6)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x[:n_train] @ w + b, y[:n_train]) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (x[n_train:] @ w + b) > 0
    truth = y[n_train:] > 0.5
    if truth.all() or (~truth).all():
        return None
    return round(0.5 * (pred[truth].float().mean() + (~pred[~truth]).float().mean()).item(), 3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo", help="model dir with clip/ and tokenizer.json")
    parser.add_argument("--data", default="data/synthfaces")
    parser.add_argument("--captions", type=int, default=3000, help="captions probed (2/3 train, 1/3 test)")
    parser.add_argument("--out", default="bench/results/text_probe.json")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    encoder = TextEncoder.from_pretrained(args.model)
    rows = FaceDataset(args.data, split="train", preload=False).attributes[: args.captions]  # (N, 40) +-1
    scored = varied_attributes(rows)
    captions = [complete_caption(r, None, attributes=scored) for r in rows]  # the eval's wording
    feats = contexts(encoder, captions)
    n_train = 2 * len(rows) // 3
    table = {name: {a: probe(x.float(), torch.tensor(rows[:, ATTRIBUTE_INDEX[a]] > 0).float(), n_train)
                    for a in scored} for name, x in feats.items()}
    result = {"benchmark": "text_probe", "date": time.strftime("%Y-%m-%d"), "model": args.model,
              "captions": len(rows), "probe": "logistic regression on mean+max-pooled tokens, balanced accuracy",
              "mean": {name: round(float(np.mean([v for v in t.values() if v is not None])), 3)
                       for name, t in table.items()},
              "per_attribute": table, "seconds": round(time.perf_counter() - t0, 1)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    names = list(table)
    print(f"{'attribute':22s}" + "".join(f"{n[:14]:>16s}" for n in names))
    for a in scored:
        print(f"{a:22s}" + "".join(f"{table[n][a]:16.3f}" if table[n][a] is not None else f"{'-':>16s}"
                                   for n in names))
    print(f"{'mean':22s}" + "".join(f"{result['mean'][n]:16.3f}" for n in names))
    print(f"-> {out}")
    return result


if __name__ == "__main__":
    main()
