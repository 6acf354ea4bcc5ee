"""ShapeStyle scorers: a style-invariant content classifier and a content-invariant style encoder.

They turn ShapeStyle's exact ground truth into the metrics of `stylejax.eval.metrics`:
  * `ContentClassifier`: image -> logits for shape / color / count. Trained on many styles, including
    a fresh random style per example (the held-out family, from a seed stream disjoint from the eval
    held-out styles), so it reads content whatever the style. Drives text_fidelity and content_leakage.
  * `StyleEncoder`: image -> L2-normalised style embedding, trained contrastively on style identity
    (a CSD analogue, Somepalli et al. 2024): two images of one style with different content are
    positives. Drives style_fidelity, style_consistency and style_diversity.

Both are small conv nets (fast on CPU at 32x32 and 64x64) that take images [B, H, W, 3], uint8 in
[0, 255] or float in [0, 1]. Trained scorers ship as one safetensors file (`save_scorers` /
`load_scorers`): '/'-joined parameter keys plus the module configs in the file's metadata.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stylejax import shipped
from stylejax.config import ConfigError
from stylejax.data import shapestyle as ss
from stylejax.train.task import Task

Dtype = Any
HEADS = {"shape": len(ss.SHAPES), "color": len(ss.COLORS), "count": ss.MAX_COUNT}
# Fresh random training styles get unique labels above every in-world id (held-out ids are 1000 + k).
RANDOM_STYLE_LABEL_OFFSET = 1_000_000
# `ss.training_style` stream of the scorers' fresh training styles.
_TRAIN_STYLE_SEED = 0x5C0_0000
_SPLIT_IDS = {"train": 0, "test": 1}
FORMAT = "stylejax-scorers-v1"


# ----------------------------------------------------------------------------------------------
# Modules


def _conv(features: int, strides: int, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.Conv:
  return nn.Conv(features, (3, 3), strides=(strides, strides), padding="SAME", dtype=dtype, param_dtype=param_dtype,
                 name=name,
                 kernel_init=nn.with_logical_partitioning(nn.initializers.he_normal(), (None, None, "conv_in", "conv_out")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))


def _norm(channels: int, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.GroupNorm:
  groups = next(g for g in range(min(8, channels), 0, -1) if channels % g == 0)
  return nn.GroupNorm(num_groups=groups, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def _dense(features: int, names: tuple[str | None, str | None], name: str, dtype: Dtype, param_dtype: Dtype) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (names[1],)))


def preprocess(images: jax.Array, dtype: Dtype = jnp.float32) -> jax.Array:
  """[B, H, W, 3] uint8 in [0, 255] or float in [0, 1] -> `dtype` in [-1, 1]."""
  x = images.astype(jnp.float32)
  if jnp.issubdtype(images.dtype, jnp.integer):
    x = x / 255.0
  return (x * 2.0 - 1.0).astype(dtype)


class ConvTrunk(nn.Module):
  """Images [B, H, W, 3] -> one feature map per stage: [B, H / 2^i, W / 2^i, widths[i]].

  A full-resolution stem (fine strokes, hatching and pixel grids are style and must survive), then
  per extra width a stride-2 conv and a residual conv, each GroupNorm + GELU (no batch statistics,
  so a Task's params are the whole state).
  """
  widths: Sequence[int] = (16, 32, 64, 128)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> list[jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    act = lambda x: nn.with_logical_constraint(nn.gelu(x), ("act_batch", None, None, "act_embed"))
    x = act(_norm(self.widths[0], "stem_norm", **kw)(_conv(self.widths[0], 1, "stem", **kw)(
        preprocess(images, self.dtype))))
    feats = [x]
    for i, w in enumerate(self.widths[1:]):
      x = act(_norm(w, f"down{i}_norm", **kw)(_conv(w, 2, f"down{i}", **kw)(x)))
      x = x + act(_norm(w, f"res{i}_norm", **kw)(_conv(w, 1, f"res{i}", **kw)(x)))
      feats.append(x)
    return feats


class ContentClassifier(nn.Module):
  """Images [B, H, W, 3] -> ({"shape": [B, 9], "color": [B, 8], "count": [B, 3]} float32 logits, {}).

  Count class c means c + 1 shapes. Mean and max pooling of the last map: max finds a shape anywhere,
  mean carries how much of the image it covers (shapes shrink as their count grows).
  """
  widths: Sequence[int] = (16, 32, 64, 128)
  hidden: int = 128
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = ConvTrunk(tuple(self.widths), name="trunk", **kw)(images)[-1]
    h = jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=-1)
    h = nn.gelu(_dense(self.hidden, ("embed", "mlp"), "hidden", **kw)(h))
    logits = {k: _dense(n, ("mlp", None), f"{k}_head", **kw)(h).astype(jnp.float32) for k, n in HEADS.items()}
    return logits, {}


class StyleEncoder(nn.Module):
  """Images [B, H, W, 3] -> (unit-norm style embeddings [B, embed_dim] float32, {}).

  Style is texture and palette statistics, so each stage contributes its per-channel mean and std
  over space (the AdaIN / Gram-style summary); an MLP projects them to the embedding.
  """
  widths: Sequence[int] = (16, 32, 64, 128)
  hidden: int = 256
  embed_dim: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    stats = []
    for f in ConvTrunk(tuple(self.widths), name="trunk", **kw)(images):
      f = f.astype(jnp.float32)
      mean = f.mean(axis=(1, 2))
      stats += [mean, jnp.sqrt(jnp.maximum((f * f).mean(axis=(1, 2)) - mean * mean, 0.0) + 1e-6)]
    h = jnp.concatenate(stats, axis=-1).astype(self.dtype)
    h = nn.gelu(_dense(self.hidden, ("embed", "mlp"), "hidden", **kw)(h))
    e = _dense(self.embed_dim, ("mlp", None), "proj", **kw)(h).astype(jnp.float32)
    return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-6), {}


def content_classifier(model: Mapping[str, Any], dtype: Dtype = jnp.float32) -> ContentClassifier:
  """Builds the classifier from a config's `model` section (widths, hidden)."""
  return ContentClassifier(widths=tuple(model["widths"]), hidden=int(model["hidden"]), dtype=dtype)


def style_encoder(model: Mapping[str, Any], dtype: Dtype = jnp.float32) -> StyleEncoder:
  """Builds the encoder from a config's `model` section (widths, hidden, embed_dim)."""
  return StyleEncoder(widths=tuple(model["widths"]), hidden=int(model["hidden"]), embed_dim=int(model["embed_dim"]),
                      dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Losses


def content_loss(logits: Mapping[str, jax.Array], shape: jax.Array, color: jax.Array,
                 count: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Sum over heads of mean cross-entropy. Labels [B] int; `count` in ShapeStyle's 1..3."""
  labels = {"shape": shape, "color": color, "count": count - 1}
  loss, aux, right = 0.0, {}, []
  for k, y in labels.items():
    lp = jax.nn.log_softmax(logits[k])
    loss = loss - jnp.mean(jnp.take_along_axis(lp, y[:, None].astype(jnp.int32), axis=-1))
    ok = jnp.argmax(logits[k], -1) == y
    aux[f"acc_{k}"] = jnp.mean(ok)
    right.append(ok)
  aux["acc_all"] = jnp.mean(jnp.logical_and(jnp.logical_and(right[0], right[1]), right[2]))
  return loss, aux


def supervised_contrastive_loss(emb_a: jax.Array, emb_b: jax.Array, labels: jax.Array,
                                temperature: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SupCon (Khosla et al. 2020, eq. 2 "L_out") over the 2B views of B pairs.

  emb_a, emb_b: [B, D] unit-norm embeddings of two images of style `labels` [B]. Every other view
  with the same label is a positive (the pair partner always is; repeats of a named style in the
  batch too); all other views are negatives. With all-distinct labels this is NT-Xent / InfoNCE.
  """
  z = jnp.concatenate([emb_a, emb_b], 0).astype(jnp.float32)
  y = jnp.concatenate([labels, labels], 0)
  n = z.shape[0]
  eye = jnp.eye(n, dtype=bool)
  sims = z @ z.T
  logits = jnp.where(eye, -jnp.inf, sims / temperature)
  log_prob = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)
  pos = (y[:, None] == y[None, :]) & ~eye
  per_anchor = -jnp.sum(jnp.where(pos, log_prob, 0.0), axis=1) / jnp.maximum(pos.sum(1), 1)
  loss = jnp.mean(per_anchor)
  # Retrieval: is each view's nearest other view of its own style?
  nearest = jnp.argmax(jnp.where(eye, -jnp.inf, sims), axis=1)
  aux = {"retrieval_top1": jnp.mean(y[nearest] == y),
         "pos_cos": jnp.sum(jnp.where(pos, sims, 0.0)) / jnp.maximum(pos.sum(), 1),
         "neg_cos": jnp.sum(jnp.where(~pos & ~eye, sims, 0.0)) / jnp.maximum((~pos & ~eye).sum(), 1)}
  return loss, aux


# ----------------------------------------------------------------------------------------------
# Data


def _split_id(split: str) -> int:
  if split not in _SPLIT_IDS:
    raise ValueError(f"split={split!r}; use one of {tuple(_SPLIT_IDS)}.")
  return _SPLIT_IDS[split]


class _TrainingStyles:
  """Draws a style per example: a fresh random style with prob `random_fraction`, else named or plain.

  Fresh styles come from `ss.training_style` (never an eval held-out style), one per (seed, split,
  index): unlimited styles of the held-out family.
  """

  def __init__(self, split: str, seed: int, random_fraction: float, include_plain: bool):
    if not 0.0 <= random_fraction <= 1.0:
      raise ConfigError(f"random_style_fraction={random_fraction}; use a value in [0, 1].")
    self.random_fraction = random_fraction
    self.pool = list(ss.NAMED_STYLES) + ([ss.PLAIN_STYLE] if include_plain else [])
    self.seed, self.split_id = int(seed), _split_id(split)

  def __call__(self, rng: np.random.Generator, index: int) -> tuple[ss.Style, int]:
    if rng.random() < self.random_fraction or not self.pool:
      return ss.training_style(index, _TRAIN_STYLE_SEED, self.seed, self.split_id), RANDOM_STYLE_LABEL_OFFSET + index
    style = self.pool[int(rng.integers(len(self.pool)))]
    return style, style.id


class _ScorerSource:
  """Random-access ShapeStyle examples in training styles (see `_TrainingStyles`)."""

  def __init__(self, split: str = "train", image_size: int = 64, seed: int = 0, num_examples: int = 100_000,
               random_style_fraction: float = 0.5, include_plain: bool = True):
    self.split_id, self.image_size, self.seed, self.num_examples = _split_id(split), image_size, seed, num_examples
    self.styles = _TrainingStyles(split, seed, random_style_fraction, include_plain)

  def __len__(self) -> int:
    return self.num_examples


class ContentSource(_ScorerSource):
  """Example i: {"image": [S, S, 3] uint8, "shape", "color", "count" (1..3), "style_id": int32}.

  Content uniform over ShapeStyle's 216 classes; style from `_TrainingStyles`. Deterministic in
  (seed, split, index); train and test use disjoint streams and disjoint random styles.
  """

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index) % self.num_examples
    rng = np.random.default_rng([self.seed, self.split_id, index, 0xC0])
    content = ss.random_content(rng)
    style, label = self.styles(rng, index)
    image, _ = ss.render(content, style, self.image_size, rng)
    return {"image": image, "shape": np.int32(content.shape), "color": np.int32(content.color),
            "count": np.int32(content.count), "style_id": np.int32(label)}


class StylePairSource(_ScorerSource):
  """Example i: {"image_a", "image_b": [S, S, 3] uint8, "style_id": int32}: one style, two contents.

  The two contents differ in shape AND color (count is free) and get independent layouts, so the
  only thing the pair shares is the style: a positive pair for the contrastive loss.
  """

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index) % self.num_examples
    rng = np.random.default_rng([self.seed, self.split_id, index, 0x57])
    a = ss.random_content(rng)
    shape = (a.shape + int(rng.integers(1, len(ss.SHAPES)))) % len(ss.SHAPES)
    color = (a.color + int(rng.integers(1, len(ss.COLORS)))) % len(ss.COLORS)
    b = ss.Content(shape, color, int(rng.integers(1, ss.MAX_COUNT + 1)))
    style, label = self.styles(rng, index)
    image_a, _ = ss.render(a, style, self.image_size, rng)
    image_b, _ = ss.render(b, style, self.image_size, rng)
    return {"image_a": image_a, "image_b": image_b, "style_id": np.int32(label)}


# ----------------------------------------------------------------------------------------------
# Trainer tasks


def _data_kwargs(config) -> dict[str, Any]:
  d = config.data
  return dict(image_size=d.image_size, seed=d.seed, num_examples=d.num_examples,
              random_style_fraction=d.random_style_fraction, include_plain=d.include_plain)


class ContentClassifierTask(Task):
  """Trains `ContentClassifier` with `content_loss` on `ContentSource`."""

  def __init__(self, config):
    super().__init__(config)
    self.model = content_classifier(config.model, jnp.dtype(config.compute_dtype))

  def init(self, rng: jax.Array):
    s = self.config.data.image_size
    return self.model.init(rng, jnp.zeros((1, s, s, 3), jnp.uint8))["params"]

  def loss(self, params, batch, rng):
    logits, _ = self.model.apply({"params": params}, batch["image"])
    return content_loss(logits, batch["shape"], batch["color"], batch["count"])

  def source(self, split: str = "train") -> ContentSource:
    return ContentSource(split, **_data_kwargs(self.config))


class StyleEncoderTask(Task):
  """Trains `StyleEncoder` with `supervised_contrastive_loss` on `StylePairSource`."""

  def __init__(self, config):
    super().__init__(config)
    self.model = style_encoder(config.model, jnp.dtype(config.compute_dtype))

  def init(self, rng: jax.Array):
    s = self.config.data.image_size
    return self.model.init(rng, jnp.zeros((1, s, s, 3), jnp.uint8))["params"]

  def loss(self, params, batch, rng):
    images = jnp.concatenate([batch["image_a"], batch["image_b"]], 0)
    emb, _ = self.model.apply({"params": params}, images)
    a, b = jnp.split(emb, 2, axis=0)
    return supervised_contrastive_loss(a, b, batch["style_id"], self.config.model.temperature)

  def source(self, split: str = "train") -> StylePairSource:
    return StylePairSource(split, **_data_kwargs(self.config))


# ----------------------------------------------------------------------------------------------
# Shipping: safetensors with '/'-joined keys


flatten_params, unflatten_params = shipped.flatten_params, shipped.unflatten_params  # shared safetensors layout


@dataclasses.dataclass
class Scorers:
  """Trained scorers: model configs ({widths, hidden[, embed_dim]}) and unboxed params.

  `image_size`: the size they were trained at; other sizes are resized to it before scoring.
  """
  content_config: dict[str, Any] | None = None
  content_params: Any = None
  style_config: dict[str, Any] | None = None
  style_params: Any = None
  image_size: int = 64

  def __post_init__(self):
    self._fns = {}

  @property
  def content_model(self) -> ContentClassifier:
    if self.content_params is None:
      raise ValueError("these scorers have no content classifier; train configs/shapestyle.py:content first.")
    return content_classifier(self.content_config)

  @property
  def style_model(self) -> StyleEncoder:
    if self.style_params is None:
      raise ValueError("these scorers have no style encoder; train configs/shapestyle.py:style first.")
    return style_encoder(self.style_config)

  def _run(self, which: str, images: Any, batch_size: int) -> Any:
    if which not in self._fns:
      model = self.content_model if which == "content" else self.style_model
      self._fns[which] = jax.jit(lambda p, x: model.apply({"params": p}, _resize(x, self.image_size))[0])
    params = self.content_params if which == "content" else self.style_params
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [N, H, W, 3]; got shape {images.shape}.")
    outs = [self._fns[which](params, images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs], 0), *outs)

  def content_logits(self, images: Any, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Images [N, H, W, 3] -> {"shape": [N, 9], "color": [N, 8], "count": [N, 3]} logits."""
    return self._run("content", images, batch_size)

  def classify(self, images: Any, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Images [N, H, W, 3] -> predicted {"shape", "color", "count"} [N] int (count in 1..3)."""
    pred = {k: np.argmax(v, -1).astype(np.int32) for k, v in self.content_logits(images, batch_size).items()}
    pred["count"] = pred["count"] + 1
    return pred

  def style_embed(self, images: Any, batch_size: int = 256) -> np.ndarray:
    """Images [N, H, W, 3] -> unit-norm style embeddings [N, embed_dim]."""
    return self._run("style", images, batch_size)


def _resize(images: jax.Array, size: int) -> jax.Array:
  if images.shape[1:3] == (size, size):
    return images
  x = images.astype(jnp.float32) / (255.0 if jnp.issubdtype(images.dtype, jnp.integer) else 1.0)
  return jnp.clip(jax.image.resize(x, (x.shape[0], size, size, 3), "linear", antialias=True), 0.0, 1.0)


def save_scorers(path: str, scorers: Scorers) -> None:
  """Writes one safetensors file: keys "content/<param path>" and "style/<param path>"; configs in metadata."""
  from safetensors.numpy import save_file
  tensors, meta = {}, {"format": FORMAT, "image_size": str(int(scorers.image_size))}
  for name, cfg, params in (("content", scorers.content_config, scorers.content_params),
                            ("style", scorers.style_config, scorers.style_params)):
    if params is None:
      continue
    tensors.update({f"{name}/{k}": v for k, v in flatten_params(params).items()})
    meta[f"{name}_config"] = json.dumps({k: list(v) if isinstance(v, (tuple, list)) else v for k, v in cfg.items()})
  if not tensors:
    raise ValueError("nothing to save: the scorers have neither content nor style params.")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  save_file(tensors, path, metadata=meta)


def load_scorers(path: str) -> Scorers:
  """Reads a `save_scorers` file; raises a ValueError naming the problem if it is not one."""
  from safetensors import safe_open
  if not os.path.exists(path):
    raise ValueError(f"scorers file {path!r} not found; train the scorers or pass the shipped file.")
  try:
    with safe_open(path, framework="np") as f:
      meta = f.metadata() or {}
      flat = {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:  # safetensors raises its own error types for corrupt headers
    raise ValueError(f"{path!r} is not a readable safetensors file ({e}).") from None
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path!r} is not a stylejax scorers file (format {meta.get('format')!r}, want {FORMAT!r}).")
  out = Scorers(image_size=int(meta["image_size"]))
  for name in ("content", "style"):
    sub = {k[len(name) + 1:]: v for k, v in flat.items() if k.startswith(name + "/")}
    if sub:
      setattr(out, f"{name}_config", json.loads(meta[f"{name}_config"]))
      setattr(out, f"{name}_params", unflatten_params(sub))
  return out


def scorers_from_workdirs(content_workdir: str | None = "shapestyle:content",
                          style_workdir: str | None = "shapestyle:style") -> Scorers:
  """Scorers from `stylejax train --config configs/shapestyle.py:{content,style}` workdirs (default: the
  shipped ones)."""
  from stylejax.train import trainer
  out, sizes = Scorers(), set()
  for name, workdir in (("content", content_workdir), ("style", style_workdir)):
    if workdir is None:
      continue
    config, params = trainer.load_params(workdir)
    setattr(out, f"{name}_config", {k: (list(v) if isinstance(v, (tuple, list)) else v)
                                    for k, v in config.model.to_dict().items()})
    setattr(out, f"{name}_params", trainer.params_to_numpy(params))
    sizes.add(int(config.data.image_size))
  if len(sizes) > 1:
    raise ValueError(f"content and style scorers were trained at different image sizes {sorted(sizes)}.")
  out.image_size = sizes.pop() if sizes else 64
  return out
