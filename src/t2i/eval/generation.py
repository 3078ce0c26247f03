"""Images for evaluation: a prompt list through the pipeline in seeded batches, and real images
through the VAE and back (the floor of any model decoding through it). Shared by the
attribute evaluation (`t2i.eval.run`) and the caption-only one (`t2i.eval.caption_eval`)."""

from __future__ import annotations

import time
import zlib

import torch

from t2i.prompt_syntax import escape


def _seed(seed: int, tag: str, batch: int) -> int:
    return zlib.crc32(f"{seed}/{tag}/{batch}".encode()) & 0x7FFFFFFF


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def generate_images(pipe, prompts: list[str], k: int, steps: int, guidance: float, sampler: str,
                    seed: int, batch_size: int, tag: str, progress: bool = True,
                    composed: bool = False) -> tuple[torch.Tensor, float]:
    """`k` images per prompt (prompt-major), in batches of about `batch_size` images, each batch
    seeded from (seed, tag, batch index): deterministic for a seed and batch size. Returns
    (images (P*k, 3, H, W) in [-1, 1] on CPU, generation seconds).

    Prompts are literal text (escaped, so a caption's "AND" or "score: 5" is not composed-prompt
    syntax) unless `composed`, for prompts written in that syntax on purpose."""
    if not composed:
        prompts = [escape(p) for p in prompts]
    per_call = max(1, batch_size // k)
    chunks = [prompts[i : i + per_call] for i in range(0, len(prompts), per_call)]
    out, seconds = [], 0.0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts) * k, desc=f"generate {tag}", unit="img", dynamic_ncols=True, leave=False)
    for b, chunk in enumerate(chunks):
        _sync(getattr(pipe, "device", "cpu"))
        t0 = time.perf_counter()
        images = pipe(chunk, num_images=k, steps=steps, guidance=guidance, sampler=sampler,
                      seed=_seed(seed, tag, b), output_type="pt")
        _sync(getattr(pipe, "device", "cpu"))
        seconds += time.perf_counter() - t0
        out.append(images.detach().float().cpu())
        if bar is not None:
            bar.update(len(chunk) * k)
    if bar is not None:
        bar.close()
    return torch.cat(out), seconds


@torch.no_grad()
def vae_reconstruct(vae, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Images through the VAE (posterior mean) and back: the best any latent model can do."""
    device = next(vae.parameters()).device
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(device).float()
        out.append(vae.decode(vae.encode(x).mode()).clamp(-1, 1).float().cpu())
    return torch.cat(out)
