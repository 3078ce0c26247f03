"""t2i: text-to-image from scratch (KL-VAE + CLIP + conditional latent-diffusion UNet)."""

__version__ = "0.1.0"
