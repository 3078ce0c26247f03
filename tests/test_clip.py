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


def test_logit_scale_is_clamped_at_100(tok):
    m = CLIP(CLIPConfig(vocab_size=tok.vocab_size, **TINY))
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    assert m.scale().item() == pytest.approx(100.0)


def test_padding_does_not_change_a_prompts_outputs(model, tok):
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


def test_loss_trains_a_tiny_model(tok):
    # A few steps on 4 distinct pairs must cut the loss: gradients reach both towers.
    torch.manual_seed(0)
    m = CLIP(CLIPConfig(vocab_size=tok.vocab_size, **TINY))
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    ids, mask = tok.encode(CAPTIONS[:4])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
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
