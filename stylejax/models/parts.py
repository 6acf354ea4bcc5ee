"""Frozen model parts other models build on: the VQ image tokenizer and the CLIP text encoder.

Each wraps a part's task and params (see `stylejax.train.trainer.load_part`) behind a jitted,
batched call that takes and returns numpy: trainers use them host-side in `Task.prepare_batch`
(images -> token ids, captions -> text embeddings) and samplers use them to decode ids to pixels
and to embed prompts.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stylejax.config import ConfigError
from stylejax.models.vqgan import VQGAN, VQGANTask


def _part_spec(spec: Any) -> dict[str, str]:
  d = spec.to_dict() if isinstance(spec, ml_collections.ConfigDict) else dict(spec)
  return {"workdir": d.get("workdir", "") or "", "config": d.get("config", "") or ""}


def in_chunks(fn: Callable[[np.ndarray], Any], x: np.ndarray, batch_size: int) -> np.ndarray:
  """fn over x [N, ...] in slices of at most `batch_size` rows, concatenated: a jitted part's activations
  grow with its batch (a 64x64 decoder on 12k best-of-N candidates at once needs > 24 GB)."""
  if len(x) <= batch_size:
    return np.asarray(fn(x))
  return np.concatenate([np.asarray(fn(x[i:i + batch_size])) for i in range(0, len(x), batch_size)], 0)


class ImageTokenizer:
  """VQ tokenizer: images [B, H, W, 3] (uint8 or float in [0, 1]) <-> flat ids [B, h*w]."""

  def __init__(self, task: VQGANTask, params: Any):
    if not isinstance(task, VQGANTask):
      raise ConfigError(f"the tokenizer part must be a VQGANTask run, got {type(task).__name__}.")
    self.task, self.params = task, VQGANTask.vqgan_params(params)
    self.model: VQGAN = task.model
    self.image_size = int(task.config.data.image_size)
    self.grid = self.image_size // self.model.downsample_factor
    self.codebook_size = int(self.model.codebook_size)
    self._encode = jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=VQGAN.encode)[0])
    self._decode = jax.jit(lambda p, ids: self.model.apply({"params": p}, ids, method=VQGAN.decode_ids))

  @property
  def seq_len(self) -> int:
    return self.grid * self.grid

  def encode(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """images [B, S, S, 3] -> ids [B, L] int32 (L = (S / f)^2, row-major), `batch_size` images per call."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
      images = images.astype(np.float32) / 255.0
    if images.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f"the tokenizer takes images [B, {self.image_size}, {self.image_size}, 3], "
                       f"got {images.shape}.")
    ids = in_chunks(lambda x: self._encode(self.params, jnp.asarray(x, jnp.float32)), images, batch_size)
    return np.asarray(ids, np.int32).reshape(images.shape[0], -1)

  def decode(self, ids: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """ids [B, L] -> images [B, S, S, 3] uint8, `batch_size` images per call."""
    ids = np.asarray(ids, np.int32).reshape(-1, self.grid, self.grid)
    images = in_chunks(lambda x: self._decode(self.params, jnp.asarray(x)), ids, batch_size)
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


class TextEncoder:
  """CLIP text tower: prompts -> (hidden states [B, T, D] float32, mask [B, T] bool)."""

  def __init__(self, task: Any, params: Any):
    from stylejax.models.clip import CLIPModel  # lazy: only text-conditioned models need CLIP
    if not isinstance(getattr(task, "model", None), CLIPModel):
      raise ConfigError(f"the text encoder part must be a CLIP run, got {type(task).__name__}.")
    self.task, self.params, self.tokenizer = task, params, task.tokenizer
    self.model: CLIPModel = task.model
    self.dim = int(self.model.config.text.hidden_size)
    self.max_len = int(self.tokenizer.max_len)
    self._embed = jax.jit(lambda p, ids, mask: self.model.apply(
        {"params": p}, ids, mask, method=CLIPModel.encode_text_hidden))

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """B strings -> (ids [B, T] int32, mask [B, T] int32)."""
    return self.tokenizer.encode(list(texts))

  def embed_ids(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [B, T] and mask [B, T] -> (hidden [B, T, D] float32, mask [B, T] bool)."""
    hidden = self._embed(self.params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    return np.asarray(hidden, np.float32), np.asarray(mask).astype(bool)

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    return self.embed_ids(*self.tokenize(texts))


_CACHE: dict[tuple, Any] = {}


def _cached(kind: type, spec: Any) -> Any:
  """One instance (params + compiled calls) per part and process: a trainer, its pipelines and every
  StyleDrop round share the frozen parts instead of reloading and recompiling them. A trained
  workdir's key includes its checkpoint list, so a part trained further is loaded again."""
  import os
  from stylejax.train.trainer import load_part  # lazy: avoids a models <-> train import cycle
  spec = _part_spec(spec)
  ckpts = os.path.join(spec["workdir"], "checkpoints")
  stamp = tuple(sorted(os.listdir(ckpts))) if spec["workdir"] and os.path.isdir(ckpts) else ()
  key = (kind.__name__, spec["workdir"], spec["config"], stamp)
  if key not in _CACHE:
    _CACHE[key] = kind(*load_part(**spec))
  return _CACHE[key]


def load_image_tokenizer(spec: Any) -> ImageTokenizer:
  """From a config's part spec {workdir, config} (see `trainer.load_part`)."""
  return _cached(ImageTokenizer, spec)


def load_text_encoder(spec: Any) -> TextEncoder:
  return _cached(TextEncoder, spec)


class ClipEmbedder:
  """CLIP image and text embeddings for scoring (CLIP-T, CLIP-I, StyleDrop's CLIP feedback).

  images uint8/float [N, H, W, 3] -> unit [N, P]; texts -> unit [N, P] (`clip.preprocess_images`
  resizes to the model's input size, so any image size works).
  """

  def __init__(self, task: Any, params: Any):
    from stylejax.models import clip
    from stylejax.models.clip_task import to_unit_range
    if not isinstance(getattr(task, "model", None), clip.CLIPModel):
      raise ConfigError(f"the CLIP part must be a CLIP run, got {type(task).__name__}.")
    self.model, self.params, self.tokenizer = task.model, params, task.tokenizer
    size = self.model.config.vision.image_size
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    self._images = jax.jit(lambda p, x: unit(self.model.apply(
        {"params": p}, clip.preprocess_images(to_unit_range(x), size), method=clip.CLIPModel.get_image_features)))
    self._texts = jax.jit(lambda p, ids, m: unit(self.model.apply(
        {"params": p}, ids, m, method=clip.CLIPModel.get_text_features)))
    self.logit_scale = float(np.exp(np.asarray(params["logit_scale"])))

  def embed_images(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return in_chunks(lambda x: self._images(self.params, x), np.asarray(images), batch_size)

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    ids, mask = self.tokenizer.encode(list(texts))
    return np.asarray(self._texts(self.params, jnp.asarray(ids), jnp.asarray(mask)))


def load_clip_embedder(spec: Any = "shapestyle:clip") -> ClipEmbedder:
  """From a part spec {workdir, config}, a workdir, or a shipped name (default the tiny CLIP)."""
  return _cached(ClipEmbedder, {"workdir": spec} if isinstance(spec, str) else spec)
