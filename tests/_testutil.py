"""Helpers shared by several test files (pytest puts tests/ on sys.path)."""
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def random_params(model: nn.Module, *args, **kw):
  """Random params from numpy at eval_shape's shapes (jitting init compiles threefry: seconds on CPU).

  Norm scales get 1 + noise, so a misplaced norm axis would show.
  """
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args, **kw)["params"])
  rng = np.random.default_rng(0)

  def fill(path, s):
    x = rng.normal(size=s.shape).astype(np.float32) * 0.3
    return jnp.asarray(x + 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else x)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def subprocess_env(devices: int = 8) -> dict[str, str]:
  """The environment for a `python -m stylejax` subprocess: CPU, `devices` simulated devices, and the suite's
  other XLA flags (conftest.py), so its compiles share the suite's compilation cache."""
  count = "--xla_force_host_platform_device_count"
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(count)]
  return dict(os.environ, XLA_FLAGS=" ".join([f"{count}={devices}", *flags]), JAX_PLATFORMS="cpu")


def launch_module(name: str):
  """The script launch/<name>.py, imported as a module (launch/ is not a package)."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch", name + ".py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class BrightnessClip:
  """A stand-in CLIP: an image's score for any text is its mean brightness (unit 2-vectors, text = [1, 0])."""

  def __init__(self):
    self.texts = []

  def embed_images(self, images):
    b = np.asarray(images, np.float64).mean(axis=(1, 2, 3)) / 255.0
    return np.stack([b, np.sqrt(1.0 - b ** 2)], -1)

  def embed_texts(self, texts):
    self.texts.append(list(texts))
    return np.tile([[1.0, 0.0]], (len(texts), 1))
