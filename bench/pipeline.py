"""End-to-end time per image (text encode + sampling + VAE decode) for t2i's default settings
(20 guided DPM-Solver++ steps) versus the baseline's: the reference project (Text-To-Image-From-
Scratch: diffusers UNet2DConditionModel, pretrained DistilBERT) samples with 400 DDPM steps and
no guidance. Both settings run on t2i's model in the same process.

    python bench/pipeline.py --model runs/demo [--device cuda] [--precision bf16] [--compile]
    python bench/pipeline.py --random-init celeba128 --device cuda --compare-compile --settings default

`--random-init PRESET` times a randomly initialised model of a training preset's shapes (tiny,
synth64 = the demo's, celeba128) when no trained model is at hand: the time per image depends
on the shapes, not on the weights; the report says so. `--compare-compile` times the eager
pipeline and then the compiled one (on CUDA: torch.compile's "reduce-overhead" mode, which
replays each sampling step as a CUDA graph) in the same process.

Writes bench/results/pipeline_<device>.json and prints a table. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from t2i.eval.report import eval_headline
from t2i.pipeline import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, T2IPipeline

PROMPT = "a smiling young woman with blond hair wearing eyeglasses"
SETTINGS = {
    "default": dict(steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE, sampler=DEFAULT_SAMPLER),
    "baseline": dict(steps=400, guidance=1.0, sampler="ddpm"),  # 400 DDPM steps, no CFG
}
SETTING_NAMES = {"default": "t2i default", "baseline": "baseline (400 DDPM, no guidance)"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_pipeline(preset: str) -> T2IPipeline:
    """A randomly initialised pipeline with the shapes `t2i train all --preset PRESET` trains:
    the VAE, CLIP and UNet configs of that preset, a tokenizer learned from a few captions."""
    from t2i.config import replace
    from t2i.diffusion.schedule import NoiseSchedule
    from t2i.models.clip import CLIP
    from t2i.models.unet import UNet
    from t2i.models.vae import VAE
    from t2i.text_encoder import TextEncoder
    from t2i.tokenizer import CaptionTokenizer
    from t2i.train import clip as clip_stage
    from t2i.train import unet as unet_stage
    from t2i.train import vae as vae_stage

    if preset not in unet_stage.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(unet_stage.PRESETS)}")
    torch.manual_seed(0)
    clip_preset, unet_cfg = clip_stage.PRESETS[preset], unet_stage.PRESETS[preset]
    vae_preset = vae_stage.PRESETS[preset]
    words = ["smiling", "young", "woman", "man", "blond", "black", "brown", "hair", "wearing", "eyeglasses",
             "a", "with", "hat", "bald", "mustache", "lipstick", "earrings", "necklace"]
    captions = [" ".join(words[i:] + words[:i]) for i in range(len(words))] + [PROMPT]
    tokenizer = CaptionTokenizer.train(captions * 2, vocab_size=clip_preset.vocab_size,
                                       context_length=clip_preset.context_length)
    clip_cfg = replace(clip_preset.model, vocab_size=tokenizer.vocab_size,
                                  context_length=tokenizer.context_length)
    text_encoder = TextEncoder(tokenizer, CLIP(clip_cfg), token_embeddings=unet_cfg.unet.text_token_embeddings)
    vae = VAE(vae_preset.model)
    unet = UNet(replace(
        unet_cfg.unet, in_channels=vae_preset.model.latent_channels, out_channels=vae_preset.model.latent_channels,
        context_dim=text_encoder.hidden_dim, pooled_dim=text_encoder.embed_dim if unet_cfg.unet.pooled_dim else 0))
    schedule = NoiseSchedule(unet_cfg.diffusion.schedule, unet_cfg.diffusion.T)
    return T2IPipeline(vae, text_encoder, unet, schedule, unet_cfg.diffusion.prediction, vae_preset.image_size,
                       model_id=f"random-{preset}")


def time_call(pipe: T2IPipeline, batch: int, repeats: int, **settings) -> dict:
    pipe([PROMPT], num_images=batch, seed=0, output_type="pt", **settings)  # warm-up (and compile)
    times, cpu_times = [], []
    for r in range(repeats):
        sync(pipe.device)
        t0, c0 = time.perf_counter(), time.process_time()
        pipe([PROMPT], num_images=batch, seed=r, output_type="pt", **settings)
        sync(pipe.device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    median = statistics.median(times)
    # Process CPU time is the steadier measure on a shared machine; on an idle machine with
    # all threads busy, wall time is about CPU time / threads.
    cpu = statistics.median(cpu_times)
    return {"batch": batch, "repeats": repeats, "seconds_per_call": round(median, 5),
            "seconds_per_image": round(median / batch, 6),
            "cpu_seconds_per_image": round(cpu / batch, 5), **settings}


def time_settings(pipe: T2IPipeline, args, mode: str) -> list[dict]:
    rows = []
    for batch in args.batches:
        for name in args.settings:
            repeats = args.repeats if name == "default" else args.baseline_repeats
            rows.append({"setting": SETTING_NAMES[name], "mode": mode,
                         **time_call(pipe, batch, repeats, **SETTINGS[name])})
            if pipe.device.type == "cuda":
                rows[-1]["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default="runs/demo", help="a trained model directory")
    source.add_argument("--random-init", metavar="PRESET",
                        help="a randomly initialised model of this preset's shapes (tiny, synth64, celeba128)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (CUDA graphs on GPU)")
    parser.add_argument("--compare-compile", action="store_true",
                        help="time eager, then compiled (CUDA graphs on GPU), in the same run")
    parser.add_argument("--settings", nargs="+", default=["default", "baseline"], choices=sorted(SETTINGS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-repeats", "--seed-repeats", dest="baseline_repeats", type=int, default=2,
                        help="repeats for the slow 400-step baseline setting")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    if args.random_init:
        pipe = random_pipeline(args.random_init).to(args.device or _default_device(), args.precision)
        model = f"randomly initialised {args.random_init}-shaped model (no trained weights: times only)"
    else:
        pipe = T2IPipeline.from_pretrained(args.model, device=args.device, precision=args.precision)
        model = str(args.model)
    if pipe.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = []
    if args.compare_compile:
        rows += time_settings(pipe, args, "eager")
    if args.compile or args.compare_compile:
        pipe.compile()
    rows += time_settings(pipe, args, "compiled" if args.compile or args.compare_compile else "eager")
    for row in rows:  # speed-ups against the baseline setting and against eager, same batch
        same = [r for r in rows if r["batch"] == row["batch"]]
        base = next((r for r in same if r["setting"] == SETTING_NAMES["baseline"] and r["mode"] == row["mode"]), None)
        if base is not None and base is not row:
            row["speedup_vs_baseline"] = round(base["seconds_per_image"] / row["seconds_per_image"], 2)
        eager = next((r for r in same if r["setting"] == row["setting"] and r["mode"] == "eager"), None)
        if row["mode"] == "compiled" and eager is not None:
            row["speedup_vs_eager"] = round(eager["seconds_per_image"] / row["seconds_per_image"], 2)

    report_path = None if args.random_init else Path(args.model) / "eval" / "report.json"
    faithfulness = eval_headline(json.loads(report_path.read_text())) if report_path and report_path.is_file() else None
    result = {
        "benchmark": "pipeline",
        "date": time.strftime("%Y-%m-%d"),
        "device": str(pipe.device),
        "device_name": torch.cuda.get_device_name() if pipe.device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "precision": pipe.precision,
        "compiled": bool(args.compile or args.compare_compile),
        "model": model,
        "random_init": bool(args.random_init),
        "image_size": pipe.image_size,
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
        "faithfulness_at_default_settings": faithfulness,
        "rows": rows,
    }
    out = Path(args.out or f"bench/results/pipeline_{pipe.device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"model: {model}, {pipe.image_size}px, {result['unet_parameters'] / 1e6:.1f}M UNet parameters, "
          f"{pipe.precision} on {result['device_name']}")
    print(f"{'setting':34s} {'mode':>8s} {'batch':>5s} {'s/call':>9s} {'s/image':>9s} {'cpu-s/image':>11s} "
          f"{'vs base':>7s} {'vs eager':>8s}")
    for r in rows:
        print(f"{r['setting']:34s} {r['mode']:>8s} {r['batch']:5d} {r['seconds_per_call']:9.3f} "
              f"{r['seconds_per_image']:9.4f} {r['cpu_seconds_per_image']:11.4f} "
              f"{r.get('speedup_vs_baseline', ''):>7} {r.get('speedup_vs_eager', ''):>8}")
    print(f"-> {out}")
    return 0


def _default_device() -> torch.device:
    from t2i.pipeline import default_device

    return default_device()


if __name__ == "__main__":
    raise SystemExit(main())
