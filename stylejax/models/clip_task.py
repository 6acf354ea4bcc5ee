"""The tiny ShapeStyle CLIP: its shipped caption tokenizer and its contrastive training task.

  stylejax train --config configs/shapestyle.py:clip --workdir /tmp/clip

Tokenizer: a byte-level BPE (`stylejax.data.text_tokenizer`) trained on every in-world caption
(216 contents x {plain + 28 named styles}); `build_tokenizer(path)` rebuilds it deterministically and
`default_tokenizer()` loads the copy shipped in `stylejax/assets/shapestyle_bpe.json`. Held-out style
descriptors ("sketchy hatched on sand stripes") were never seen: they encode as sub-word and byte
pieces, and `max_len` leaves room for the longest of them. Rebuild the asset with
`python -m stylejax.models.clip_task`.

Task: `CLIPTask` trains `stylejax.models.clip.CLIPModel` with CLIP's symmetric InfoNCE on ShapeStyle
(image, caption) pairs. Named-style images get the styled caption ("two red stars in neon outline
style") or, with probability `content_caption_fraction`, the content caption alone, so content-only
prompts (CLIP-T, Muse conditioning) land near every rendering of that content; plain images always
get the content caption. Identical captions in a batch are all positives (`multi_positive_clip_loss`).
With `hard_negatives` = N each image also brings its own caption with the shape word swapped for N
other shapes (NegCLIP, Yuksekgonul et al. 2023): in-batch negatives almost always differ in color or
count already, so without them the towers barely learn shape. With `random_style_fraction` > 0 that
share of images is drawn in fresh held-out-family styles (as the scorers train) and captioned by
content alone, so shape is learned across styles CLIP has no words for.
"""
from __future__ import annotations

import functools
import importlib.resources
import math
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stylejax.config import ConfigError
from stylejax.data import shapestyle as ss
from stylejax.data import text_tokenizer
from stylejax.models import clip
from stylejax.train.task import Task

TOKENIZER_FILE = "shapestyle_bpe.json"
TOKENIZER_VOCAB_SIZE = 512
# In-world captions take <= 11 tokens with <|startoftext|>/<|endoftext|>; held-out captions up to 42
# (their unseen words split into byte pieces; measured over 3000 held-out styles), so nothing is cut.
TOKENIZER_MAX_LEN = 48
_VOCAB_MULTIPLE = 128  # model vocab rows are padded so a 'tensor' mesh axis divides them
_SPLIT_IDS = {"train": 0, "test": 1}
_TRAIN_STYLE_STREAM = 0xC11_0000  # `ss.training_style` stream of CLIP's fresh training styles


# ----------------------------------------------------------------------------------------------
# Tokenizer


def tokenizer_corpus() -> list[str]:
  """Every in-world caption, in a fixed order: each content plain, then in each named style."""
  styles = (ss.PLAIN_STYLE,) + ss.NAMED_STYLES
  return [ss.caption_for(c, s) for s in styles for c in ss.all_contents()]


def build_tokenizer(path: str | None = None) -> text_tokenizer.TextTokenizer:
  """Trains the ShapeStyle BPE (deterministic: same corpus, same merges); writes it to `path` if given."""
  return text_tokenizer.train_bpe(tokenizer_corpus(), TOKENIZER_VOCAB_SIZE, path, max_len=TOKENIZER_MAX_LEN)


def default_tokenizer_path() -> str:
  """Path of the shipped tokenizer file (package data)."""
  return str(importlib.resources.files("stylejax") / "assets" / TOKENIZER_FILE)


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> text_tokenizer.TextTokenizer:
  """The shipped ShapeStyle tokenizer (vocab 512, max_len 48, ids <|startoftext|>=0 <|endoftext|>=1 <|pad|>=2)."""
  path = default_tokenizer_path()
  if not os.path.exists(path):
    raise FileNotFoundError(f"the shipped tokenizer {path} is missing; rebuild it with "
                            f"`python -m stylejax.models.clip_task` or reinstall stylejax.")
  return text_tokenizer.load_tokenizer(path)


def get_tokenizer(path: str = "") -> text_tokenizer.TextTokenizer:
  """`path` ("" = the shipped ShapeStyle tokenizer) -> TextTokenizer."""
  return text_tokenizer.load_tokenizer(path) if path else default_tokenizer()


# ----------------------------------------------------------------------------------------------
# Model config


def clip_config(model: Mapping[str, Any], tokenizer: text_tokenizer.TextTokenizer) -> clip.CLIPConfig:
  """A config's `model` section (hidden, layers, heads, image_size, patch_size, projection_dim,
  hidden_act, conv_stem) + the tokenizer (vocab, max_len, EOS id) -> CLIPConfig."""
  vocab = -(-tokenizer.vocab_size // _VOCAB_MULTIPLE) * _VOCAB_MULTIPLE
  return clip.CLIPConfig.tiny(
      vocab_size=vocab, hidden=int(model["hidden"]), layers=int(model["layers"]), heads=int(model["heads"]),
      image_size=int(model["image_size"]), patch_size=int(model["patch_size"]),
      projection_dim=int(model["projection_dim"]), max_len=tokenizer.max_len, eos_token_id=tokenizer.eos_id,
      hidden_act=str(model.get("hidden_act", "quick_gelu")), conv_stem=tuple(model.get("conv_stem", ())))


def to_unit_range(images: jax.Array) -> jax.Array:
  """[B, H, W, 3] uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1]."""
  x = jnp.asarray(images).astype(jnp.float32)
  return x / 255.0 if jnp.issubdtype(images.dtype, jnp.integer) else x


# ----------------------------------------------------------------------------------------------
# Loss


def _soft_ce(logits: jax.Array, positives: jax.Array) -> jax.Array:
  """Mean cross-entropy of each row against the uniform distribution over its positives."""
  targets = positives.astype(jnp.float32)
  targets = targets / targets.sum(-1, keepdims=True)
  return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits, -1), -1))


def multi_positive_clip_loss(logits_per_text: jax.Array, same: jax.Array,
                             negative_logits_per_image: jax.Array | None = None,
                             same_negative: jax.Array | None = None) -> jax.Array:
  """CLIP's symmetric InfoNCE where pair (i, j) is positive whenever captions i and j are identical.

  logits_per_text [B, B] (text i vs image j); same [B, B] bool, symmetric with a true diagonal. The
  target of each row is uniform over its positives; with `same` = identity this is `clip.clip_loss`.
  NegCLIP: `negative_logits_per_image` [B, M] (image i vs extra hard-negative captions) join the
  image->text softmax only; `same_negative` [B, M] marks any that equal image i's caption.
  """
  per_image, positives = logits_per_text.T, same
  if negative_logits_per_image is not None:
    per_image = jnp.concatenate([per_image, negative_logits_per_image], axis=1)
    positives = jnp.concatenate([same, same_negative], axis=1)
  return 0.5 * (_soft_ce(logits_per_text, same) + _soft_ce(per_image, positives))


# ----------------------------------------------------------------------------------------------
# Data


class CaptionedShapeStyleSource:
  """Example i: {"image": uint8 [S, S, 3], "ids": int32 [L], "mask": int32 [L] (1 = token)}.

  Images come from `ShapeStyleSource` (deterministic in (seed, split, index)); the caption choice
  (styled or content-only, see module docstring) is too. Captions are tokenized once and cached.
  """

  def __init__(self, tokenizer: text_tokenizer.TextTokenizer, split: str = "train", image_size: int = 64,
               seed: int = 0, num_examples: int = 100_000, styles: Any = "named+plain",
               plain_fraction: float | None = None, content_caption_fraction: float = 0.25,
               hard_negatives: int = 0, random_style_fraction: float = 0.0):
    if not 0.0 <= content_caption_fraction <= 1.0:  # ShapeStyleSource checks random_style_fraction
      raise ConfigError(f"content_caption_fraction={content_caption_fraction}; use a value in [0, 1].")
    self.images = ss.ShapeStyleSource(split=split, image_size=image_size, seed=seed, styles=styles,
                                      num_examples=num_examples, plain_fraction=plain_fraction,
                                      random_style_fraction=random_style_fraction,
                                      random_style_stream=_TRAIN_STYLE_STREAM)
    self.tokenizer, self.seed, self.split_id = tokenizer, int(seed), _SPLIT_IDS[split]
    self.content_caption_fraction = float(content_caption_fraction)
    self.hard_negatives = int(hard_negatives)  # True -> 1
    if not 0 <= self.hard_negatives < len(ss.SHAPES):
      raise ConfigError(f"hard_negatives={hard_negatives}; use 0 to {len(ss.SHAPES) - 1} shape-swapped captions.")
    self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

  def __len__(self) -> int:
    return len(self.images)

  def caption(self, example: Mapping[str, Any], index: int) -> str:
    """The caption example `index` trains with."""
    rng = np.random.default_rng([self.seed, self.split_id, int(index), 0xC11])
    if int(example["style_id"]) >= ss.HELDOUT_ID_OFFSET:  # a fresh style has no in-world words
      return str(example["content_caption"])
    if str(example["style_descriptor"]) and rng.random() < self.content_caption_fraction:
      return str(example["content_caption"])
    return str(example["caption"])

  def negative_captions(self, example: Mapping[str, Any], caption: str, index: int) -> list[str]:
    """`caption` with the example's shape swapped for `hard_negatives` distinct other shapes (same color,
    count and style)."""
    rng = np.random.default_rng([self.seed, self.split_id, int(index), 0x4E6])
    shape = int(example["shape"])
    content = ss.Content(shape, int(example["color"]), int(example["count"]))
    others = (shape + 1 + rng.permutation(len(ss.SHAPES) - 1)[:self.hard_negatives]) % len(ss.SHAPES)
    return [caption.replace(content.caption, ss.Content(int(o), content.color, content.count).caption, 1)
            for o in others]

  def encode(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
    if caption not in self._cache:
      ids, mask = self.tokenizer.encode([caption])
      self._cache[caption] = (ids[0], mask[0])
    return self._cache[caption]

  def example(self, index: int) -> dict[str, Any]:
    """`ShapeStyleSource` example `index`: with probability `random_style_fraction` a random content in a
    fresh held-out-family style (on CLIP's own `ss.training_style` stream; never an eval held-out style)."""
    return self.images[index]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    ex = self.example(index)
    caption = self.caption(ex, int(ex["index"]))
    ids, mask = self.encode(caption)
    out = {"image": ex["image"], "ids": ids, "mask": mask}
    if self.hard_negatives:  # [N, L]
      negatives = [self.encode(c) for c in self.negative_captions(ex, caption, int(ex["index"]))]
      out["negative_ids"], out["negative_mask"] = (np.stack(x) for x in zip(*negatives))
    return out


# ----------------------------------------------------------------------------------------------
# Task


class CLIPTask(Task):
  """Trains the tiny CLIP contrastively on `CaptionedShapeStyleSource`.

  config.model: hidden, layers, heads, image_size (CLIP input; images are resized to it), patch_size,
    projection_dim, hidden_act, max_logit_scale (CLIP clamps exp(t) at 100), tokenizer ("" = shipped).
  config.data: image_size, seed, num_examples, styles, plain_fraction (None = uniform over styles),
    content_caption_fraction, hard_negatives (NegCLIP: this many shape-swapped captions per image, 0 to
    len(SHAPES) - 1, each a negative for every image in the batch; True = 1; default 0),
    random_style_fraction (this share of images in fresh held-out-family styles, content captions;
    default 0).
  Logged: loss, retrieval_i2t_top1 / retrieval_t2i_top1 (in-batch top-1, a hit when the retrieved
  caption equals the true one), logit_scale.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.tokenizer = get_tokenizer(config.model.get("tokenizer", ""))
    self.clip_config = clip_config(config.model, self.tokenizer)
    self.model = clip.CLIPModel(self.clip_config, remat=bool(config.get("remat", False)),
                                dtype=jnp.dtype(config.get("compute_dtype", "float32")))

  def init(self, rng: jax.Array):
    return clip.init_params(self.model, rng)

  def loss(self, params, batch, rng):
    pixels = clip.preprocess_images(to_unit_range(batch["image"]), self.clip_config.vision.image_size)
    ids, mask = batch["ids"], batch["mask"]
    b, negatives = ids.shape[0], "negative_ids" in batch
    if negatives:  # one text-tower call over [captions; hard negatives [B * N, L]]
      ids = jnp.concatenate([ids, batch["negative_ids"].reshape(-1, ids.shape[1])])
      mask = jnp.concatenate([mask, batch["negative_mask"].reshape(-1, ids.shape[1])])

    def features(m: clip.CLIPModel):
      return m.get_text_features(ids, mask), m.get_image_features(pixels)

    txt, img = self.model.apply({"params": params}, method=features)
    txt, img = (x.astype(jnp.float32) for x in (txt, img))
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt, neg_txt = txt[:b], txt[b:]
    ids, neg_ids = ids[:b], ids[b:]
    # CLIP paper: learned temperature, exp(t) clipped at 100 (no gradient past the clip).
    max_t = math.log(float(self.config.model.get("max_logit_scale", 100.0)))
    scale = jnp.exp(jnp.minimum(params["logit_scale"].astype(jnp.float32), max_t))
    logits_per_text = scale * txt @ img.T
    same = jnp.all(ids[:, None, :] == ids[None, :, :], axis=-1)  # [B, B] identical captions
    if negatives:
      same_negative = jnp.all(ids[:, None, :] == neg_ids[None, :, :], axis=-1)  # [B, B * N]
      loss = multi_positive_clip_loss(logits_per_text, same, scale * img @ neg_txt.T, same_negative)
    else:
      loss = multi_positive_clip_loss(logits_per_text, same)
    hit = lambda logits: jnp.mean(jnp.take_along_axis(same, jnp.argmax(logits, -1)[:, None], -1))
    return loss, {"retrieval_i2t_top1": hit(logits_per_text.T), "retrieval_t2i_top1": hit(logits_per_text),
                  "logit_scale": scale}

  def source(self, split: str = "train") -> CaptionedShapeStyleSource:
    d = self.config.data
    size = int(d.image_size)
    return CaptionedShapeStyleSource(
        self.tokenizer, split=split, image_size=size, seed=int(d.seed), num_examples=int(d.num_examples),
        styles=d.get("styles", "named+plain"), plain_fraction=d.get("plain_fraction", None),
        content_caption_fraction=float(d.get("content_caption_fraction", 0.25)),
        hard_negatives=int(d.get("hard_negatives", 0)),
        random_style_fraction=float(d.get("random_style_fraction", 0.0)))

  def flops_per_example(self) -> float:
    """Training FLOPs of one (image, caption) pair: 3x the forward matmuls of both towers."""
    c = self.clip_config

    def tower(cfg, tokens):
      d, i = cfg.hidden_size, cfg.intermediate_size
      per_layer = 2 * tokens * (4 * d * d + 2 * d * i) + 4 * tokens * tokens * d  # projections+MLP, QK^T+AV
      return cfg.num_hidden_layers * per_layer + 2 * d * c.projection_dim

    v = c.vision
    patches, size, channels, stem = v.num_patches, v.image_size, v.num_channels, 0.0
    for width in v.conv_stem:  # stride-2 3x3 convs
      size //= 2
      stem += 2 * size * size * 9 * channels * width
      channels = width
    kernel = v.patch_size // 2 ** len(v.conv_stem)
    forward = (tower(c.text, c.text.max_position_embeddings) + tower(v, patches + 1)
               + stem + 2 * patches * kernel ** 2 * channels * v.hidden_size
               + 4 * self.config.batch_size * c.projection_dim)  # this pair's row and column of the logits
    return 3.0 * forward


def clip_from_workdir(workdir: str) -> tuple[clip.CLIPModel, Any, text_tokenizer.TextTokenizer]:
  """(model, unboxed numpy params, tokenizer) from the latest checkpoint of a `:clip` training run."""
  from stylejax.train import trainer
  config, params = trainer.load_params(workdir)
  task = CLIPTask(config)
  return task.model, trainer.params_to_numpy(nn.unbox(params)), task.tokenizer


if __name__ == "__main__":
  out = build_tokenizer(default_tokenizer_path())
  print(f"wrote {default_tokenizer_path()} (vocab {out.vocab_size}, max_len {out.max_len})")
