"""Image grids for samples and reports."""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def grid(images: np.ndarray, cols: int | None = None, pad: int = 2, fill: int = 255) -> np.ndarray:
  """images [N, H, W, 3] uint8 -> one [rows*(H+pad)+pad, cols*(W+pad)+pad, 3] uint8 grid, row-major."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"grid takes uint8 images [N, H, W, 3], got {images.dtype} {images.shape}.")
  n, h, w, _ = images.shape
  cols = cols or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), fill, np.uint8)
  for i, img in enumerate(images):
    r, c = divmod(i, cols)
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
  return out


def save_png(image: np.ndarray, path: str) -> None:
  """Writes a uint8 [H, W, 3] image; the file appears whole or not at all."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
  os.replace(tmp, path)
