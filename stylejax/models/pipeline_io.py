"""What every image pipeline (Muse, AR, StyleDrop) accepts from a user: prompts and reference images.

One place for the checks, so a notebook call and the CLI get the same one-line errors from every pipeline.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

MAX_PROMPT_CHARS = 1000


class PipelineError(ValueError):
  """Bad input to an image pipeline; the message says what to fix (the CLI prints it as one line)."""


def check_prompts(prompts: str | int | Sequence[str | int]) -> list[str | int]:
  """A prompt or a list of them -> a non-empty list. Text prompts must be non-empty and under
  MAX_PROMPT_CHARS; ints pass through (class ids of class-conditional runs). A bare string is one prompt,
  not a sequence of characters."""
  if isinstance(prompts, (str, int, np.integer)):
    prompts = [prompts]
  out = list(prompts)
  for p in out:
    if isinstance(p, str) and not p.strip():
      raise PipelineError("the prompt is empty; describe what to draw, e.g. 'two red stars'.")
    if isinstance(p, str) and len(p) > MAX_PROMPT_CHARS:
      raise PipelineError(f"the prompt has {len(p)} characters; keep it under {MAX_PROMPT_CHARS}.")
  if not out:
    raise PipelineError("no prompts given; pass a prompt or a list of them, e.g. ['two red stars'].")
  return out


def as_images(x: Any, what: str, count: int | None = None) -> np.ndarray:
  """One image [H, W, 3] or a batch [N, H, W, 3], uint8 or float in [0, 1], PIL images (any mode), or one uint8
  grayscale [H, W] or RGBA [H, W, 4] array -> uint8 [N, H, W, 3], converted as image files are (transparency
  composited on white); with `count`, one image is repeated to `count` rows and N must be 1 or `count`."""
  from PIL import Image
  from stylejax.data.images import to_rgb
  if hasattr(x, "convert") or (isinstance(x, (list, tuple)) and x and all(hasattr(i, "convert") for i in x)):
    x = [np.asarray(to_rgb(i)) for i in (x if isinstance(x, (list, tuple)) else [x])]
  a = np.asarray(x)
  if a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 4)):
    a = np.asarray(to_rgb(Image.fromarray(a)))
  if a.ndim == 3:
    a = a[None]
  if a.ndim != 4 or a.shape[-1] != 3 or min(a.shape[1:3]) < 1:
    raise PipelineError(f"the {what} must be an RGB image [H, W, 3] (or a batch [N, H, W, 3]); got shape {a.shape}.")
  if a.dtype != np.uint8:
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)) or a.min() < -1e-3 or a.max() > 1 + 1e-3:
      raise PipelineError(f"the {what} is float but not in [0, 1]; pass uint8 [0, 255] or float [0, 1] pixels.")
    a = np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
  if count is not None and len(a) not in (1, count):
    raise PipelineError(f"got {len(a)} {what}s for {count} rows; pass one, or one per row.")
  return a if count is None or len(a) == count else np.repeat(a, count, axis=0)
