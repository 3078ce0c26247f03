"""Caption-only evaluation: R-precision (own prompt among 99 others, chance 1%), the shuffled
controls, FD on CLIP features and the report, with a stand-in CLIP that reads images
perfectly (so the metric can be seen to succeed and to fail)."""

import json
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from t2i.eval.caption_eval import CaptionData, evaluate_captions
from t2i.eval.clip_metrics import phrase_shuffled
from t2i.eval.rprecision import r_precision, shuffled_texts, text_key
from t2i.eval.run import EvalConfig


def unit(n, dim=16, seed=0):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ----------------------------------------------------------------------------- R-precision


def test_r_precision_perfect_blind_and_collapsed():
    n = 300
    feats = unit(n)
    texts = [f"caption {i}" for i in range(n)]
    perfect = r_precision(feats, feats, texts, feats, texts, seed=0)
    assert perfect["r_precision"] == 1.0 and perfect["chance"] == 0.01 and perfect["distractors"] == 99
    assert perfect["mean_rank"] == 1.0
    # Images unrelated to their prompts: own prompt first about 1 time in 100.
    blind = r_precision(unit(n, seed=1), feats, texts, feats, texts, seed=0)
    assert blind["r_precision"] < 0.05
    assert 35 < blind["mean_rank"] < 65
    # Collapsed features: every prompt ties; ties count fractionally, so exactly chance.
    same = torch.ones(n, 16) / 4
    assert r_precision(same, same, texts, same, texts)["r_precision"] == pytest.approx(0.01)


def test_r_precision_never_uses_the_own_text_as_a_distractor():
    # 150 images and only 3 distinct captions: the own caption (in any case/spacing) is never
    # drawn against itself, so only the 100 captions of other texts are distractors.
    texts = ["A man", "a  woman ", "a child"] * 50
    text_feats = F.normalize(torch.eye(3, 8)[[i % 3 for i in range(150)]], dim=-1)
    result = r_precision(text_feats, text_feats, texts, text_feats, texts)
    assert result["r_precision"] == 1.0 and result["distractors"] == 99
    assert text_key(" A  Man ") == text_key("a man")
    with pytest.raises(ValueError, match="no distractor"):
        r_precision(text_feats[:2], text_feats[:2], ["a man"] * 2, text_feats[:1], ["A man"])
    with pytest.raises(ValueError, match="as many own prompts"):
        r_precision(text_feats[:3], text_feats[:2], texts[:3], text_feats, texts)


def test_small_pool_raises_the_chance_level():
    feats = unit(20)
    texts = [f"c{i}" for i in range(20)]
    result = r_precision(feats, feats, texts, feats, texts)
    assert result["distractors"] == 19 and result["chance"] == 0.05


def test_shuffled_texts_move_every_caption():
    texts = [f"c{i}" for i in range(50)]
    wrong = shuffled_texts(texts, seed=3)
    assert sorted(wrong) == sorted(texts) and all(a != b for a, b in zip(texts, wrong))
    assert wrong == shuffled_texts(texts, seed=3) != shuffled_texts(texts, seed=4)


def test_phrase_shuffle_keeps_subjects_and_phrase_counts():
    captions = ["a man, with glasses and a hat", "a woman with red hair", "a child, smiling",
                "an old man wearing earrings and a scarf"]
    mixed = phrase_shuffled(captions, seed=0)
    assert [m.split(", ")[0] for m in mixed] == ["a man", "a woman", "a child", "an old man"]
    before = sorted(p for c in captions for p in phrase_shuffled([c], 0)[0].split(", ")[1:])
    after = sorted(p for m in mixed for p in m.split(", ")[1:])
    assert before == after and mixed != [phrase_shuffled([c], 0)[0] for c in captions]


# ----------------------------------------------------------------------------- caption-only eval


class OracleCLIP(nn.Module):
    """A CLIP that reads pool images perfectly: an image's embedding is the random code of the
    nearest pool image, a caption's the code of the image it belongs to."""

    def __init__(self, pool: torch.Tensor, captions: list[str]):
        super().__init__()
        self.pool, self.index = pool, {c: i for i, c in enumerate(captions)}
        self.codes = nn.Parameter(unit(len(captions), 32, seed=7), requires_grad=False)
        self.logit_scale = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.config = type("Config", (), {"embed_dim": 32})()

    def encode_image(self, images):
        nearest = torch.cdist(images.flatten(1), self.pool.flatten(1)).argmin(1)
        return self.codes[nearest] * 3.0

    def text(self, texts):
        # A caption outside the pool (a phrase-shuffled one) reads as a fresh random code.
        rows = [self.codes[self.index[t]] if t in self.index else unit(1, 32, seed=zlib.crc32(t.encode()))[0]
                for t in texts]
        return torch.stack(rows)


class OracleTextEncoder:
    def __init__(self, pool, captions):
        self.clip = OracleCLIP(pool, captions)

    def image_features(self, images):
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def text_features(self, texts):
        return F.normalize(self.clip.text(list(texts)), dim=-1)

    def score(self, images, texts):
        return 100 * (self.image_features(images) * self.text_features(texts)).sum(-1).clamp(min=0)


class CaptionPipe:
    """The pipeline's call signature over a pool of real images: `follow_text` returns the image
    whose caption is the prompt (a random one for an unknown prompt), otherwise random ones."""

    def __init__(self, pool, captions, follow_text=True):
        self.pool, self.captions, self.follow_text = pool, captions, follow_text
        self.image_size, self.vae, self.model_id, self.device = pool.shape[-1], None, "stand-in", "cpu"
        self.text_encoder = OracleTextEncoder(pool, captions)

    def __call__(self, prompt, num_images=1, steps=20, guidance=3.0, sampler="ddim", seed=0, output_type="pt"):
        g = torch.Generator().manual_seed(seed)
        out = []
        for p in [prompt] if isinstance(prompt, str) else prompt:
            for _ in range(num_images):
                known = self.follow_text and p in self.captions
                i = self.captions.index(p) if known else int(torch.randint(len(self.pool), (1,), generator=g))
                out.append(self.pool[i] + 0.01 * torch.randn(self.pool.shape[1:], generator=g))
        return torch.stack(out)


@pytest.fixture(scope="module")
def caption_pool():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(160, 3, 8, 8, generator=g) * 2 - 1
    captions = [f"a picture number {i}, with detail {i % 7} and colour {i % 5}" for i in range(160)]
    return CaptionData(images, captions)


def test_caption_eval_reads_a_faithful_and_a_text_blind_generator(caption_pool, tmp_path):
    cfg = EvalConfig(n_prompts=40, n_per_prompt=2, steps=2, seed=0, batch_size=16, fd_images=60, clip_images=160)
    logs = []
    good = evaluate_captions(CaptionPipe(caption_pool.images, caption_pool.captions), "pool", cfg,
                             tmp_path / "eval", progress=False, log=logs.append, real=caption_pool)
    blind = evaluate_captions(CaptionPipe(caption_pool.images, caption_pool.captions, follow_text=False), "pool",
                              cfg, None, progress=False, log=logs.append, real=caption_pool)
    rp = good["r_precision"]
    assert rp["chance"] == 0.01 and rp["real"]["r_precision"] == 1.0
    assert rp["real_shuffled"]["r_precision"] < 0.05  # floor: near chance
    assert rp["generated"]["r_precision"] == 1.0 and rp["generated"]["images"] == 80
    assert blind["r_precision"]["generated"]["r_precision"] < 0.1
    assert good["clip_score"]["generated"] > 90 > 20 > blind["clip_score"]["generated"]
    # FD on CLIP features: a faithful generator draws the real images its captions belong to,
    # so it matches real/real; the phrase-shuffled control is measured (the stand-in answers
    # unknown prompts with random pool images, so its direction means nothing here).
    fd = good["fd"]
    assert fd["generated"] == pytest.approx(fd["real_vs_real"], abs=1e-3) and fd["n_generated"] == 60
    assert isinstance(fd["phrase_shuffled_prompts"], float) and fd["vae_reconstruction"] is None
    assert "CLIP" in fd["features"] and "not comparable" in fd["features"]
    assert good["faithfulness"] is None and good["mode"] == "captions"
    # Two images of one prompt are the same pool image (up to noise): diversity ~0.
    assert good["diversity"]["generated"] < 0.1 * good["diversity"]["real_distinct_images"]

    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["r_precision"] == rp
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "R-precision" in page and "own CLIP" in page and "not Inception FID" in page


def test_dataset_captions_reach_the_pipeline_as_literal_text(caption_pool):
    """A caption may hold what the composed-prompt syntax reads ("AND", "score: 5", a trailing
    colon): the eval escapes it, so the pipeline encodes the caption itself as one term."""
    from t2i.prompt_syntax import parse_prompt

    captions = [f"Caption: picture {i} AND score: {i % 9}" + (":" if i % 2 else "") for i in range(len(caption_pool.captions))]
    pool = CaptionData(caption_pool.images, captions)

    class ParsingPipe(CaptionPipe):
        """Reads its prompts as T2IPipeline does: parsed, then each term encoded."""

        def __call__(self, prompt, **kw):
            prompts = [prompt] if isinstance(prompt, str) else prompt
            terms = [parse_prompt(p).terms for p in prompts]  # a bare trailing colon would raise here
            assert all(len(t) == 1 and t[0].weight == 1 for t in terms)
            return super().__call__([t[0].text for t in terms], **kw)

    cfg = EvalConfig(n_prompts=20, n_per_prompt=1, steps=2, seed=0, batch_size=16, fd_images=20, clip_images=40)
    report = evaluate_captions(ParsingPipe(pool.images, captions), "pool", cfg, None, progress=False,
                               log=lambda *_: None, real=pool)
    assert report["r_precision"]["generated"]["r_precision"] == 1.0  # every caption found its own image
