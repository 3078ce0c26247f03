"""The pipeline's call surface: diffusers' argument names beside t2i's, output types, the
output object, and one noise stream per image (image k of a call seeded S is seed S + k)."""

import numpy as np
import pytest
import torch
from PIL import Image

from image_checks import same_image
from t2i.pipeline import T2IPipelineOutput

PROMPT = "a smiling man with eyeglasses"


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])


def test_diffusers_names_and_generator_list_equal_t2i_names_and_seed(pipe):
    t2i = pipe(PROMPT, negative_prompt="a woman", num_images=3, steps=4, guidance=2.5, sampler="euler-a",
               seed=11)
    generators = [torch.Generator().manual_seed(11 + k) for k in range(3)]
    out = pipe(PROMPT, negative_prompt="a woman", num_images_per_prompt=3, num_inference_steps=4,
               guidance_scale=2.5, sampler="euler-a", generator=generators, return_dict=True)
    assert isinstance(out, T2IPipelineOutput) and out.seeds is None
    assert np.array_equal(pixels(out.images), pixels(t2i))
    # The output object carries each image's own seed when the call was seeded.
    assert pipe(PROMPT, num_images=3, steps=2, seed=11, return_dict=True).seeds == [11, 12, 13]


@pytest.mark.parametrize("sampler", ["dpm++2m", "euler-a"])
def test_image_3_of_a_batch_regenerates_alone(pipe, sampler):
    # euler-a draws fresh noise every step: image 3's must come from its own stream too.
    batch = pipe(PROMPT, num_images=4, steps=5, seed=20, sampler=sampler)
    alone = pipe(PROMPT, num_images=1, steps=5, seed=23, sampler=sampler)
    assert same_image(batch[3], alone[0])
    assert not same_image(batch[2], alone[0])
    # Across prompts the count goes on in prompt-major order: image 1 of the second prompt is k=3.
    two_prompts = pipe([PROMPT, "a bald woman"], num_images=2, steps=5, seed=20, sampler=sampler)
    second = pipe("a bald woman", num_images=1, steps=5, seed=23, sampler=sampler)
    assert same_image(two_prompts[3], second[0])


def test_one_generator_for_the_batch_is_reproducible(pipe):
    a = pipe(PROMPT, num_images=2, steps=3, generator=torch.Generator().manual_seed(5), output_type="pt")
    b = pipe(PROMPT, num_images=2, steps=3, generator=torch.Generator().manual_seed(5), output_type="pt")
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])


def test_output_types_agree(pipe):
    pt = pipe(PROMPT, num_images=2, steps=3, seed=1, output_type="pt")
    np_images = pipe(PROMPT, num_images=2, steps=3, seed=1, output_type="np")
    latents = pipe(PROMPT, num_images=2, steps=3, seed=1, output_type="latent")
    pil = pipe(PROMPT, num_images=2, steps=3, seed=1)
    assert pt.shape == (2, 3, pipe.image_size, pipe.image_size) and pt.min() >= -1 and pt.max() <= 1
    assert isinstance(np_images, np.ndarray) and np_images.shape == (2, pipe.image_size, pipe.image_size, 3)
    np.testing.assert_allclose(np_images, ((pt + 1) / 2).permute(0, 2, 3, 1).numpy(), atol=1e-6)
    assert np_images.min() >= 0 and np_images.max() <= 1
    assert latents.shape == (2, *pipe.latent_shape())
    torch.testing.assert_close(pipe.decode_latents(latents), pt)
    assert np.abs(pixels(pil) / 255.0 - np_images).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="output_type must be one of pil, np, pt, latent"):
        pipe(PROMPT, steps=2, seed=0, output_type="numpy")


def test_return_dict_none_true_false(pipe):
    plain = pipe(PROMPT, steps=2, seed=3)
    assert isinstance(plain, list) and isinstance(plain[0], Image.Image)  # existing callers unchanged
    as_tuple = pipe(PROMPT, steps=2, seed=3, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert np.array_equal(np.asarray(as_tuple[0][0]), np.asarray(plain[0]))
    assert np.array_equal(np.asarray(pipe(PROMPT, steps=2, seed=3, return_dict=True).images[0]),
                          np.asarray(plain[0]))


def test_callback_on_step_end_sees_every_step(pipe):
    seen, old_style = [], []

    def on_step_end(p, step, timestep, kwargs):
        seen.append((p, step, int(timestep), tuple(kwargs["latents"].shape)))
        return kwargs

    pipe(PROMPT, num_images=2, num_inference_steps=4, seed=0, callback_on_step_end=on_step_end,
         callback=lambda i, n, x, x0: old_style.append(i))
    assert [s[1] for s in seen] == [0, 1, 2, 3] and old_style == [0, 1, 2, 3]
    assert all(s[0] is pipe and s[3] == (2, *pipe.latent_shape()) for s in seen)
    timesteps = [s[2] for s in seen]
    assert timesteps == sorted(timesteps, reverse=True) and timesteps[0] > timesteps[-1]


def test_image_is_init_image(pipe):
    init = pipe("a man", steps=3, seed=1)[0]
    a = pipe("a woman", init_image=init, strength=0.5, steps=6, seed=2, output_type="pt")
    b = pipe("a woman", image=init, strength=0.5, num_inference_steps=6, generator=[torch.Generator().manual_seed(2)],
             output_type="pt")
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(steps=4, num_inference_steps=5), "steps=4 and num_inference_steps=5 disagree"),
        (dict(guidance=2.0, guidance_scale=3.0), "guidance=2.0 and guidance_scale=3.0 disagree"),
        (dict(num_images=2, num_images_per_prompt=3), "num_images=2 and num_images_per_prompt=3 disagree"),
        (dict(seed=1, generator=torch.Generator()), "seed or generator, not both"),
        (dict(num_images=2, generator=[torch.Generator()]), "a list of 2 \\(one per image\\), got 1"),
    ],
)
def test_conflicting_or_bad_arguments_are_named(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(PROMPT, **kwargs)
