"""`t2i eval`: the prompt suite, per-attribute scoring with negations, the controls that prove
each metric can fail, and report generation with a stand-in pipeline (same call signature as
T2IPipeline) on the synth_dir fixture."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from t2i.attributes import ATTRIBUTE_INDEX, NUM_ATTRIBUTES
from t2i.data.captions import VOCAB, caption_mentions
from t2i.data.synthfaces import RENDERED_ATTRIBUTES, sample_attributes
from t2i.eval.faithfulness import faithfulness, group_mean_pairwise_distance
from t2i.eval.fd import FDMeter
from t2i.eval.prompts import build_suite, column_shuffled, shuffled_rows
from t2i.eval.report import composed_table, sweep_table
from t2i.eval.run import EvalConfig, evaluate, sweep_settings
from t2i.prompt_syntax import MAX_TERMS, parse_prompt


def synth_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([sample_attributes(rng) for _ in range(n)]) > 0  # (n, 40) bool


def vec(**on):
    v = np.zeros(NUM_ATTRIBUTES, dtype=bool)
    for name, value in on.items():
        v[ATTRIBUTE_INDEX[name]] = value
    return v


# ----------------------------------------------------------------------------- prompt suite


@pytest.fixture(scope="module")
def rows():
    r = synth_rows(3000)
    return r[:2400], r[2400:]


def test_suite_scores_rendered_attributes_and_prompts_are_complete(rows):
    train, test = rows
    suite = build_suite(train, test, n_prompts=40, n_heldout=20, seed=1, negate_prob=0.5)
    assert set(suite.scored) == set(RENDERED_ATTRIBUTES)  # varied + captioned = rendered
    assert len(suite.group("heldout")) == 20
    # 40 drawn at random, plus rows that make every scored value requested >= 4 times each way.
    test_prompts = [suite.prompts[i] for i in suite.group("test")]
    assert sum(not p.coverage for p in test_prompts) == 40 < len(test_prompts) == 40 + suite.info["coverage_prompts"]
    asked = np.stack([p.requested for p in test_prompts])
    for a in suite.scored:
        j = ATTRIBUTE_INDEX[a]
        assert min(asked[:, j].sum(), (~asked[:, j]).sum()) >= 4, a
    negated = 0
    for p in suite.prompts:
        said = caption_mentions(p.text)
        for a in suite.scored:
            if a in said:  # what the caption says is what was requested ...
                assert said[a] == p.requested[ATTRIBUTE_INDEX[a]], (a, p.text)
            else:  # ... and an unnamed attribute is requested at its non-salient value
                assert p.requested[ATTRIBUTE_INDEX[a]] != VOCAB[a].salient, (a, p.text)
        for a in p.negated:
            negated += 1
            # a denial asserts the non-salient value ("without glasses"; "clean-shaven" = No_Beard)
            assert said[a] == (not VOCAB[a].salient) == p.requested[ATTRIBUTE_INDEX[a]]
        if p.group == "test":
            assert np.array_equal(p.requested, test[p.source])
    assert negated > 5
    again = build_suite(train, test, n_prompts=40, n_heldout=20, seed=1, negate_prob=0.5)
    assert [p.text for p in again.prompts] == [p.text for p in suite.prompts]


def test_heldout_combinations_never_occur_in_training(rows):
    train, test = rows
    idx = [ATTRIBUTE_INDEX[a] for a in RENDERED_ATTRIBUTES]
    train_keys = {r[idx].tobytes() for r in train}
    suite = build_suite(train, test, n_prompts=8, n_heldout=30, seed=0)
    held = [suite.prompts[i] for i in suite.group("heldout")]
    assert len(held) == 30
    assert all(p.requested[idx].tobytes() not in train_keys for p in held)
    assert len({p.requested[idx].tobytes() for p in held}) == 30  # distinct
    seen_flags = [suite.prompts[i].seen_in_train for i in suite.group("test")]
    assert seen_flags == [test[suite.prompts[i].source][idx].tobytes() in train_keys for i in suite.group("test")]


def test_heldout_flips_stay_plausible(rows):
    train, _ = rows
    # A test split that copies training rows has no new combination: every held-out prompt
    # must come from a flip, be absent from training, and pair only values seen together.
    suite = build_suite(train, train[:200], n_prompts=4, n_heldout=25, seed=3)
    held = [suite.prompts[i] for i in suite.group("heldout")]
    assert len(held) == 25 and all(p.flipped is not None for p in held)
    idx = [ATTRIBUTE_INDEX[a] for a in suite.scored]
    train_keys = {r[idx].tobytes() for r in train}
    male, beard = ATTRIBUTE_INDEX["Male"], ATTRIBUTE_INDEX["No_Beard"]
    lipstick = ATTRIBUTE_INDEX["Wearing_Lipstick"]
    for p in held:
        assert p.requested[idx].tobytes() not in train_keys
        r = p.requested
        assert r[male] or r[beard], "a woman with a beard never occurs in SynthFaces"
        assert not (r[male] and r[lipstick]), "a man with lipstick never occurs in SynthFaces"


def test_composed_form_of_a_request():
    from t2i.eval.prompts import Prompt, composed_text

    scored = tuple(RENDERED_ATTRIBUTES)
    asked = vec(Young=True, Blond_Hair=True, Wavy_Hair=True, Eyeglasses=True, Smiling=True, No_Beard=True)
    text = composed_text(Prompt("plain", asked, "heldout", negated=("Wearing_Hat",)), scored)
    assert text == ("a photo of a young woman with a smile AND a photo of a young woman wearing glasses AND "
                    "a photo of a young woman with wavy blond hair AND NOT a photo of a person wearing a hat")
    # A denied beard is a NOT term naming the beard; the subject alone is one term.
    shaven = composed_text(Prompt("plain", vec(Male=True, No_Beard=True), "test", negated=("No_Beard",)), scored)
    assert shaven == "a photo of an old man AND NOT a photo of a person with a beard"
    # Never more terms than the syntax allows: the last positive terms merge.
    many = vec(**{a: True for a in scored if VOCAB[a].salient and a not in ("Bald", "Wearing_Hat")})
    terms = parse_prompt(composed_text(Prompt("plain", many, "test", negated=("Wearing_Hat",)), scored)).terms
    assert len(terms) == MAX_TERMS and terms[-1].weight == -1


def test_denial_form_of_a_request():
    from t2i.eval.prompts import Prompt, denial_text

    scored = tuple(RENDERED_ATTRIBUTES)
    asked = vec(Young=True, Blond_Hair=True, Eyeglasses=True, No_Beard=True)
    plain = "a photo of a young woman with blond hair, wearing glasses"
    text = denial_text(Prompt(plain + ", without a hat", asked, "heldout", negated=("Wearing_Hat",)), scored)
    assert text == plain + " AND NOT a photo of a person wearing a hat :0.5"
    assert [t.weight for t in parse_prompt(text).terms] == [1.0, -0.5]
    # Without a denial it is the plain prompt itself, which samples exactly as a plain prompt.
    assert denial_text(Prompt(plain, asked, "test"), scored) == plain
    assert parse_prompt(denial_text(Prompt(plain, asked, "test"), scored)).is_plain


def test_default_suite_requests_rare_attributes_for_48_images_each_way(rows):
    """Hat, mustache and pale skin are rare in SynthFaces: by default each scored value is
    asked for often enough that its balanced accuracy rests on >= 48 images."""
    import math

    train, test = rows
    cfg = EvalConfig()
    suite = build_suite(train, test, cfg.n_prompts, cfg.n_heldout, cfg.seed,
                        min_per_class=math.ceil(cfg.min_images_per_class / cfg.n_per_prompt))
    asked = suite.requested(suite.group("test"))  # (P, 40)
    for a in suite.scored:
        images_yes = int(asked[:, ATTRIBUTE_INDEX[a]].sum()) * cfg.n_per_prompt
        images_no = int((~asked[:, ATTRIBUTE_INDEX[a]]).sum()) * cfg.n_per_prompt
        assert min(images_yes, images_no) >= 48, (a, images_yes, images_no)
    assert {"Wearing_Hat", "Mustache", "Pale_Skin"} <= set(suite.scored)


def test_rare_value_with_few_test_rows_is_asked_for_again(rows):
    train, test = rows
    bald = ATTRIBUTE_INDEX["Bald"]
    few = np.concatenate([test[~test[:, bald]][:300], test[test[:, bald]][:3]])  # 3 bald rows only
    suite = build_suite(train, few, 16, 0, seed=1, min_per_class=12)
    asked = suite.requested(suite.group("test"))
    assert int(asked[:, bald].sum()) == 12
    assert len({p.source for p in suite.prompts if p.requested[bald]}) == 3  # the same 3 rows, asked again


def test_suite_errors_name_the_problem(rows):
    train, test = rows
    with pytest.raises(ValueError, match="test split is empty"):
        build_suite(train, test[:0])
    with pytest.raises(ValueError, match=r"\(N, 40\)"):
        build_suite(train[:, :5], test)


# ----------------------------------------------------------------------------- scoring


def test_per_attribute_scoring_with_negations_hand_built():
    # Four images; Smiling asked for on 0,1; Eyeglasses never asked for (image 0 denies it).
    requested = np.stack([vec(Smiling=True), vec(Smiling=True), vec(), vec()])
    verdicts = np.stack([vec(Smiling=True), vec(), vec(Eyeglasses=True), vec(Smiling=True)])
    f = faithfulness(verdicts, requested, ("Smiling", "Eyeglasses"), negated=[("Eyeglasses",), (), (), ()])
    s, e = f["per_attribute"]["Smiling"], f["per_attribute"]["Eyeglasses"]
    assert (s["hit_rate"], s["rejection_rate"], s["balanced"]) == (0.5, 0.5, 0.5)
    assert e["hit_rate"] is None and e["rejection_rate"] == 0.75 and e["balanced"] == 0.75  # no positives: skipped
    assert (s["n_pos"], s["n_neg"], e["n_pos"], e["n_neg"]) == (2, 2, 0, 4)
    # The macro average takes only attributes requested both ways (Smiling): a text-blind
    # model would otherwise score 0 or 1 on Eyeglasses instead of 0.5.
    assert f["macro_balanced"] == 0.5 and f["macro_attributes"] == 1
    assert f["all_correct_rate"] == 0.25  # only image 0 gets both right
    assert f["negations"] == 1 and f["negations_obeyed"] == 1.0
    # The same verdicts, but the denied attribute is found: the negation score drops to 0.
    verdicts[0, ATTRIBUTE_INDEX["Eyeglasses"]] = True
    assert faithfulness(verdicts, requested, ("Eyeglasses",), [("Eyeglasses",), (), (), ()])["negations_obeyed"] == 0.0


def test_a_text_blind_generator_scores_exactly_half():
    requested = synth_rows(300, seed=9)
    same_picture = np.repeat(synth_rows(1, seed=10), 300, axis=0)  # one image whatever the prompt
    f = faithfulness(same_picture, requested, RENDERED_ATTRIBUTES)
    assert f["macro_balanced"] == 0.5 and f["macro_attributes"] == len(RENDERED_ATTRIBUTES)


def test_shuffled_captions_score_near_chance():
    # A perfect judge on real images: against their own attributes 1.0 (the ceiling); against
    # shuffled captions ~0.5 (the floor). The all-correct rate collapses far below 0.5.
    real = synth_rows(4000, seed=5)
    scored = RENDERED_ATTRIBUTES
    ceiling = faithfulness(real, real, scored)
    floor = faithfulness(real, shuffled_rows(real, seed=0), scored)
    assert ceiling["macro_balanced"] == 1.0 and ceiling["all_correct_rate"] == 1.0
    assert abs(floor["macro_balanced"] - 0.5) < 0.03
    assert floor["all_correct_rate"] < 0.05


def test_shuffles_keep_marginals():
    real = synth_rows(500, seed=2)
    for other in (shuffled_rows(real, 0), column_shuffled(real, RENDERED_ATTRIBUTES, 0)):
        assert np.array_equal(other.sum(0), real.sum(0))
    perm_src = shuffled_rows(np.arange(50)[:, None], 0)[:, 0]
    assert (perm_src != np.arange(50)).all() and sorted(perm_src) == list(range(50))  # a derangement


def test_diversity_of_identical_images_is_zero():
    f = torch.randn(3, 5).repeat_interleave(4, dim=0)  # 3 prompts x 4 identical images
    assert group_mean_pairwise_distance(f, 4) == 0.0
    assert group_mean_pairwise_distance(torch.randn(12, 5), 4) > 0.5


# ----------------------------------------------------------------------------- FD


class MeanColour(nn.Module):
    """A stub judge whose features are the mean colour: FD then has a closed form."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, NUM_ATTRIBUTES)
        self.num_features = 3

    def features(self, x):
        return x.float().mean(dim=(2, 3))


def test_fd_matches_closed_form_for_shifted_gaussians():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(4000, 3, 4, 4, generator=g)  # features ~ N(0, I/16)
    meter = FDMeter(MeanColour(), real)
    same = meter.fd(real)
    shifted = meter.fd(torch.randn(4000, 3, 4, 4, generator=g) + 0.5)  # mean shift 0.5 per dim
    assert abs(same) < 1e-6
    assert shifted == pytest.approx(3 * 0.25, rel=0.05)  # |d mu|^2, covariances equal


@pytest.fixture(scope="module")
def tiny_judge(synth_dir, tmp_path_factory):
    from t2i.cli import main
    from t2i.eval.faithfulness import load_judge

    out = tmp_path_factory.mktemp("judge")
    assert main(["train", "judge", "--data", str(synth_dir), "--out", str(out), "--preset", "tiny",
                 "--steps", "3", "--image-size", "64"]) == 0
    return load_judge(out)[0]


@pytest.fixture(scope="module")
def real_images(synth_dir):
    from t2i.data.celeba import FaceDataset
    from t2i.data.tensors import split_tensors

    return split_tensors(FaceDataset(synth_dir, split="all", image_size=32))


def test_fd_controls_real_vs_real_small_noise_large(tiny_judge, real_images):
    images, _ = real_images
    meter = FDMeter(tiny_judge, images[:48])
    assert abs(meter.fd(images[:48])) < 1e-6  # the same set
    halves = meter.fd(images[48:96])  # disjoint halves of real data
    noise = meter.fd(torch.rand(48, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert halves < 0.2 * noise, (halves, noise)


# ----------------------------------------------------------------------------- end to end


class BlurVAE(nn.Module):
    """Stand-in VAE: 2x average-pool "latents", nearest upsampling back."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode(self, x):
        class Posterior:
            def __init__(self, z):
                self.z = z

            def mode(self):
                return self.z

        return Posterior(torch.nn.functional.avg_pool2d(x, 2))

    def decode(self, z):
        return torch.nn.functional.interpolate(z, scale_factor=2, mode="nearest")


class StandInPipe:
    """T2IPipeline's call signature over a pool of real images: `follow_text` returns pool
    images whose attributes best match the prompt's (parsed back from the caption), otherwise
    random ones. Fewer steps add more noise, so sweeps have something to show."""

    def __init__(self, images, rows, follow_text=True):
        self.images, self.rows, self.follow_text = images, rows, follow_text
        self.image_size = images.shape[-1]
        self.vae, self.text_encoder, self.model_id, self.device = BlurVAE(), None, "stand-in", "cpu"
        self.calls = []

    def __call__(self, prompt, negative_prompt=None, num_images=1, steps=20, guidance=3.0, sampler="dpm++2m",
                 seed=None, output_type="pil"):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        self.calls.append((len(prompts), num_images, steps, guidance, sampler, seed))
        g = torch.Generator().manual_seed(seed)
        out = []
        for p in prompts:
            said = self.mentions(p)
            want = np.array([said.get(a, not VOCAB[a].salient) for a in RENDERED_ATTRIBUTES])
            idx = [ATTRIBUTE_INDEX[a] for a in RENDERED_ATTRIBUTES]
            dist = (self.rows[:, idx] != want).sum(1)
            best = np.nonzero(dist == dist.min())[0] if self.follow_text else np.arange(len(self.rows))
            pick = best[torch.randint(len(best), (num_images,), generator=g).numpy()]
            noise = torch.randn(num_images, *self.images.shape[1:], generator=g) * (0.5 / steps)
            out.append((self.images[pick] + noise).clamp(-1, 1))
        return torch.cat(out)

    def mentions(self, prompt: str) -> dict[str, bool]:
        # What the pipeline encodes: the eval escapes its prompts (a capitals-shape "...: ..."
        # becomes "...\: ..."), the pipeline reads the literal text back.
        return caption_mentions(" ".join(t.text for t in parse_prompt(prompt).terms))


class ComposingStandIn(StandInPipe):
    """Reads composed prompts (`a AND b AND NOT c`): its terms' mentions together, a NOT term's
    inverted; with `reads_not=False` it takes a NOT term as asked for (a generator that
    ignores the negation)."""

    def __init__(self, images, rows, reads_not=True):
        super().__init__(images, rows)
        self.reads_not = reads_not

    def mentions(self, prompt: str) -> dict[str, bool]:
        said = {}
        for term in parse_prompt(prompt).terms:
            for a, value in caption_mentions(term.text).items():
                said[a] = value if term.weight > 0 or not self.reads_not else not value
        return said


class LookupJudge(nn.Module):
    """Recognises pool images (up to the stand-in's noise) and returns their true attributes."""

    def __init__(self, images, rows):
        super().__init__()
        self.images, self.rows = images, rows
        self.head = nn.Linear(4, NUM_ATTRIBUTES)
        self.num_features = 4

    def features(self, x):
        x = self.prepare(x)
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(1, 2, 3))[:, None]], dim=1)

    def prepare(self, x):
        return torch.nn.functional.interpolate(x.float(), size=self.images.shape[-2:], mode="area") \
            if x.shape[-1] != self.images.shape[-1] else x.float()

    def predict(self, x, batch_size=256):
        x = self.prepare(x)
        d = torch.cdist(x.flatten(1), self.images.flatten(1))  # nearest pool image
        probs = torch.from_numpy(self.rows[d.argmin(1).numpy()].astype(np.float32))
        return probs, self.features(x)


def test_report_generation_with_stand_in_pipeline(synth_dir, tiny_judge, real_images, tmp_path):
    images, attrs = real_images
    pipe = StandInPipe(images, attrs.numpy() > 0.5)
    cfg = EvalConfig(n_prompts=4, n_per_prompt=2, n_heldout=2, steps=4, seed=0, batch_size=4, min_images_per_class=0, sweep=True,
                     quick=True, sweep_images=4, fd_images=4, sweep_steps=(2, 4), sweep_guidance=(1.0, 3.0),
                     sweep_samplers=("ddim", "dpm++2m"), sampler="dpm++2m")
    logs = []
    report = evaluate(pipe, tiny_judge, synth_dir, cfg, tmp_path / "eval", judge_meta={"path": "j"},
                      progress=False, log=logs.append)
    out = tmp_path / "eval"
    assert (out / "report.json").is_file() and (out / "grid_0.png").is_file()
    assert Image.open(out / "plot_attributes.png").size[0] > 100
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "not comparable to" in page
    saved = json.loads((out / "report.json").read_text())
    assert set(saved) >= {"settings", "suite", "faithfulness", "fd", "clip_score", "diversity", "timing", "sweep"}
    assert set(saved["faithfulness"]) == {"test", "heldout", "all", "ceiling_real", "ceiling_vae", "floor_shuffled"}
    assert saved["faithfulness"]["test"]["images"] == 8 and saved["faithfulness"]["heldout"]["images"] == 4
    assert set(saved["fd"]) >= {"generated", "real_vs_real", "vae_reconstruction", "column_shuffled_prompts"}
    assert all(isinstance(saved["fd"][k], float) for k in ("generated", "real_vs_real", "vae_reconstruction"))
    # The stand-in has no text encoder, so no CLIP score; the key is still there.
    assert saved["clip_score"] is None
    # Sweep: steps 2, 4 at the default sampler/guidance, both samplers, both guidance values,
    # with repeats removed; each row timed.
    settings = [(r["sampler"], r["steps"], r["guidance"]) for r in saved["sweep"]]
    assert settings == sweep_settings(cfg, ["ddim", "dpm++2m"])
    assert len(set(settings)) == len(settings) == 4
    assert all(r["seconds_per_image"] > 0 and r["images"] == 4 for r in saved["sweep"])
    # Each setting has intervals, and every setting but the default its paired gap to the
    # default: the default's figure minus its own, inside that gap's interval.
    default = next(r for r in saved["sweep"] if (r["sampler"], r["steps"], r["guidance"]) == ("dpm++2m", 4, 3.0))
    assert "gap_to_default" not in default
    for r in saved["sweep"]:
        lo, hi = r["intervals"]["all_correct_rate"]
        assert lo <= r["all_correct_rate"] <= hi
        if r is not default:
            gap = r["gap_to_default"]["all_correct_rate"]
            assert gap["gap"] == pytest.approx(default["all_correct_rate"] - r["all_correct_rate"], abs=1e-4)
            assert gap["interval"][0] <= gap["gap"] <= gap["interval"][1]
    assert "default - this" in sweep_table(saved) and "default - this" in page
    # Batched generation: at most batch_size=4 images per call, and some calls use all of it.
    sizes = [n_prompts * k for n_prompts, k, *_ in pipe.calls]
    assert max(sizes) == 4 and len(pipe.calls) > 5
    # Deterministic for a seed.
    again = evaluate(pipe, tiny_judge, synth_dir, cfg, None, progress=False, log=logs.append)
    assert again["faithfulness"] == report["faithfulness"] and again["fd"] == report["fd"]
    # A judge trained on fewer attributes scores only those, and says so.
    narrow = evaluate(pipe, tiny_judge, synth_dir, cfg, None, judge_meta={"attributes": ["Male", "Smiling"]},
                      progress=False, log=logs.append)
    assert set(narrow["faithfulness"]["test"]["per_attribute"]) == {"Male", "Smiling"}
    assert any("not trained on" in line for line in logs)


def test_eval_prefers_a_faithful_generator_when_the_judge_is_right(synth_dir, real_images, tmp_path):
    """With a judge that reads attributes perfectly (a lookup of the pool image), the oracle
    pipeline scores near the ceiling and the text-blind one near 0.5: the metric can fail."""
    images, attrs = real_images
    rows = attrs.numpy() > 0.5
    cfg = EvalConfig(n_prompts=8, n_per_prompt=2, n_heldout=0, steps=50, seed=0, max_real=96)
    good = evaluate(StandInPipe(images, rows), LookupJudge(images, rows), synth_dir, cfg, None, progress=False,
                    log=lambda *_: None)
    blind = evaluate(StandInPipe(images, rows, follow_text=False), LookupJudge(images, rows), synth_dir, cfg, None,
                     progress=False, log=lambda *_: None)
    assert good["faithfulness"]["ceiling_real"]["macro_balanced"] == 1.0
    assert good["faithfulness"]["test"]["macro_balanced"] > 0.9
    assert blind["faithfulness"]["test"]["macro_balanced"] < 0.75
    assert good["faithfulness"]["test"]["all_correct_rate"] > blind["faithfulness"]["test"]["all_correct_rate"]


def test_eval_reports_plain_vs_composed_prompts(synth_dir, real_images):
    """Held-out combinations and denying prompts are generated again from their composed form
    and scored against the same requests; a generator that ignores NOT scores lower there."""
    images, attrs = real_images
    rows = attrs.numpy() > 0.5
    cfg = EvalConfig(n_prompts=8, n_per_prompt=2, n_heldout=2, steps=50, seed=0, max_real=96, negate_prob=1.0,
                     fd_images=8, min_images_per_class=0)
    reads = evaluate(ComposingStandIn(images, rows), LookupJudge(images, rows), synth_dir, cfg, None,
                     progress=False, log=lambda *_: None)
    ignores = evaluate(ComposingStandIn(images, rows, reads_not=False), LookupJudge(images, rows), synth_dir, cfg,
                       None, progress=False, log=lambda *_: None)
    suite = reads["suite"]["prompts"]
    denying = [p for p in suite if p["negated"]]
    for key in ("terms", "denials"):
        c, ignored = reads["composed"][key], ignores["composed"][key]
        assert len(c["prompts"]) == len({p["text"] for p in suite if p["negated"] or p["group"] == "heldout"})
        assert c["heldout"]["composed"]["images"] == c["heldout"]["plain"]["images"] == 2 * 2
        assert c["negations"]["composed"]["negations"] == c["negations"]["plain"]["negations"] == 2 * len(denying) > 0
        for pair in c["prompts"]:
            terms = parse_prompt(pair["composed"]).terms
            denials = sum(p["negated"] != [] for p in suite if p["text"] == pair["plain"])
            assert "AND" not in pair["plain"] and sum(t.weight < 0 for t in terms) == denials
            assert len(terms) > 1 or key == "denials"
        # The plain images are the same in both runs; only the composed ones differ.
        assert ignored["negations"]["plain"] == c["negations"]["plain"]
        read_obeyed = c["negations"]["composed"]["negations_obeyed"]
        assert read_obeyed > 0.9 and read_obeyed > ignored["negations"]["composed"]["negations_obeyed"] + 0.1
    table = composed_table(reads)
    assert "held-out combinations" in table and "denials obeyed" in table and "description AND NOT" in table
    off = evaluate(ComposingStandIn(images, rows), LookupJudge(images, rows), synth_dir,
                   EvalConfig(**{**cfg.__dict__, "composed": False}), None, progress=False, log=lambda *_: None)
    assert off["composed"] is None and composed_table(off) == ""


class CanonicalWordsStandIn(StandInPipe):
    """Reads only the core caption words: an everyday word ("specs", "a beanie") is ignored,
    as by a model that never saw it."""

    def mentions(self, prompt: str) -> dict[str, bool]:
        from t2i.data.captions import phrase_spans

        said, text = {}, prompt.lower()
        for start, end, a, value in phrase_spans(prompt):
            v = VOCAB[a]
            if text[start:end] not in v.everyday + v.everyday_adj + v.everyday_neg:
                said[a] = value
        return said


def test_eval_reports_vocabulary_and_phrasing_suites_with_intervals(synth_dir, real_images):
    """The same requests in everyday words and in new sentence shapes, each beside the canonical
    wording with the gap's interval: a generator that reads every word shows no gap, one that
    knows only the core words shows a vocabulary gap whose interval excludes 0."""
    from t2i.eval.report import headline_table, wording_table

    images, attrs = real_images
    rows = attrs.numpy() > 0.5
    cfg = EvalConfig(n_prompts=12, n_per_prompt=2, n_heldout=0, steps=50, seed=0, max_real=96, fd_images=8,
                     min_images_per_class=0, wording_prompts=12, composed=False, bootstrap=500)
    reads = evaluate(StandInPipe(images, rows), LookupJudge(images, rows), synth_dir, cfg, None,
                     progress=False, log=lambda *_: None)
    canonical_only = evaluate(CanonicalWordsStandIn(images, rows), LookupJudge(images, rows), synth_dir, cfg,
                              None, progress=False, log=lambda *_: None)
    w = reads["wording"]
    n = min(12, reads["suite"]["info"]["test_prompts"])
    for name in ("vocabulary", "phrasing"):
        assert len(w[name]["prompts"]) == n >= 6 and w[name]["variant"]["images"] == 2 * n
        assert all(p["canonical"] != p["variant"] for p in w[name]["prompts"])
        gap = w[name]["gap"]["macro_balanced"]
        assert abs(gap["gap"]) < 0.05 and gap["interval"][0] <= gap["gap"] <= gap["interval"][1]
    worse = canonical_only["wording"]["vocabulary"]["gap"]["macro_balanced"]
    assert worse["gap"] > 0.1 and worse["interval"][0] > 0
    # every faithfulness figure carries its interval, and the tables print them
    test = reads["faithfulness"]["test"]
    lo, hi = test["intervals"]["macro_balanced"]
    assert lo <= test["macro_balanced"] <= hi
    assert f"[{lo:.3f}, {hi:.3f}]" in headline_table(reads)
    assert "vocabulary (everyday words)" in wording_table(canonical_only) and "phrasing" in wording_table(reads)
    off = evaluate(StandInPipe(images, rows), LookupJudge(images, rows), synth_dir,
                   EvalConfig(**{**cfg.__dict__, "wording_prompts": 0, "bootstrap": 0}), None, progress=False,
                   log=lambda *_: None)
    assert off["wording"] is None and "intervals" not in off["faithfulness"]["test"]


# ----------------------------------------------------------------------------- the real CLI


def test_eval_cli_on_a_tiny_model(tiny_model, synth_dir, tmp_path, capsys):
    from t2i.cli import main

    judge_dir = tmp_path / "j"
    assert main(["train", "judge", "--data", str(synth_dir), "--out", str(judge_dir), "--preset", "tiny",
                 "--steps", "2"]) == 0
    out = tmp_path / "report"
    args = ["eval", "--model", str(tiny_model), "--judge", str(judge_dir), "--data", str(synth_dir),
            "--n-prompts", "2", "--n-per-prompt", "2", "--n-heldout", "1", "--steps", "2", "--out", str(out),
            "--no-progress", "--device", "cpu", "--seed", "3"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "attribute faithfulness" in text and "not Inception FID" in text
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["seed"] == 3
    assert report["faithfulness"]["test"]["images"] == 2 * report["suite"]["info"]["test_prompts"] >= 4
    clip = report["clip_score"]  # the project's CLIP, through the pipeline's text encoder
    assert all(isinstance(clip[k], float) for k in ("generated", "real", "real_shuffled"))
    assert isinstance(report["fd"]["vae_reconstruction"], float)
    # R-precision beside the judge metrics, with the same CLIP and its real-image ceiling/floor.
    rp = report["r_precision"]
    assert "R-precision" in text and rp["generated"]["images"] == report["faithfulness"]["test"]["images"]
    assert all(0 <= rp[k]["r_precision"] <= 1 for k in ("generated", "real", "real_shuffled"))
    assert (out / "report.html").is_file()
    # the vocabulary and phrasing suites ran on the real pipeline, naming the words it never saw
    for name in ("vocabulary", "phrasing"):
        suite = report["wording"][name]
        assert suite["variant"]["images"] == 2 * len(suite["prompts"]) and isinstance(suite["unseen_words"], list)
    assert "please" not in report["wording"]["phrasing"]["unseen_words"]  # grammar words are not counted
    assert "phrasing (new sentence shapes)" in text

    assert main([*args, "--sampler", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_eval_prompts_are_literal_unless_composed():
    from t2i.eval.generation import generate_images

    seen = []

    def pipe(prompts, num_images, **kw):
        seen.append(list(prompts))
        return torch.zeros(len(prompts) * num_images, 3, 4, 4)

    upper = "PORTRAIT — YOUNG WOMAN: GLASSES AND EARRINGS, NOT BALD"  # a capitals-shape prompt
    generate_images(pipe, [upper], 1, 2, 3.0, "ddim", 0, 4, "t", progress=False)
    assert parse_prompt(seen[-1][0]).terms[0].text == upper and len(parse_prompt(seen[-1][0]).terms) == 1
    generate_images(pipe, ["a man AND NOT a hat"], 1, 2, 3.0, "ddim", 0, 4, "t", progress=False, composed=True)
    assert seen[-1] == ["a man AND NOT a hat"]
