"""The celeba128 recipe (a GPU's) at its real sizes on the CPU: every stage runs two steps at
128 px with small batches, its outputs load back, and the pipeline generates a 128 px image.
Slow (minutes): `pytest -m slow tests/test_celeba128.py`. The GPU run of the same recipe is
part 4 of `make gpu-check`."""

import json
import resource

import pytest
import torch

from t2i.checkpoint import load_tensors
from t2i.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def test_celeba128_preset_every_stage_at_128px(tmp_path):
    from t2i.data.synthfaces import generate

    data, out = tmp_path / "synth", tmp_path / "model"
    generate(data, 32, seed=0, workers=1)  # few images: at 128 px every one costs seconds here
    # fp32: on a CPU, bf16 autocast made this preset's VAE step ~5x slower (256-channel convs)
    common = ["--data", str(data), "--out", str(out), "--preset", "celeba128", "--seed", "0",
              "--steps", "2", "--num-workers", "0", "--mixed-precision", "no"]
    assert main(["train", "vae", *common, "--batch-size", "2"]) == 0
    assert main(["train", "clip", *common, "--batch-size", "4"]) == 0
    assert main(["encode", "--vae", str(out), "--data", str(data), "--out", str(out / "latents"), "--flip",
                 "--batch-size", "16"]) == 0
    # one sample prompt (x 2 seeds) for the stage's final grid: an 80M-parameter UNet on a CPU
    assert main(["train", "unet", *common, "--batch-size", "2", "--set", "unet.sample_prompts=1"]) == 0
    assert main(["train", "judge", *common, "--batch-size", "4"]) == 0

    # shapes: 128 px images, an f=8 VAE with 4x16x16 latents, the preset's model sizes
    vae_config = json.loads((out / "vae" / "config.json").read_text())
    assert vae_config["config"]["channels"] == [64, 128, 256, 256]
    latents = json.loads((out / "latents" / "index.json").read_text())
    assert latents["image_size"] == 128 and list(latents["latent_shape"]) == [4, 16, 16]
    unet_params = sum(t.numel() for t in load_tensors(out / "unet" / "model.safetensors").values())
    assert 75e6 < unet_params < 90e6  # 80.6M
    for stage in ("vae", "clip", "unet", "judge"):
        run = json.loads((out / "logs" / stage / "run.json").read_text())
        assert run["steps"] == 2 and run["skipped_steps"] == 0, (stage, run)

    # save/load: the model dir loads and generates a 128 px image; the judge reads one
    from t2i.eval.faithfulness import load_judge
    from t2i.pipeline import T2IPipeline

    pipe = T2IPipeline.from_pretrained(out, device="cpu")
    images = pipe("a smiling woman with blond hair", num_images=1, steps=2, seed=0, output_type="pt")
    assert images.shape == (1, 3, 128, 128) and torch.isfinite(images).all()
    judge, _ = load_judge(out / "judge")
    with torch.no_grad():
        logits = judge(images)
    assert logits.shape == (1, 40)

    # memory: peak resident size of this process (all five stages ran in it)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert peak_gib < 8, f"peak RSS {peak_gib:.1f} GiB"
