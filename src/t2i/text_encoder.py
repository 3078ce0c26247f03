"""The frozen text encoder the denoiser conditions on, plus CLIP-score helpers.

`TextEncoder.from_pretrained(model_dir)` loads `model_dir/tokenizer.json` and `model_dir/clip/`
(safetensors + JSON only), and `model_dir/vae/` too when CLIP's image tower reads latents.
`encode(prompts)` returns what the UNet's cross-attention needs: per-token hidden states,
their padding mask and the pooled (EOS) embedding. The empty string
`""` encodes as `<bos> <eos>` and is the unconditional input for classifier-free guidance.

Import rule: this module is used by the pipeline, so it must not import `t2i.data` or
`t2i.train`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from t2i.checkpoint import CONFIG_NAME, inside, load_component, resolve_component
from t2i.models.clip import CLIP, CLIPConfig
from t2i.models.vae import VAE, VAEConfig
from t2i.tokenizer import CaptionTokenizer

TOKENIZER_NAME = "tokenizer.json"


def find_tokenizer(model_dir: str | Path) -> Path:
    """`model_dir/tokenizer.json`; for a clip/ component dir passed directly (`runs/demo/clip`),
    the tokenizer of the model dir holding it (`runs/demo/tokenizer.json`).

    The file must resolve inside the dir it belongs to: a symlink pointing out of it is refused,
    and the parent is only searched when `model_dir` is that model dir's `clip/` component."""
    model_dir = Path(model_dir)
    candidates = [(model_dir, model_dir / TOKENIZER_NAME)]
    real = model_dir.resolve()
    if real.name == "clip" and (real / CONFIG_NAME).is_file():
        candidates.append((real.parent, real.parent / TOKENIZER_NAME))
    for root, candidate in candidates:
        if candidate.exists() or candidate.is_symlink():
            path = inside(root, candidate)
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"no {TOKENIZER_NAME} in {model_dir} (or, for a clip/ dir, in the model dir holding it); "
        "train it with `t2i train clip`"
    )


class TextEncoder(nn.Module):
    """Tokenizer + CLIP. Frozen (no grads, eval mode) unless `frozen=False`.

    `token_embeddings=True` gives the UNet CLIP's input token embeddings beside its final token
    states (along the width): set it as the UNet to condition on says
    (`UNetConfig.text_token_embeddings`)."""

    def __init__(self, tokenizer: CaptionTokenizer, clip: CLIP, frozen: bool = True, token_embeddings: bool = False):
        super().__init__()
        cfg = clip.config
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the CLIP config "
                             f"has vocab_size={cfg.vocab_size}")
        if tokenizer.context_length != cfg.context_length:
            raise ValueError(f"tokenizer context_length={tokenizer.context_length} differs from "
                             f"the CLIP config's context_length={cfg.context_length}")
        self.tokenizer = tokenizer
        self.clip = clip
        self.frozen = frozen
        # Cross-attention context: CLIP's final token states, and optionally beside them its
        # input token embeddings, layer-normed. Why: contrastive training keeps only what the
        # image tower learned to see, and squeezes the rest out of the final states (a linear
        # probe on them finds "necklace" in a caption at 0.65 balanced accuracy, on the embeddings
        # at 1.00; docs/clip.md). The UNet needs every word.
        self._token_embeddings = bool(token_embeddings)
        if frozen:
            self.clip.requires_grad_(False)
            self.clip.eval()

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, device: str | torch.device = "cpu", frozen: bool = True,
        token_embeddings: bool = False,
    ) -> TextEncoder:
        clip_dir = resolve_component(model_dir, "clip")
        tokenizer = CaptionTokenizer.from_file(find_tokenizer(model_dir))
        clip, _ = load_component(clip_dir, CLIP, CLIPConfig, "clip", device=device)
        if clip.config.image_input == "latents":  # it scores pixels through the model's VAE
            vae, _ = load_component(resolve_component(clip_dir.parent, "vae"), VAE, VAEConfig, "vae", device=device)
            clip.attach_vae(vae)
        return cls(tokenizer, clip, frozen=frozen, token_embeddings=token_embeddings)

    def train(self, mode: bool = True) -> TextEncoder:
        # A frozen encoder stays in eval mode even inside a module put in train mode.
        super().train(mode and not self.frozen)
        return self

    @property
    def token_embeddings(self) -> bool:
        """Whether `encode`'s hidden states carry the token embeddings beside the final states
        (fixed at construction: the UNet's width depends on it)."""
        return self._token_embeddings

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def hidden_dim(self) -> int:
        """Width of the per-token hidden states (the UNet's cross-attention context_dim)."""
        return self.clip.config.text_width * (2 if self.token_embeddings else 1)

    @property
    def embed_dim(self) -> int:
        """Width of the pooled embedding (the joint CLIP space)."""
        return self.clip.config.embed_dim

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    def tokenize(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer.encode(prompts)
        return ids.to(self.device), mask.to(self.device)

    def encode(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """prompts -> (hidden (B, L, D) float32, mask (B, L) bool, pooled (B, E)).

        D = `hidden_dim`. L is the tokenizer's context length; hidden states at padded positions
        are not meaningful and must be masked by the consumer (the UNet's cross-attention does)."""
        ids, mask = self.tokenize(prompts)
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            hidden, pooled = self.clip.encode_text(ids, mask)  # (B, L, W), (B, E)
            if self.token_embeddings:
                words = self.clip.text.token_embedding(ids).float()  # (B, L, W)
                hidden = torch.cat([hidden.float(), F.layer_norm(words, words.shape[-1:])], dim=-1)
        return hidden.float(), mask, pooled.float()

    # -- CLIP score ---------------------------------------------------------------------------

    @torch.no_grad()
    def text_features(self, prompts: str | list[str]) -> torch.Tensor:
        """prompts -> L2-normalised joint-space embeddings (B, E)."""
        ids, mask = self.tokenize(prompts)
        return F.normalize(self.clip.encode_text(ids, mask)[1].float(), dim=-1)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1], any size -> L2-normalised embeddings (B, E)."""
        feats = [
            self.clip.encode_image(images[i : i + batch_size].to(self.device).float()).float()
            for i in range(0, images.shape[0], batch_size)
        ]
        return F.normalize(torch.cat(feats), dim=-1)

    @torch.no_grad()
    def similarity(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Cosine similarity of every image with every prompt: (B_img, B_txt)."""
        return self.image_features(images) @ self.text_features(prompts).t()

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """CLIP score of each (image, prompt) pair, (B,): 100 * max(cos, 0) (Hessel et al.
        2021, "CLIPScore", with torchmetrics' scaling). Only comparable between runs that use
        the same CLIP."""
        if images.shape[0] != len(prompts):
            raise ValueError(f"score needs one prompt per image: {images.shape[0]} images, "
                             f"{len(prompts)} prompts")
        cos = (self.image_features(images) * self.text_features(prompts)).sum(dim=-1)
        return 100.0 * cos.clamp(min=0)
