"""Composed prompts (`a AND b AND NOT c :2`) through the pipeline on a tiny trained model.

The tiny model is trained for a few steps: these tests check the mechanics (equality with
plain prompts, one batched UNet forward per step, finite and prompt-dependent output), not
whether composition improves faithfulness (`t2i eval` measures that on a real model)."""

import pytest
import torch

from t2i.diffusion.samplers import timesteps
from t2i.pipeline import (
    MAX_UNET_ROWS,
    PromptSyntaxError,
    TermStates,
    interpolate,
    parse_prompt,
)

COMPOSED = "a smiling woman AND wearing eyeglasses AND NOT a hat :0.5"


class CountingUNet:
    """Stands in for pipe.unet: records the batch size of every forward."""

    def __init__(self, unet):
        self.unet, self.batches = unet, []

    def __call__(self, x, *args):
        self.batches.append(x.shape[0])
        return self.unet(x, *args)


def counted(pipe, **call):
    real = pipe.unet
    pipe.unet = counter = CountingUNet(real)
    try:
        out = pipe(**call)
    finally:
        pipe.unet = real
    return out, counter.batches


def test_one_term_equals_the_plain_prompt_exactly(pipe):
    plain = pipe("a smiling woman", num_images=2, steps=3, seed=4, output_type="pt")
    assert torch.equal(pipe("a smiling woman :1", num_images=2, steps=3, seed=4, output_type="pt"), plain)
    # The composed code path itself, forced with that one term: the same latents, bit for bit.
    terms = pipe.encode_terms([parse_prompt("a smiling woman")], num_images=2)
    cond = tuple(s.repeat_interleave(2, dim=0) for s in pipe.encode_prompt(["a smiling woman"]))
    uncond = tuple(s.repeat_interleave(2, dim=0) for s in pipe.encode_prompt([""]))
    ts = timesteps(pipe.schedule, 3)
    start = pipe.initial_noise(2, 4)
    composed = pipe.denoise(start, terms, uncond, ts, 3.0, "dpm++2m")
    assert isinstance(terms, TermStates) and terms.image.tolist() == [0, 1]
    assert torch.equal(composed, pipe.denoise(start, cond, uncond, ts, 3.0, "dpm++2m"))


def test_a_composed_call_is_one_batched_unet_forward_per_step(pipe):
    steps, n = 4, 2
    out, batches = counted(pipe, prompt=COMPOSED, num_images=n, steps=steps, seed=0, output_type="pt")
    assert batches == [n * (3 + 1)] * steps  # 3 terms + the unconditional branch, per image
    # Prompts with different numbers of terms share the one forward: 2 + 1 + 3 terms, 3 images.
    _, batches = counted(pipe, prompt=["a man AND a beard", "a woman", COMPOSED], steps=steps, seed=0,
                         output_type="pt", sampler="ddim")
    assert batches == [(2 + 1 + 3) + 3] * steps
    # A plain prompt keeps classifier-free guidance's [cond; uncond] batch.
    _, batches = counted(pipe, prompt="a smiling woman", num_images=n, steps=steps, seed=0, output_type="pt")
    assert batches == [2 * n] * steps


def test_composed_output_is_finite_and_follows_the_terms(pipe):
    settings = dict(num_images=2, steps=4, seed=1, output_type="pt")
    plain = pipe("a smiling woman", **settings)
    composed = pipe(COMPOSED, **settings)
    negated = pipe("a smiling woman AND NOT wearing eyeglasses AND NOT a hat :0.5", **settings)
    assert torch.isfinite(composed).all() and torch.isfinite(negated).all() and composed.shape == plain.shape
    # The tiny model reads text only faintly; "differs" is measured against how much another
    # plain prompt changes the image (float noise is orders of magnitude below either).
    other_prompt = (pipe("a man", **settings) - plain).abs().max()
    assert other_prompt > 1e-6
    assert (composed - plain).abs().max() > 0.5 * other_prompt
    assert (negated - composed).abs().max() > 0.5 * other_prompt
    # Prompt-major order holds for composed prompts: each image follows its own prompt's terms.
    both = pipe(["a smiling woman", COMPOSED], **settings)
    assert (both[2:] - both[:2]).abs().max() > 0.5 * other_prompt


def test_syntax_errors_and_the_row_limit_are_clear(pipe):
    with pytest.raises(PromptSyntaxError, match="empty term after 'AND' at column 11"):
        pipe("a smiling AND", steps=2)
    with pytest.raises(PromptSyntaxError, match="prompt 1: bad weight"):
        pipe(["a man", "a woman :2x"], steps=2)
    with pytest.raises(ValueError, match="interpolation takes plain prompts"):
        interpolate(pipe, "a man AND a beard", "a woman", frames=2, steps=2)
    many = " AND ".join(["a man"] * 8)
    with pytest.raises(ValueError, match=f"the limit is {MAX_UNET_ROWS}"):
        pipe(many, num_images=MAX_UNET_ROWS // 9 + 1, steps=2)


def test_web_and_live_validation_checks_the_syntax_before_queueing():
    from t2i.app.limits import Limits, RequestError, validate_request

    limits = Limits(max_images=4)
    ok = validate_request(limits, "a man  AND\tNOT a hat :2", num_images=4)
    assert ok.prompt == "a man AND NOT a hat :2"  # whitespace cleaned, syntax kept
    with pytest.raises(RequestError, match=r"prompt: bad weight '2x' .* at column 13"):
        validate_request(limits, "a man AND x:2x")
    big = Limits(max_images=256)
    with pytest.raises(RequestError, match="UNet rows per step"):
        validate_request(big, " AND ".join(["a man"] * 8), num_images=100)


def test_generate_cli_reads_the_syntax(tiny_model, tmp_path, capsys):
    from t2i.cli import main

    code = main(["generate", "a smiling woman AND NOT wearing eyeglasses :2", "--model", str(tiny_model), "-n", "1",
                 "--steps", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "composed prompt" in out and "NOT 'wearing eyeglasses' 2" in out
    assert len(list(tmp_path.rglob("00_00.png"))) == 1
    # A syntax error is reported (with the column) before the model is loaded.
    code = main(["generate", "a man AND", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path)])
    assert code != 0 and "empty term after 'AND' at column 7" in capsys.readouterr().err


def test_live_session_reads_the_syntax(pipe, tmp_path):
    import io

    from t2i.live import LiveSession, PlainView, Settings

    out = io.StringIO()
    session = LiveSession(pipe, Settings(steps=2, seed=3), tmp_path, PlainView(out))
    session.handle("a smiling woman AND NOT a hat")
    session.handle("a smiling woman AND AND a hat")
    text = out.getvalue()
    assert "composed prompt, 2 terms: 'a smiling woman' 1, NOT 'a hat' 1" in text
    assert "error: prompt: empty term before 'AND' at column 21" in text
    assert len(list(tmp_path.glob("*.png"))) == 1


def test_prompt_warnings_read_a_composed_prompt_term_by_term(pipe):
    from t2i.vocabulary import Vocabulary

    saved = pipe.vocabulary
    pipe.vocabulary = Vocabulary.from_captions(["a photo of a smiling woman wearing a hat", "a man with a beard"])
    try:
        warned = pipe.prompt_warnings("a smiling woman :1.5 AND NOT a hat AND a bespectacled man")
        # The keywords and the weight are syntax, not words; the unseen word is named.
        assert [w["word"] for w in warned[0]["words"]] == ["bespectacled"]
    finally:
        pipe.vocabulary = saved
    # Each term has the whole context: a long composed prompt of short terms is not truncated.
    context = pipe.text_encoder.tokenizer.context_length
    long_term = "a smiling woman " * context
    short_terms = " AND ".join(["a smiling woman wearing a hat"] * 8)
    assert pipe.text_encoder.tokenizer.num_tokens(short_terms) > context
    assert not [w for w in pipe.prompt_warnings(short_terms) if w["kind"] == "truncated"]
    truncated = [w for w in pipe.prompt_warnings(f"a man AND {long_term}") if w["kind"] == "truncated"]
    assert len(truncated) == 1 and truncated[0]["message"].startswith("the term 'a smiling woman")
