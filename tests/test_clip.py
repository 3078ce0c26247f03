import math

import pytest
import torch
import torch.nn.functional as F

from t2i.checkpoint import save_component
from t2i.models.clip import CLIP, CLIPConfig, contrastive_loss, positive_mask
from t2i.text_encoder import TextEncoder
from t2i.tokenizer import CaptionTokenizer

CAPTIONS = [
    "a smiling man with eyeglasses",
    "a woman with blond hair, wearing a hat",
    "a young man without eyeglasses, not smiling",
    "a woman with black hair and heavy makeup",
] * 10

TINY = dict(text_width=32, text_layers=2, text_heads=2, image_size=16, image_channels=(8, 16),
            embed_dim=16, context_length=24)


@pytest.fixture(scope="module")
def tok():
    return CaptionTokenizer.train(CAPTIONS, vocab_size=300, context_length=24)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return CLIP(CLIPConfig(vocab_size=tok.vocab_size, **TINY)).eval()


def test_shapes_and_any_image_size(model, tok):
    ids, mask = tok.encode(CAPTIONS[:3])
    hidden, pooled = model.encode_text(ids, mask)
    assert hidden.shape == (3, 24, 32) and pooled.shape == (3, 16)
    for size in (16, 32, 64, 24):  # the tower resizes to its own image_size
        assert model.encode_image(torch.rand(2, 3, size, size) * 2 - 1).shape == (2, 16)
    img, txt, scale = model(torch.zeros(3, 3, 16, 16), ids, mask)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3)) and torch.allclose(txt.norm(dim=-1), torch.ones(3))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_a_latent_tower_scores_pixels_through_its_vae(tok):
    from t2i.models.vae import VAE, VAEConfig

    torch.manual_seed(0)
    vae = VAE(VAEConfig(channels=(8, 16, 16), num_res_blocks=1, scale=0.5, shift=0.1)).eval()  # 32 px -> 4x8x8
    clip = CLIP(CLIPConfig(vocab_size=tok.vocab_size, **{**TINY, "image_size": 8}, image_input="latents",
                           stem_stride=1)).eval()
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with pytest.raises(RuntimeError, match="attach its VAE"):
        clip.encode_image(pixels)
    with pytest.raises(ValueError, match="reads VAE latents"):
        clip.image(pixels)  # the tower itself takes latents only
    clip.attach_vae(vae)
    latents = vae.normalize(vae.encode(pixels).mean)  # (2, 4, 8, 8): what the tower was trained on
    with torch.no_grad():
        assert torch.equal(clip.encode_image(pixels), clip.image(latents))
        # Other sizes are resized to the VAE's input size first, as a pixel tower resizes.
        assert clip.encode_image(torch.rand(2, 3, 48, 48) * 2 - 1).shape == (2, 16)
    # The VAE is borrowed, not part of CLIP's weights.
    assert not any(k.startswith("_vae") or "encoder.conv" in k for k in clip.state_dict())


def test_logit_scale_is_clamped_at_100(tok):
    m = CLIP(CLIPConfig(vocab_size=tok.vocab_size, **TINY))
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    assert m.scale().item() == pytest.approx(100.0)


@pytest.mark.parametrize("pool", ["eos", "mean"])
def test_padding_does_not_change_a_prompts_outputs(tok, pool):
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(vocab_size=tok.vocab_size, text_pool=pool, **TINY)).eval()
    short, long = "a man", "a woman with black hair and heavy makeup, smiling"
    with torch.no_grad():
        ids, mask = tok.encode([short])
        h1, p1 = model.encode_text(ids, mask)
        ids2, mask2 = tok.encode([short, long])
        h2, p2 = model.encode_text(ids2, mask2)
        # Trimming trailing padding (done during training) changes nothing either.
        n = int(mask.sum())
        h3, p3 = model.encode_text(ids[:, :n], mask[:, :n])
    assert torch.allclose(p1[0], p2[0], atol=1e-5) and torch.allclose(p1[0], p3[0], atol=1e-5)
    assert torch.allclose(h1[0, :n], h2[0, :n], atol=1e-5) and torch.allclose(h1[0, :n], h3[0], atol=1e-5)
    assert not torch.allclose(p2[0], p2[1], atol=1e-3)  # and the two prompts do differ
    # Length buckets (training's shortcut) give the same outputs as one padded batch.
    prompts = [CAPTIONS[i % 4][: 5 + 3 * i] for i in range(9)] + [""]
    with torch.no_grad():
        ids, mask = tok.encode(prompts)
        h_one, p_one = model.encode_text(ids, mask)
        h_b, p_b = model.text(ids, mask, buckets=3)
    assert torch.allclose(p_one, p_b, atol=1e-5) and torch.allclose(h_one * mask[..., None], h_b * mask[..., None], atol=1e-5)


def test_positive_mask_from_captions_and_attributes():
    caps = ["a", "b", "a", "c"]
    attrs = torch.tensor([[0, 1], [1, 1], [0, 0], [1, 1]], dtype=torch.float32)
    expected = torch.tensor([
        [1, 0, 1, 0],
        [0, 1, 0, 1],
        [1, 0, 1, 0],
        [0, 1, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(positive_mask(caps, attrs), expected)
    assert torch.equal(positive_mask(caps), expected & torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0],
                                                                       [1, 0, 1, 0], [0, 0, 0, 1]]).bool())


def test_positive_mask_with_several_captions_per_image():
    # Image 0 owns texts 0 and 1, image 1 owns text 2; text 2 repeats text 0's caption.
    owner = torch.tensor([0, 0, 1])
    attrs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = positive_mask(["a", "b", "a"], attrs, owner)
    assert pos.tolist() == [[True, True, True], [True, False, True]]
    assert positive_mask(["a", "b", "c"], attrs, owner).tolist() == [[True, True, False], [False, False, True]]
    # Same attribute vector: every text of either image is a positive of both.
    same = positive_mask(["a", "b", "c"], torch.ones(2, 2), owner)
    assert same.all()


def test_multipositive_equals_infonce_when_all_differ():
    torch.manual_seed(1)
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    pos = positive_mask([f"caption {i}" for i in range(6)], torch.eye(6))
    assert torch.equal(pos, torch.eye(6, dtype=torch.bool))
    a = contrastive_loss(img, txt, scale, pos)
    b = contrastive_loss(img, txt, scale)
    labels = torch.arange(6)
    logits = scale * img @ txt.t()
    ref = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    assert torch.allclose(a, b) and torch.allclose(a, ref)


def _soft_ce_rows(logits, targets):
    """Mean over rows of -sum_j t_ij log softmax(l_i)_j, in plain Python."""
    total = 0.0
    for row, t in zip(logits, targets):
        lse = math.log(sum(math.exp(v) for v in row))
        total += -sum(tj * (v - lse) for v, tj in zip(row, t))
    return total / len(logits)


def test_multipositive_matches_hand_computed_value_with_duplicates():
    # Three pairs; pairs 0 and 1 share the caption "x". Scale 2.
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    pos = positive_mask(["x", "x", "y"])
    loss = contrastive_loss(img, txt, torch.tensor(2.0), pos)
    # logits = 2 * img @ txt.T, written out by hand:
    logits = [[2.0, 1.6, 0.0], [1.2, 1.92, 1.6], [0.0, 1.2, 2.0]]
    targets = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    logits_t = [list(col) for col in zip(*logits)]
    expected = 0.5 * (_soft_ce_rows(logits, targets) + _soft_ce_rows(logits_t, targets))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.80187, abs=1e-4)  # the value of `expected`
    # Plain InfoNCE gives a different number: its targets ignore the duplicate caption.
    infonce = contrastive_loss(img, txt, torch.tensor(2.0)).item()
    eye = [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]
    assert infonce == pytest.approx(0.5 * (_soft_ce_rows(logits, eye) + _soft_ce_rows(logits_t, eye)), rel=1e-6)
    assert abs(infonce - loss.item()) > 0.1


def test_multipositive_with_several_captions_per_image_by_hand():
    # Two images, three texts (image 0 owns texts 0 and 1). Scale 1.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    pos = positive_mask(["a", "b", "c"], owner=torch.tensor([0, 0, 1]))
    loss = contrastive_loss(img, txt, torch.tensor(1.0), pos)
    logits = [[1.0, 0.6, 0.0], [0.0, 0.8, 1.0]]  # img @ txt.T
    i2t = _soft_ce_rows(logits, [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    t2i = _soft_ce_rows([list(c) for c in zip(*logits)], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert loss.item() == pytest.approx(0.5 * (i2t + t2i), rel=1e-6)
    with pytest.raises(ValueError, match="at least one positive"):
        contrastive_loss(img, txt, torch.tensor(1.0), torch.zeros(2, 3, dtype=torch.bool))
    # Text 1 as a hard negative (no owner): it only joins image 0's softmax... and image 1's.
    pos = positive_mask(["a", "b", "c"], torch.eye(2), torch.tensor([0, -1, 1]),
                        text_attributes=torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
    assert pos.tolist() == [[True, False, False], [False, False, True]]
    loss = contrastive_loss(img, txt, torch.tensor(1.0), pos)
    i2t = _soft_ce_rows(logits, [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    t2i = _soft_ce_rows([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]])  # texts 0 and 2 only
    assert loss.item() == pytest.approx(0.5 * (i2t + t2i), rel=1e-6)


def test_loss_trains_a_tiny_model(tok):
    # A few steps on 4 distinct pairs must cut the loss: gradients reach both towers.
    torch.manual_seed(0)
    m = CLIP(CLIPConfig(vocab_size=tok.vocab_size, **TINY))
    images = -torch.ones(4, 3, 16, 16)
    for i in range(4):  # image i: a bright square in quadrant i
        images[i, :, 8 * (i // 2):8 * (i // 2) + 8, 8 * (i % 2):8 * (i % 2) + 8] = 1
    ids, mask = tok.encode(CAPTIONS[:4])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(20):
        loss = contrastive_loss(*m(images, ids, mask), positive_mask(CAPTIONS[:4]))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert m.text.token_embedding.weight.grad.abs().sum() > 0 and m.image.stem.weight.grad.abs().sum() > 0


def test_text_encoder_save_load_round_trip(tmp_path, model, tok):
    save_component(tmp_path / "clip", model, model.config, "clip")
    tok.save(tmp_path / "tokenizer.json")
    enc = TextEncoder.from_pretrained(tmp_path)
    assert not enc.clip.training and not any(p.requires_grad for p in enc.parameters())
    prompts = ["a smiling man with eyeglasses", ""]
    hidden, mask, pooled = enc.encode(prompts)
    assert hidden.shape == (2, 24, 32) and mask.dtype == torch.bool and pooled.shape == (2, 16)
    assert mask[1].sum() == 2  # the empty prompt: BOS EOS
    with torch.no_grad():
        ref_h, ref_p = model.encode_text(*tok.encode(prompts))
    assert torch.equal(hidden, ref_h) and torch.equal(pooled, ref_p)
    # The clip/ directory itself also works (tokenizer found beside it).
    assert torch.equal(TextEncoder.from_pretrained(tmp_path / "clip").encode(prompts)[2], pooled)
    # frozen stays frozen inside a module in train mode
    assert not torch.nn.Sequential(enc).train().__getitem__(0).clip.training
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    s = enc.score(images, prompts)
    sim = enc.similarity(images, prompts)
    assert s.shape == (2,) and sim.shape == (2, 2)
    assert torch.allclose(s, 100 * sim.diagonal().clamp(min=0), atol=1e-4)


def test_token_embeddings_beside_the_final_states(model, tok):
    prompts = ["a smiling man with eyeglasses", "a smiling man with a hat"]
    plain, mask, pooled = TextEncoder(tok, model).encode(prompts)
    enc = TextEncoder(tok, model, token_embeddings=True)
    assert enc.hidden_dim == 2 * 32
    hidden, mask2, pooled2 = enc.encode(prompts)
    assert hidden.shape == (2, 24, 64) and torch.equal(mask, mask2) and torch.equal(pooled, pooled2)
    assert torch.equal(hidden[..., :32], plain)  # the final states, unchanged
    words = hidden[..., 32:]  # the token embeddings, layer-normed: mean 0, std 1 per token
    assert torch.allclose(words.mean(-1), torch.zeros(2, 24), atol=1e-5)
    assert torch.allclose(words.std(-1, unbiased=False), torch.ones(2, 24), atol=0.02)  # eps
    ids, _ = tok.encode(prompts)
    same = ids[0] == ids[1]  # (24,) positions holding the same token in both prompts
    assert same.any() and (~same).any()
    assert torch.equal(words[0, same], words[1, same])  # a word's embedding ignores its context
    assert not torch.allclose(words[0, ~same], words[1, ~same])


def test_text_encoder_rejects_mismatched_tokenizer(tmp_path, model):
    other = CaptionTokenizer.train(CAPTIONS, vocab_size=300, context_length=12)
    with pytest.raises(ValueError, match="context_length=12"):
        TextEncoder(other, model)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        save_component(tmp_path / "clip", model, model.config, "clip")
        TextEncoder.from_pretrained(tmp_path)


def test_text_encoder_does_not_import_data_or_train():
    import subprocess
    import sys

    code = ("import sys, t2i.text_encoder; "
            "bad = [m for m in sys.modules if m.startswith(('t2i.data', 't2i.train'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Training through the CLI on the session's SynthFaces set (tiny preset, CPU, seconds)


def _train(synth_dir, out, *extra) -> int:
    from t2i.cli import main

    # --no-preload: the shared fixture directory stays read-only (no pixel cache written in it).
    return main(["train", "clip", "--data", str(synth_dir), "--out", str(out), "--preset", "tiny",
                 "--no-preload", "--eval-images", "12", "--zeroshot-images", "8", *extra])


def test_train_three_steps_via_cli(synth_dir, tmp_path):
    import json

    out = tmp_path / "model"
    assert _train(synth_dir, out, "--steps", "3") == 0
    assert (out / "tokenizer.json").is_file()
    # The words of the training captions are recorded beside the tokenizer, with counts.
    from t2i.data.celeba import FaceDataset
    from t2i.vocabulary import Vocabulary, count_words

    vocab = Vocabulary.load(out)
    captions = [c for caps in FaceDataset(synth_dir, split="train").captions for c in caps]
    assert vocab.counts == dict(count_words(captions)) and vocab.captions == len(captions)
    assert {"woman", "photo"} <= set(vocab.counts)
    enc = TextEncoder.from_pretrained(out)
    hidden, mask, pooled = enc.encode(["a smiling woman wearing a hat", ""])
    assert hidden.shape[:2] == mask.shape == (2, enc.context_length) and pooled.shape == (2, enc.embed_dim)
    metrics = json.loads((out / "clip" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["loss_type"] == "multipos" and metrics["val_images"] > 0
    for kind in ("retrieval_complete", "retrieval_dataset"):
        r = metrics[kind]
        assert 0 <= r["t2i_r1"] <= r["t2i_r5"] <= 1 and 0 <= r["i2t_r1"] <= r["i2t_r5"] <= 1
    assert metrics["zeroshot"] and 0 <= metrics["zeroshot_mean_accuracy"] <= 1
    records = [json.loads(x) for x in (out / "logs" / "clip" / "train_log.jsonl").read_text().splitlines()]
    assert {"loss", "logit_scale", "batch_i2t_acc", "positives_per_row", "hard_negative_acc",
            "attribute_bce"} <= set(records[-1])
    assert records[-1]["texts_per_row"] == 16  # 8 captions + 8 hard negatives (tiny preset)


def test_infonce_option_and_bad_loss(synth_dir, tmp_path, capsys):
    import json

    out = tmp_path / "m"
    assert _train(synth_dir, out, "--steps", "1", "--loss", "infonce") == 0
    assert json.loads((out / "clip" / "metrics.json").read_text())["loss_type"] == "infonce"
    with pytest.raises(SystemExit):  # argparse rejects an unknown loss by name
        _train(synth_dir, tmp_path / "x", "--loss", "nope")
    assert "nope" in capsys.readouterr().err


def test_resume_continues_at_the_right_step(synth_dir, tmp_path):
    import json
    import shutil

    from safetensors.torch import load_file

    args = ("--steps", "4", "--ckpt-every", "2")
    straight = tmp_path / "straight"
    assert _train(synth_dir, straight, *args) == 0
    # A second run starting from the straight run's step-2 checkpoint; its tokenizer is
    # retrained from scratch, which must give the same ids (deterministic BPE).
    resumed = tmp_path / "resumed"
    ckpt = straight / "checkpoints" / "clip" / "step_0000002"
    shutil.copytree(ckpt, resumed / "checkpoints" / "clip" / ckpt.name)
    assert _train(synth_dir, resumed, *args) == 0
    assert (resumed / "tokenizer.json").read_text() == (straight / "tokenizer.json").read_text()
    assert json.loads((resumed / "clip" / "metrics.json").read_text())["resumed_from"] == 2
    a = load_file(straight / "clip" / "model.safetensors")
    b = load_file(resumed / "clip" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_clip_on_latents_trains_after_the_latent_cache(synth_dir, tmp_path, capsys):
    import json

    from t2i.cli import main

    latent_tower = ["--set", "clip.model.image_input=latents", "--set", "clip.model.image_size=8"]
    # Alone, it names what it lacks.
    assert _train(synth_dir, tmp_path / "alone", "--steps", "1", *latent_tower) != 0
    assert "this CLIP reads VAE latents" in capsys.readouterr().err
    # In `t2i train all`, the latent cache is written before CLIP, which trains on it.
    out = tmp_path / "model"
    assert main(["train", "all", "--data", str(synth_dir), "--out", str(out), "--preset", "tiny",
                 "--skip", "unet", "judge", "eval", *latent_tower, "--set", "vae.model.latent_channels=3"]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert list(index["stages"]) == ["vae", "encode", "clip"]
    metrics = json.loads((out / "clip" / "metrics.json").read_text())
    assert metrics["steps"] == 20 and 0 <= metrics["zeroshot_mean_accuracy"] <= 1  # scored through the VAE
    enc = TextEncoder.from_pretrained(out)
    assert enc.clip.config.image_input == "latents" and enc.clip.config.latent_channels == 3  # the VAE's
    assert enc.image_features(torch.rand(3, 3, 32, 32) * 2 - 1).shape == (3, enc.embed_dim)


def test_attribute_prompt_pairs_differ_only_in_that_attribute():
    import numpy as np

    from t2i.attributes import ATTRIBUTE_INDEX, NUM_ATTRIBUTES
    from t2i.data.caption_edits import attribute_prompt_pair
    from t2i.data.captions import VOCAB, caption_mentions
    from t2i.data.synthfaces import RENDERED_ATTRIBUTES

    attrs = np.zeros(NUM_ATTRIBUTES, dtype=np.float32)
    for a in ("Male", "Young", "Smiling", "Black_Hair", "No_Beard"):
        attrs[ATTRIBUTE_INDEX[a]] = 1
    for a in RENDERED_ATTRIBUTES:
        p_on, p_off = attribute_prompt_pair(attrs, a, RENDERED_ATTRIBUTES)
        m_on, m_off = caption_mentions(p_on), caption_mentions(p_off)
        assert m_on.get(a) is True, (a, p_on)  # No_Beard's "on" is said: "clean-shaven"
        assert m_off.get(a, False) is False, (a, p_off)
        # Denied explicitly exactly where training captions would deny it: never hair words
        # ("no black hair" occurs in no training caption), always e.g. glasses or a hat.
        if VOCAB[a].kind == "hair":
            assert a not in m_off and " no " not in p_off, (a, p_off)
        elif a in ("Eyeglasses", "Wearing_Hat", "Mustache", "No_Beard", "Smiling"):
            assert a in m_off, (a, p_off)
        assert ({k: v for k, v in m_on.items() if k != a}
                == {k: v for k, v in m_off.items() if k != a}), (a, p_on, p_off)
    on, off = attribute_prompt_pair(attrs, "Eyeglasses", RENDERED_ATTRIBUTES)
    assert on == "a photo of a young man with black hair and a smile, wearing glasses"
    assert off == "a photo of a young man with black hair and a smile, without glasses"


@pytest.mark.slow
def test_two_processes_gather_the_global_batch(synth_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo): features are gathered, so the loss sees the
    global batch (2 x 8 images, 2 x 16 texts with the hard negatives)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    out = tmp_path / "ddp"
    cmd = [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", "2", str(bin_dir / "t2i"),
           "train", "clip", "--data", str(synth_dir), "--out", str(out), "--preset", "tiny",
           "--no-preload", "--steps", "3", "--eval-images", "8", "--zeroshot-images", "8"]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    metrics = json.loads((out / "clip" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_batch"] == 16
    last = json.loads((out / "logs" / "clip" / "train_log.jsonl").read_text().splitlines()[-1])
    # Each image's softmax runs over all 32 texts of the global batch.
    assert last["texts_per_row"] == 32 and math.isfinite(last["loss"])
