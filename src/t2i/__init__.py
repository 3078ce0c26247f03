"""t2i: text-to-image from scratch (KL-VAE + CLIP + conditional latent-diffusion UNet)."""

__version__ = "0.3.0"  # the latest release in CHANGELOG.md; pyproject.toml reads it here
