"""A small fixed set of (image, caption) pairs for fine-tuning (StyleDrop's reference + feedback images).

Stored as one .npz (`images` uint8 [N, S, S, 3], `captions` [N] str); examples are drawn with
replacement and augmented, so a single image fills any number of batches (StyleDrop trains
1000 steps of batch 8 on one image).
"""
from __future__ import annotations

import os

import numpy as np

from stylejax.config import ConfigError

AUGMENTS = ("flip", "shift")


def save_image_captions(path: str, images: np.ndarray, captions: list[str]) -> str:
  """Writes the set atomically (a killed run never leaves half a file)."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 [N, S, S, 3]; got {images.dtype} {images.shape}.")
  if len(captions) != len(images) or not len(images):
    raise ValueError(f"need one caption per image and at least one image; got {len(images)} images, "
                     f"{len(captions)} captions.")
  tmp = path + ".tmp.npz"
  np.savez(tmp, images=images, captions=np.asarray([str(c) for c in captions]))
  os.replace(tmp, path)
  return path


def load_image_captions(path: str) -> tuple[np.ndarray, list[str]]:
  if not os.path.exists(path):
    raise ValueError(f"image-caption set {path!r} not found.")
  with np.load(path) as f:
    return f["images"], [str(c) for c in f["captions"]]


def augment(image: np.ndarray, rng: np.random.Generator, kinds: tuple[str, ...]) -> np.ndarray:
  """Horizontal flip (p=0.5) and a random shift of up to S/16 px with edge padding (no wrap-around,
  which would cut shapes in two and invent new content at the border)."""
  if "flip" in kinds and rng.random() < 0.5:
    image = image[:, ::-1]
  if "shift" in kinds:
    m = max(1, image.shape[0] // 16)
    dy, dx = (int(v) for v in rng.integers(-m, m + 1, size=2))
    padded = np.pad(image, ((m, m), (m, m), (0, 0)), mode="edge")
    image = padded[m + dy:m + dy + image.shape[0], m + dx:m + dx + image.shape[1]]
  return np.ascontiguousarray(image)


class ImageCaptionSource:
  """Random-access examples {"image" [S, S, 3] uint8, "caption" str} drawn from a saved set."""

  def __init__(self, path: str, num_examples: int, seed: int = 0, augment: str = "flip,shift",
               image_size: int | None = None):
    self.images, self.captions = load_image_captions(path)
    if image_size is not None and self.images.shape[1:3] != (image_size, image_size):
      raise ConfigError(f"{path} holds {self.images.shape[1]}x{self.images.shape[2]} images; the model "
                        f"takes {image_size}x{image_size}.")
    self.kinds = tuple(k for k in str(augment).replace(" ", "").split(",") if k)
    unknown = set(self.kinds) - set(AUGMENTS)
    if unknown:
      raise ConfigError(f"unknown augmentations {sorted(unknown)}; use a comma list of {AUGMENTS} or ''.")
    self.num_examples, self.seed = int(num_examples), int(seed)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, int(index)])
    j = int(rng.integers(len(self.images)))
    return {"image": augment(self.images[j], rng, self.kinds), "caption": np.str_(self.captions[j])}
