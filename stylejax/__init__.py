"""stylejax: style-aligned image generation (StyleDrop, StyleAR, CoTyle, InstantStyle) in JAX/Flax."""

__version__ = "0.1.0"
