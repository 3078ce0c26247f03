"""The inference pipeline and `t2i generate` on a tiny trained model."""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.cli import main
from t2i.diffusion.samplers import SAMPLERS
from t2i.pipeline import T2IPipeline, interpolate


def test_same_seed_same_image_across_loads(tiny_model, pipe):
    a = pipe("a smiling woman", num_images=2, steps=4, seed=3, output_type="pt")
    again = T2IPipeline.from_pretrained(tiny_model, device="cpu")("a smiling woman", num_images=2, steps=4,
                                                                   seed=3, output_type="pt")
    assert torch.equal(a, again)
    other = pipe("a smiling woman", num_images=2, steps=4, seed=4, output_type="pt")
    assert not torch.equal(a, other)
    assert a.shape == (2, 3, pipe.image_size, pipe.image_size)
    assert a.min() >= -1 and a.max() <= 1


def test_unet_reads_the_text_states_it_was_trained_on(tiny_model, pipe):
    # The tiny preset, like synth64, cross-attends to CLIP's token embeddings beside its final
    # states: the loaded text encoder must hand it both (2 x the text width).
    width = pipe.text_encoder.clip.config.text_width
    assert pipe.unet_config.text_token_embeddings and pipe.text_encoder.token_embeddings
    assert pipe.unet_config.context_dim == pipe.text_encoder.hidden_dim == 2 * width
    hidden, _, _ = pipe.text_encoder.encode(["a smiling woman"])
    assert hidden.shape[-1] == 2 * width


def test_pil_output_and_prompt_major_order(pipe):
    images = pipe(["a man", "a woman"], num_images=2, steps=2, seed=0)
    assert len(images) == 4 and all(isinstance(im, Image.Image) for im in images)
    assert images[0].size == (pipe.image_size, pipe.image_size)
    # Prompt-major: rows 0-1 are "a man", rows 2-3 "a woman". With a deterministic sampler an
    # image depends only on its prompt and its noise stream, so swapping the prompts and the
    # streams of the two halves swaps the halves of the batch (image-major order would not).
    def streams(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    # Latents, compared to 1e-7: the tiny model's prompts move them by ~1e-4, and decoding
    # would shrink that below a loose image tolerance.
    def latents(prompts, *seeds):
        return pipe(prompts, num_images=2, steps=2, generator=streams(*seeds), output_type="latent")

    both = latents(["a man", "a woman"], 0, 1, 2, 3)
    swapped = latents(["a woman", "a man"], 2, 3, 0, 1)
    torch.testing.assert_close(swapped[2:], both[:2], rtol=0, atol=1e-7)
    torch.testing.assert_close(swapped[:2], both[2:], rtol=0, atol=1e-7)
    # The check can see a misplaced prompt: the same streams with the prompts exchanged differ.
    exchanged = latents(["a woman", "a man"], 0, 1, 2, 3)
    assert (exchanged[:2] - both[:2]).abs().max() > 1e-6


def test_callback_sees_every_step_with_x0(pipe):
    seen = []
    pipe("a man", steps=5, seed=0, callback=lambda i, n, x, x0: seen.append((i, n, x.shape, x0.shape)))
    assert [s[0] for s in seen] == list(range(5)) and all(s[1] == 5 for s in seen)
    assert all(s[2] == s[3] == (1, *pipe.latent_shape()) for s in seen)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_runs(pipe, sampler):
    out = pipe("a man with eyeglasses", steps=3, seed=0, sampler=sampler, output_type="pt")
    assert torch.isfinite(out).all()


def test_empty_prompt_is_unconditional_and_long_prompt_warns(pipe):
    assert len(pipe("", steps=2, seed=0)) == 1
    with pytest.warns(UserWarning, match="truncat"):
        pipe("a smiling woman " * 100, steps=2, seed=0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"steps": 0}, "steps must be"),
        ({"steps": 100_000}, "steps must be"),
        ({"guidance": -1.0}, "guidance must be"),
        ({"guidance": float("nan")}, "guidance must be"),
        ({"sampler": "plms"}, "unknown sampler 'plms'"),
        ({"num_images": 0}, "number of images"),
        ({"strength": 1.5}, "strength must be"),
    ],
)
def test_bad_settings_are_clear_errors(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe("a man", **kwargs)


def test_missing_component_is_named(tiny_model, tmp_path):
    import shutil

    broken = tmp_path / "m"
    shutil.copytree(tiny_model, broken, ignore=shutil.ignore_patterns("checkpoints", "latents", "logs"))
    shutil.rmtree(broken / "unet")
    with pytest.raises(FileNotFoundError, match="holds no unet component"):
        T2IPipeline.from_pretrained(broken)
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        T2IPipeline.from_pretrained(tmp_path / "nope")


def test_img2img_strength(pipe):
    init = pipe("a man", steps=3, seed=1)[0]
    same = pipe("a woman", init_image=init, strength=0.0, steps=10, seed=2, output_type="pt")
    changed = pipe("a woman", init_image=init, strength=0.9, steps=10, seed=2, output_type="pt")
    recon = pipe.decode_latents(pipe.encode_image(init))
    assert torch.allclose(same, recon, atol=1e-5)
    assert not torch.allclose(changed, recon, atol=1e-2)


def test_interpolation_frames(pipe):
    frames = interpolate(pipe, "a man", "a woman", seed_a=0, seed_b=1, frames=3, steps=2)
    assert len(frames) == 3
    end = pipe("a man", steps=2, seed=0, output_type="pt")
    # The first frame is exactly prompt A with seed A (lerp/slerp weight 0).
    import numpy as np

    first = torch.from_numpy(np.asarray(frames[0])).permute(2, 0, 1).float() / 127.5 - 1
    assert (first - end[0]).abs().max() < 2 / 255 + 1e-6


def test_generate_cli_writes_pngs_with_metadata(tiny_model, tmp_path, capsys):
    out = tmp_path / "gen"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["generate", "a smiling man", "--model", str(tiny_model), "-n", "2", "--steps", "3",
                     "--seed", "5", "--out", str(out)])
    assert code == 0
    pngs = sorted((out / "0001").glob("00_*.png"))
    assert len(pngs) == 2 and (out / "0001" / "grid.png").is_file()
    meta = json.loads(Image.open(pngs[1]).text["t2i"])
    assert meta["prompt"] == "a smiling man" and meta["seed"] == 6 and meta["steps"] == 3  # its own seed: 5 + 1
    assert meta["index"] == 1 and meta["sampler"] == "euler-a"
    assert "s per image" in capsys.readouterr().out


def test_prompt_warnings_name_words_the_model_never_saw(pipe, tiny_model, tmp_path):
    from t2i.vocabulary import Vocabulary

    assert pipe.vocabulary is not None and pipe.vocabulary.counts == Vocabulary.load(tiny_model).counts
    assert pipe.prompt_warnings("a photo of a smiling woman") == []
    (w,) = pipe.prompt_warnings("a smiling woman in a sombrero, smilling", field="negative_prompt")
    assert w["kind"] == "unseen_words" and w["field"] == "negative_prompt"
    assert w["words"] == [{"word": "sombrero", "suggestion": pipe.vocabulary.suggest("sombrero")},
                          {"word": "smilling", "suggestion": "smiling"}]
    assert '"sombrero"' in w["message"] and '"smilling" (try "smiling")' in w["message"]
    long = pipe.prompt_warnings(" ".join(["a smiling man"] * 40))
    assert [x["kind"] for x in long] == ["truncated"]
    # A model trained before words were recorded warns about none; a vocabulary.json that
    # points out of the model dir is refused.
    old = tmp_path / "old"
    shutil.copytree(tiny_model, old, ignore=shutil.ignore_patterns("vocabulary.json"))
    assert T2IPipeline.from_pretrained(old, device="cpu").prompt_warnings("a sombrero") == []
    (tmp_path / "outside.json").write_text((tiny_model / "vocabulary.json").read_text())
    (old / "vocabulary.json").symlink_to(tmp_path / "outside.json")
    with pytest.raises(ValueError, match="outside"):
        T2IPipeline.from_pretrained(old, device="cpu")


def test_generate_cli_warns_about_unseen_words(tiny_model, tmp_path, capsys):
    assert main(["generate", "a man in a sombrero", "--model", str(tiny_model), "-n", "1", "--steps", "1",
                 "--negative", "zebra", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "warning: 'a man in a sombrero': the model never saw the word \"sombrero\"" in err
    assert "warning: negative prompt 'zebra': the model never saw the word \"zebra\"" in err


def test_generate_cli_bad_input(tiny_model, tmp_path, capsys):
    assert main(["generate", "x", "--model", str(tiny_model), "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "steps must be" in capsys.readouterr().err
    assert main(["generate", "x", "--model", str(tmp_path / "missing")]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_generate_cli_bf16_matches_fp32(tiny_model, tmp_path):
    def run(precision):
        out = tmp_path / precision
        assert main(["generate", "a smiling man", "--model", str(tiny_model), "-n", "1", "--steps", "3",
                     "--seed", "5", "--precision", precision, "--out", str(out)]) == 0
        return np.asarray(Image.open(out / "0001" / "00_00.png"), dtype=np.float32)

    fp32, bf16 = run("fp32"), run("bf16")
    # bf16 autocast changes rounding, not the picture: well under one level out of 255 on average.
    assert np.abs(fp32 - bf16).mean() < 1.0


@pytest.mark.slow
def test_compiled_pipeline_matches_eager(tiny_model):
    pipe = T2IPipeline.from_pretrained(tiny_model, device="cpu")
    eager = pipe("a smiling man", num_images=2, steps=3, seed=1, output_type="pt")
    compiled = pipe.compile()("a smiling man", num_images=2, steps=3, seed=1, output_type="pt")
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-3)
