"""edgeinv: teach Stable Diffusion a new concept with forward passes only."""

__version__ = "0.1.0"
