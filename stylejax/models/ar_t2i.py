"""Text-to-image autoregressive generation on VQ tokens (LlamaGen-style), the base StyleAR tunes.

One row of the sequence (REFERENCE §7 LlamaGen, §4 StyleAR):
  prefix_embeds  CLIP text hidden states [T, Dt] of the caption (frozen `config.text_encoder`
                 part) through the decoder's Dense 'prefix_proj'
  tokens         [STYLE] x Q          StyleAR style-token placeholders (`style.num_tokens`; 0 = none);
                                      their embeddings are overwritten by the style tokens
                 [STRUCT, s_1..s_L]   optional structure prefix (`structure.enabled`): the ShapeStyle
                                      shape mask drawn as an image and VQ-tokenized
                 [BOI, x_1..x_{L-1}]  the image ids (row-major, frozen `config.tokenizer` part)
Vocabulary: codebook ids [0, K), then BOI = K, STYLE = K + 1, STRUCT = K + 2 (rounded up to
`model.vocab_multiple`). The loss is next-token cross-entropy on the L image positions over the K
image logits only (the sampler masks every other id, so training sees the same distribution).

CFG. Condition dropout (`cond.dropout`, 10%) trains the unconditional context, one of (`cond.uncond`):
  "image_only"  (StyleAR): text, style and structure positions become padding; the row sees
                [BOI, x...] alone.
  "null_prefix" (LlamaGen): the text becomes a learned null embedding [T, Dt] (param 'null_text');
                style and structure positions are dropped.
At sampling the unconditional stream is that same context and logits combine as
`uncond + s (cond - uncond)` (`stylejax.sample.autoregressive`). Style runs may also drop the text alone
(`cond.text_dropout`: text and structure dropped, style tokens kept) and guide with two scales over that
style-only context (`sample.style_scale`): `l_img + s_style (l_style - l_img) + s (l_cond - l_style)`, so the
prompt and the style are amplified separately (s_style = s is the one-stream CFG above).

Params: {"lm": DecoderLM params, "null_text": [T, Dt] (null_prefix), "resampler": (style tokens)}.
Style tokens = resampler(CLIP vision penultimate hidden states of the style image) (+ optional
content subtraction and Gaussian noise, see `ARImageTask.style_tokens`); `stylejax.methods.stylear`
builds the StyleAR recipe on this task.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stylejax.config import ConfigError
from stylejax.models import ar
from stylejax.models.pipeline_io import PipelineError, as_images, check_prompts
from stylejax.nn import rope as rope_lib
from stylejax.nn.resampler import PerceiverResampler
from stylejax.sample import autoregressive as ar_sample, best_of as best_of_lib
from stylejax.train import losses
from stylejax.train.task import Task

BOI, STYLE, STRUCT = 0, 1, 2  # special ids = codebook_size + these
NUM_SPECIAL = 3
UNCOND_KINDS = ("image_only", "null_prefix")
# config.model keys that describe the task, not DecoderLM fields
_TASK_MODEL_KEYS = ("codebook_size", "seq_len", "text_dim", "text_len", "vocab_multiple")
# kinds of context positions (static per config)
_K_BOI, _K_STYLE, _K_STRUCT = 0, 1, 2
SAMPLE_DEFAULTS = dict(
    cfg_scale=4.0,  # StyleAR inference default (LlamaGen demo also 4.0)
    temperature=1.0, top_k=0, top_p=1.0,
    noise=0.3,  # StyleAR sigma_infer on the style tokens
    content_subtraction=False, subtraction_scale=0.8, subtraction_blend=0.8,  # REFERENCE §4
    # None: StyleAR's CFG, one image-only unconditional stream. A number: two-scale guidance over the
    # style-only context (text and structure dropped, style tokens kept; train it with cond.text_dropout),
    # l_img + style_scale (l_style - l_img) + cfg_scale (l_cond - l_style); style_scale = cfg_scale is StyleAR's.
    style_scale=None)


def style_scale_of(value: Any) -> float | None:
  """sample.style_scale as a float, or None (off); a CLI override of the None default arrives as a string."""
  if value is None or str(value).strip().lower() in ("", "none"):
    return None
  try:
    return float(value)
  except ValueError:
    raise PipelineError(f"style_scale={value!r} is not a number; give e.g. 2.0, or none for StyleAR's CFG.") from None


def _setting_number(key: str, value: Any) -> float:
  """A numeric sampling setting as a float, or one PipelineError naming it."""
  try:
    return float(value)
  except (TypeError, ValueError):
    raise PipelineError(f"{key}={value!r} is not a number; give e.g. {SAMPLE_DEFAULTS[key]!r}.") from None


def guidance_scales(cfg_scale: Any, style_scale: float | None) -> tuple[float, ...]:
  """The sampler's scales, one per unconditional stream of `guidance_contexts` (prompt first)."""
  return (float(cfg_scale),) + (() if style_scale is None else (float(style_scale),))


def guidance_contexts(style_scale: Any) -> list[tuple[bool, bool]]:
  """(drop, keep_style) of each sampling stream, most conditioned first: the prompt, then (two-scale
  guidance only) the style-only context, then the image-only one (`sequence_inputs`)."""
  return [(False, False)] + ([(True, True)] if style_scale is not None else []) + [(True, False)]


def mask_to_image(mask: Any) -> np.ndarray:
  """Shape masks [B, S, S] ({0, 1} or bool) -> [B, S, S, 3] uint8, white shapes on black: the
  structure image the VQ tokenizer reads."""
  m = (np.asarray(mask) > 0).astype(np.uint8) * 255
  return np.repeat(m[..., None], 3, axis=-1)


class CLIPVisionFeatures:
  """Frozen CLIP vision tower: images [B, H, W, 3] (uint8, or float in [0, 1]) -> hidden states
  [B, 1 + patches, D] of `layer` (-2 = penultimate, what StyleAR feeds its resampler)."""

  def __init__(self, text_encoder: Any, layer: int = -2):
    from stylejax.models import clip
    from stylejax.models.clip_task import to_unit_range
    model, self.params = text_encoder.model, text_encoder.params
    vision = model.config.vision
    self.dim, self.num_tokens = int(vision.hidden_size), int(vision.num_patches) + 1
    pixels = lambda x: clip.preprocess_images(to_unit_range(x), vision.image_size)
    self._fn = jax.jit(lambda p, x: model.apply({"params": p}, pixels(x), layer,
                                                method=clip.CLIPModel.encode_image_hidden))

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(self._fn(self.params, jnp.asarray(images)), np.float32)


def style_tokens(resampler: PerceiverResampler, params: Any, feats: jax.Array, content_feats: jax.Array | None = None,
                 rng: jax.Array | None = None, noise: Any = 0.0, subtraction_scale: Any = 0.8,
                 subtraction_blend: Any = 0.8) -> jax.Array:
  """StyleAR style tokens [B, Q, D] = resampler(features [B, N, Dv]) (params: the resampler's).

  content_feats [B, N, Dv] (optional; StyleAR's patch-level content subtraction, REFERENCE §4):
    t = (1 - blend) R(f_style) + blend R(f_style - scale f_content)   (reference: 0.2 / 0.8, 0.8).
  Then "style-enhanced tokens": t + noise * N(0, 1) (sigma 0.1 training, 0.3 inference). rng: one
  key, or [B] keys (row b's noise depends on its key only). No rng: no noise.
  """
  resample = lambda f: resampler.apply({"params": params}, f)
  t = resample(feats)
  if content_feats is not None:
    blend = jnp.asarray(subtraction_blend, t.dtype)
    t = (1 - blend) * t + blend * resample(feats - jnp.asarray(subtraction_scale, feats.dtype) * content_feats)
  if rng is not None:
    if rng.ndim == 0:
      eps = jax.random.normal(rng, t.shape, t.dtype)
    else:
      eps = jax.vmap(lambda k: jax.random.normal(k, t.shape[1:], t.dtype))(rng)
    t = t + jnp.asarray(noise, t.dtype) * eps
  return t


# One compiled program per resampler config, shared by every pipeline (e.g. the ablation variants).
_style_tokens_jit = jax.jit(style_tokens, static_argnums=0)

_PARTS: dict[tuple, Any] = {}


def _cached_part(kind: str, spec: Any, load) -> Any:
  """Frozen parts are immutable: tasks in one process share them (e.g. the ablation launcher)."""
  d = spec.to_dict() if isinstance(spec, ml_collections.ConfigDict) else dict(spec)
  key = (kind, d.get("workdir", "") or "", d.get("config", "") or "")
  if key not in _PARTS:
    _PARTS[key] = load(spec)
  return _PARTS[key]


class ARImageTask(Task):
  """Text-to-image AR training on ShapeStyle VQ tokens (see the module docstring).

  config.model: DecoderLM fields (hidden, layers, heads, kv_heads, head_dim, mlp_dim, rope_theta,
    lora_rank, lora_targets, ...) plus codebook_size, seq_len (image ids per example), text_dim,
    text_len (the text encoder's width and length), vocab_multiple.
  config.cond: uncond ("image_only" | "null_prefix"), dropout (CFG condition dropout rate), text_dropout
    (style runs: rate of rows that drop text and structure but keep the style tokens; 0 = off).
  config.style: num_tokens (Q; 0 = no style slots), feature_dim (CLIP vision width), feature_layer,
    noise (sigma_train), resampler {width, depth, heads, head_dim, ff_mult}.
  config.structure: enabled (shape-mask prefix image).
  config.data: name="shapestyle" (image_size, styles, plain_fraction, heldout_prompts, num_examples, seed).
  Parts: config.tokenizer, config.text_encoder, config.image_encoder ({workdir, config}; empty = the
  text encoder's CLIP).
  Host batches {"image", "caption_ids", "caption_mask"[, "style_image"][, "shape_mask"]} become
  {"ids" [B, L], "text_emb" [B, T, Dt], "text_mask" [B, T][, "style_feats" [B, N, Dv]][, "struct_ids" [B, L]]}.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    m = config.model
    self.codebook_size, self.seq_len = int(m.codebook_size), int(m.seq_len)
    self.text_len, self.text_dim = int(m.text_len), int(m.text_dim)
    style = config.get("style") or ml_collections.ConfigDict()
    self.num_style = int(style.get("num_tokens", 0))
    self.train_noise = float(style.get("noise", 0.0))
    self.feature_layer = int(style.get("feature_layer", -2))
    self.structure = bool((config.get("structure") or {}).get("enabled", False))
    cond = config.get("cond") or ml_collections.ConfigDict()
    self.uncond = str(cond.get("uncond", "image_only"))
    if self.uncond not in UNCOND_KINDS:
      raise ConfigError(f"cond.uncond={self.uncond!r}; use one of {UNCOND_KINDS}.")
    self.cond_dropout = float(cond.get("dropout", 0.1))
    self.text_dropout = float(cond.get("text_dropout", 0.0))
    multiple = int(m.get("vocab_multiple", 8))
    vocab = -(-(self.codebook_size + NUM_SPECIAL) // multiple) * multiple
    fields = {k: v for k, v in m.items() if k not in _TASK_MODEL_KEYS}
    if fields.get("rope") == "2d":  # LlamaGen's 2D RoPE: image ids at their (row, col), the context at (0, 0)
      side = int(round(self.seq_len ** 0.5))
      if side * side != self.seq_len:
        raise ConfigError(f"model.rope='2d' needs a square token grid; seq_len={self.seq_len} is not a square.")
      fields["grid"] = (side, side)
    self.lm = ar.decoder_from_config(fields, vocab_size=vocab, text_dim=self.text_dim,
                                     max_len=self.text_len + self.context_len + self.seq_len,
                                     scan_layers=bool(config.get("scan_layers", False)),
                                     remat=bool(config.get("remat", False)),
                                     dtype=jnp.dtype(config.get("compute_dtype", "float32")))
    self.resampler = None
    if self.num_style:
      r = style.resampler
      self.feature_dim = int(style.feature_dim)
      self.resampler = PerceiverResampler(width=int(r.width), depth=int(r.depth), heads=int(r.heads),
                                          head_dim=int(r.head_dim), num_queries=self.num_style,
                                          out_dim=self.lm.hidden, ff_mult=int(r.get("ff_mult", 4)),
                                          dtype=self.lm.dtype)
    kinds = [_K_STYLE] * self.num_style + ([_K_STRUCT] * (1 + self.seq_len) if self.structure else []) + [_K_BOI]
    self.context_kinds = np.asarray(kinds, np.int32)  # [C]

  # ------------------------------------------------------------------------------------- parts
  @property
  def image_tokenizer(self):
    """The frozen VQ tokenizer part (loaded on first use)."""
    from stylejax.models.parts import load_image_tokenizer
    tok = _cached_part("tokenizer", self.config.tokenizer, load_image_tokenizer)
    if (tok.seq_len, tok.codebook_size) != (self.seq_len, self.codebook_size):
      raise ConfigError(f"the tokenizer gives {tok.seq_len} ids from {tok.codebook_size} codes; set "
                        f"model.seq_len={tok.seq_len} and model.codebook_size={tok.codebook_size}.")
    return tok

  @property
  def text_encoder(self):
    """The frozen CLIP text tower part (loaded on first use)."""
    from stylejax.models.parts import load_text_encoder
    text = _cached_part("text", self.config.text_encoder, load_text_encoder)
    if (text.dim, text.max_len) != (self.text_dim, self.text_len):
      raise ConfigError(f"the text encoder gives [T={text.max_len}, D={text.dim}] embeddings; set "
                        f"model.text_len={text.max_len} and model.text_dim={text.dim}.")
    return text

  @property
  def image_features(self) -> CLIPVisionFeatures:
    """The frozen CLIP vision tower for style features (`config.image_encoder`, default the text
    encoder's CLIP)."""
    from stylejax.models.parts import load_text_encoder
    spec = self.config.get("image_encoder") or {}
    if not (spec.get("workdir") or spec.get("config")):
      spec = self.config.text_encoder
    clip_part = _cached_part("text", spec, load_text_encoder)
    feats = _cached_part(f"vision{self.feature_layer}", spec,
                         lambda _: CLIPVisionFeatures(clip_part, self.feature_layer))
    if feats.dim != self.feature_dim:
      raise ConfigError(f"the image encoder gives {feats.dim}-wide features; set style.feature_dim={feats.dim}.")
    return feats

  @property
  def clip_embedder(self):
    """CLIP image/text embeddings of the text encoder's CLIP (for CLIP-T / CLIP-I)."""
    from stylejax.models.parts import ClipEmbedder
    text = self.text_encoder
    return _cached_part("clip_embedder", self.config.text_encoder, lambda _: ClipEmbedder(text.task, text.params))

  # ------------------------------------------------------------------------------------- model
  @property
  def context_len(self) -> int:
    """Token positions before the first image id: style slots, structure prefix, BOI."""
    return self.num_style + (1 + self.seq_len if self.structure else 0) + 1

  def image_vocab_mask(self) -> np.ndarray:
    """[V] bool: the ids the sampler may emit (the codebook)."""
    return np.arange(self.lm.vocab_size) < self.codebook_size

  def teacher_positions(self, batch: int) -> jax.Array | None:
    """RoPE positions of a teacher-forced row (text, context, L - 1 image ids): None for 1d (counted from
    the attention mask, as the sampler does); [B, T, 2] for 2d, the sampler's: (0, 0) before the image,
    image id j at its grid cell (j // W, j % W)."""
    if self.lm.rope != "2d":
      return None
    grid = rope_lib.grid_positions(self.text_len + self.context_len, self.lm.grid, self.seq_len - 1)
    return jnp.broadcast_to(jnp.asarray(grid), (batch,) + grid.shape)

  def init(self, rng: jax.Array):
    lm_rng, null_rng, res_rng = jax.random.split(rng, 3)
    length = self.context_len + self.seq_len - 1
    tokens = jnp.zeros((1, length), jnp.int32)
    override = None
    if self.num_style:
      override = (jnp.zeros((1, length), bool), jnp.zeros((1, self.num_style, self.lm.hidden), jnp.float32))
    params = {"lm": self.lm.init(lm_rng, tokens, self.teacher_positions(1),
                                 prefix_embeds=jnp.zeros((1, self.text_len, self.text_dim)),
                                 input_embeds_override=override)["params"]}
    if self.uncond == "null_prefix":  # LlamaGen: randn / sqrt(width)
      null = jax.random.normal(null_rng, (self.text_len, self.text_dim)) * self.text_dim ** -0.5
      params["null_text"] = nn.Partitioned(null, (None, None))
    if self.num_style:
      params["resampler"] = self.resampler.init(res_rng, jnp.zeros((1, 2, self.feature_dim)))["params"]
    return params

  def style_tokens(self, params: Any, feats: jax.Array, content_feats: jax.Array | None = None,
                   rng: jax.Array | None = None, noise: Any = 0.0, subtraction_scale: Any = 0.8,
                   subtraction_blend: Any = 0.8) -> jax.Array:
    """Style tokens [B, Q, hidden] from style-image features [B, N, Dv]; see `style_tokens`."""
    return style_tokens(self.resampler, params["resampler"], feats, content_feats, rng, noise, subtraction_scale,
                        subtraction_blend)

  def sequence_inputs(self, params: Any, text_emb: Any, text_mask: Any, struct_ids: Any = None,
                      style_vectors: Any = None, drop: Any = None, image_ids: Any = None,
                      keep_style: Any = False) -> ar_sample.Prompt:
    """The decoder inputs of a batch as a sampler `Prompt` (tokens, mask, prefix, prefix_mask, override).

    text_emb [B, T, Dt], text_mask [B, T]; struct_ids [B, L] (structure runs); style_vectors
    [B, Q, hidden] (style runs); drop [B] bool: rows that get the unconditional context;
    keep_style (bool or [B] bool): dropped rows that keep their style tokens (text-only dropout);
    image_ids [B, n]: image ids appended after BOI (teacher forcing). Works on numpy and traced arrays.
    """
    b = text_emb.shape[0]
    k = self.codebook_size
    parts = []
    if self.num_style:
      parts.append(jnp.full((b, self.num_style), k + STYLE, jnp.int32))
    if self.structure:
      if struct_ids is None:
        raise ValueError("this model has a structure prefix; pass struct_ids [B, L] (the tokenized shape mask).")
      parts += [jnp.full((b, 1), k + STRUCT, jnp.int32), jnp.asarray(struct_ids, jnp.int32)]
    parts.append(jnp.full((b, 1), k + BOI, jnp.int32))
    kinds = jnp.asarray(self.context_kinds)
    cond_pos = jnp.broadcast_to(kinds != _K_BOI, (b, kinds.shape[0]))
    prefix, prefix_mask = jnp.asarray(text_emb), jnp.asarray(text_mask, bool)
    token_mask = jnp.ones(cond_pos.shape, bool)
    style_mask = jnp.broadcast_to(kinds == _K_STYLE, cond_pos.shape)
    if drop is not None:
      drop = jnp.asarray(drop, bool)
      kept = style_mask & jnp.broadcast_to(jnp.asarray(keep_style, bool), (b,))[:, None]
      token_mask = ~(cond_pos & drop[:, None] & ~kept)
      if self.uncond == "null_prefix":
        null = jnp.broadcast_to(params["null_text"].astype(prefix.dtype)[None], prefix.shape)
        prefix = jnp.where(drop[:, None, None], null, prefix)
        prefix_mask = prefix_mask | drop[:, None]
      else:
        prefix_mask = prefix_mask & ~drop[:, None]
    if image_ids is not None:
      n = image_ids.shape[1]
      parts.append(jnp.asarray(image_ids, jnp.int32))
      token_mask = jnp.concatenate([token_mask, jnp.ones((b, n), bool)], axis=1)
      style_mask = jnp.concatenate([style_mask, jnp.zeros((b, n), bool)], axis=1)
    override = None
    if self.num_style:
      if style_vectors is None:
        raise ValueError("this model has style slots; pass style_vectors [B, Q, hidden].")
      override = (style_mask, style_vectors)
    return ar_sample.Prompt(jnp.concatenate(parts, axis=1), token_mask, prefix, prefix_mask, None, override)

  def image_logits(self, params: Any, cond: dict[str, Any], ids: jax.Array, style_vectors: Any = None,
                   drop: Any = None, keep_style: Any = False) -> jax.Array:
    """Teacher-forced logits of the image ids: [B, L, K] (image vocabulary only); logits[:, t]
    predicts ids[:, t]. cond: text_emb, text_mask[, struct_ids]; drop / keep_style as in `sequence_inputs`."""
    p = self.sequence_inputs(params, cond["text_emb"], cond["text_mask"], cond.get("struct_ids"), style_vectors,
                             drop, ids[:, :-1], keep_style)
    logits, _ = self.lm.apply({"params": params["lm"]}, p.tokens, self.teacher_positions(ids.shape[0]),
                              prefix_embeds=p.prefix_embeds,
                              attention_mask=jnp.concatenate([p.prefix_mask, p.mask], axis=1),
                              input_embeds_override=p.override)
    return logits[:, -self.seq_len:, :self.codebook_size]

  def loss(self, params, batch, rng):
    drop_rng, noise_rng, text_rng = jax.random.split(rng, 3)
    ids = batch["ids"]
    b = ids.shape[0]
    drop = (losses.cond_dropout_mask(drop_rng, b, self.cond_dropout) if self.cond_dropout > 0
            else jnp.zeros((b,), bool))
    text_only = jnp.zeros((b,), bool)
    if self.num_style and self.text_dropout > 0:  # of the rows that keep their condition, drop the text alone
      text_only = losses.cond_dropout_mask(text_rng, b, self.text_dropout) & ~drop
    style = None
    if self.num_style:
      style = self.style_tokens(params, batch["style_feats"], rng=noise_rng, noise=self.train_noise)
    logits = self.image_logits(params, batch, ids, style, drop | text_only, text_only)
    loss, aux = ar.lm_loss(logits, ids)
    return loss, {**aux, "cond_dropped": jnp.mean(drop.astype(jnp.float32))}

  # ------------------------------------------------------------------------------------- data
  def source(self, split: str = "train"):
    d = self.config.data
    if d.get("name", "shapestyle") != "shapestyle":
      raise ConfigError(f"data.name={d.get('name')!r}; ARImageTask trains on 'shapestyle'.")
    from stylejax.data import shapestyle as ss
    extra = {"heldout_prompts": float(d.heldout_prompts)} if d.get("heldout_prompts") else {}
    base = ss.ShapeStyleSource(split=split, image_size=d.image_size, seed=d.get("seed", 0),
                               styles=d.get("styles", "named+plain"), num_examples=d.num_examples,
                               plain_fraction=d.get("plain_fraction", None), **extra)
    return CaptionedImages(base, self.text_encoder.tokenize, structure=self.structure)

  def prepare_batch(self, batch):
    """Frozen preprocessing on the host: images -> ids, captions -> text states, style images ->
    CLIP features, shape masks -> structure ids. Other numeric fields pass through."""
    done = ("image", "caption_ids", "caption_mask", "style_image", "shape_mask")
    out = {k: v for k, v in batch.items() if k not in done}
    if "image" in batch:
      out["ids"] = self.image_tokenizer.encode(batch["image"])
    if "caption_ids" in batch:
      out["text_emb"], out["text_mask"] = self.text_encoder.embed_ids(batch["caption_ids"], batch["caption_mask"])
    if self.num_style and ("style_image" in batch or "image" in batch):
      out["style_feats"] = self.image_features(batch["style_image"] if "style_image" in batch else batch["image"])
    if self.structure and "shape_mask" in batch:
      out["struct_ids"] = self.image_tokenizer.encode(mask_to_image(batch["shape_mask"]))
    return out

  def flops_per_example(self) -> float:
    m = self.lm
    t = self.text_len + self.context_len + self.seq_len - 1
    qkvo = m.hidden * m.head_dim * (2 * m.heads + 2 * m.kv_heads)
    layer = 2 * t * (qkvo + 3 * m.hidden * m.mlp_dim) + 4 * t * t * m.heads * m.head_dim
    forward = m.layers * layer + 2 * t * m.hidden * m.vocab_size + 2 * self.text_len * self.text_dim * m.hidden
    return 3.0 * forward


class CaptionedImages:
  """ShapeStyle examples -> the numeric fields ARImageTask reads: image, caption ids/mask
  (tokenized with the text encoder's tokenizer) and, for structure runs, the shape mask."""

  def __init__(self, source: Any, tokenize, caption_field: str = "caption", structure: bool = False):
    self.source, self.tokenize, self.caption_field, self.structure = source, tokenize, caption_field, structure
    self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

  def __len__(self) -> int:
    return len(self.source)

  def encode(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
    if caption not in self._cache:
      ids, mask = self.tokenize([caption])
      self._cache[caption] = (ids[0], mask[0])
    return self._cache[caption]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    ex = self.source[index]
    ids, mask = self.encode(str(ex[self.caption_field]))
    out = {"image": ex["image"], "caption_ids": ids, "caption_mask": mask}
    if self.structure:
      out["shape_mask"] = ex["mask"]
    return out


# ----------------------------------------------------------------------------------------- sampling


def structure_masks(x: Any, count: int) -> np.ndarray:
  """Structure input -> float masks [count, H, W] in [0, 1]: a mask [H, W] / [N, H, W] ({0, 1}, bool
  or [0, 1]) or an image [H, W, 3] / [N, H, W, 3] (luminance; white = shape). One, or one per row."""
  a = np.asarray(x)
  if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3):
    a = a[None]
  if a.ndim == 4:
    a = as_images(a, "structure image").astype(np.float32).mean(-1) / 255.0
  elif a.ndim == 3:
    a = a.astype(np.float32)
  else:
    raise PipelineError(f"a structure input must be a mask [H, W] or an image [H, W, 3]; got shape {a.shape}.")
  if len(a) not in (1, count):
    raise PipelineError(f"got {len(a)} structure inputs for {count} rows; pass one, or one per row.")
  return np.broadcast_to(a, (count,) + a.shape[1:]).copy()


def _resize(images: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
  if images.shape[1:3] == (size, size):
    return images
  from PIL import Image
  method = Image.NEAREST if nearest else Image.BICUBIC
  return np.stack([np.asarray(Image.fromarray(im).resize((size, size), method)) for im in images])


@dataclasses.dataclass
class ARImagePipeline:
  """A trained ARImageTask (or StyleAR) run: prompts [+ style images] in, images out.

    pipe = ARImagePipeline.load(workdir)
    images = pipe.generate(["two red stars"], num=4, seed=0, style_images=ref)  # uint8 [4, H, W, 3]

  Sampling settings default to the run's `config.sample` (`SAMPLE_DEFAULTS` fields); every call
  may override them. The jitted decode loop compiles once per batch size and reuses it across
  prompts, seeds and settings.
  """
  config: ml_collections.ConfigDict
  task: ARImageTask
  params: Any

  @classmethod
  def load(cls, workdir: str, step: int | None = None) -> "ARImagePipeline":
    from stylejax.train import trainer
    from stylejax.train.task import load_task
    config, params = trainer.load_params(workdir, step=step)
    task = load_task(config)
    if not isinstance(task, ARImageTask):
      raise PipelineError(f"{workdir} is a {type(task).__name__} run; this pipeline samples AR image runs.")
    return cls(config, task, params)

  @property
  def has_style(self) -> bool:
    return self.task.num_style > 0

  @property
  def image_size(self) -> int:
    return self.task.image_tokenizer.image_size

  def settings(self, **overrides: Any) -> tuple[ar_sample.SampleSettings, dict[str, Any]]:
    """(sampler settings, style settings) from config.sample with `overrides` (None values ignored)."""
    s = dict(SAMPLE_DEFAULTS)
    s.update(dict(self.config.get("sample", ml_collections.ConfigDict()).to_dict()))
    unknown = sorted(set(overrides) - set(SAMPLE_DEFAULTS))
    if unknown:
      raise PipelineError(f"unknown sampling settings {unknown}; valid: {sorted(SAMPLE_DEFAULTS)}.")
    s.update({k: v for k, v in overrides.items() if v is not None})
    s["style_scale"] = style_scale_of(s["style_scale"])
    for key in ("cfg_scale", "noise", "temperature", "top_k", "top_p"):
      s[key] = _setting_number(key, s[key])
    scales = guidance_scales(s["cfg_scale"], s["style_scale"])
    if not all(math.isfinite(x) and x >= 0 for x in scales + (s["noise"], s["temperature"], s["top_k"])):
      raise PipelineError(f"cfg_scale, style_scale, noise, temperature and top_k must be finite and >= 0; got "
                          f"{s['cfg_scale']}, {s['style_scale']}, {s['noise']}, {s['temperature']} and {s['top_k']}.")
    if not 0 < s["top_p"] <= 1:
      raise PipelineError(f"top_p={s['top_p']} is outside (0, 1]; 1 turns nucleus sampling off.")
    settings = ar_sample.SampleSettings(temperature=s["temperature"], top_k=int(s["top_k"]), top_p=s["top_p"],
                                        cfg_scale=scales[0] if len(scales) == 1 else scales)
    style = {k: s[k] for k in ("noise", "content_subtraction", "subtraction_scale", "subtraction_blend",
                               "style_scale")}
    return settings, style

  def default_structure(self, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
    """Default structure: the shape mask of each prompt's ShapeStyle content, laid out by its seed."""
    from stylejax.data import shapestyle as ss
    masks = []
    for p, s in zip(prompts, seeds):
      content, _ = ss.parse_caption(p)
      if content is None:
        raise PipelineError(f"this run is structure-controlled and {p!r} is no ShapeStyle content; pass a "
                            f"structure image or write the prompt like 'two red stars'.")
      masks.append(ss.render(content, ss.PLAIN_STYLE, self.image_size, np.random.default_rng(int(s)))[1])
    return np.stack(masks)

  def sample_rows(self, prompts: Sequence[str], keys: jax.Array, style_images: Any = None,
                  content_images: Any = None, structure_images: Any = None, params: Any = None,
                  **overrides: Any) -> np.ndarray:
    """One sample per row: prompts [B], keys [B] (row b uses only keys[b]), style_images [B or 1,
    H, W, 3], content_images (content subtraction), structure_images (masks [B, S, S] or images;
    >0.5 luminance is shape). Returns ids [B, L]."""
    task = self.task
    prompts = [str(p) for p in check_prompts(prompts)]
    b = len(prompts)
    settings, style_cfg = self.settings(**overrides)
    params = self.params if params is None else params
    text_emb, text_mask = task.text_encoder(prompts)
    struct_ids = None
    if task.structure:
      if structure_images is None:
        raise PipelineError("this run is structure-controlled; pass structure_images.")
      masks = structure_masks(structure_images, b) > 0.5
      struct_ids = task.image_tokenizer.encode(_resize(mask_to_image(masks), self.image_size, nearest=True))
    sample_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    vectors = None
    if self.has_style:
      if style_images is None:
        raise PipelineError("this is a StyleAR run; pass a style image.")
      feats = task.image_features(as_images(style_images, "style image", b))
      content_feats = None
      if style_cfg["content_subtraction"]:
        if content_images is None:
          raise PipelineError("content subtraction needs a content image (the reference's content without its "
                              "style); pass content_images or set content_subtraction=False.")
        content_feats = task.image_features(as_images(content_images, "content image", b))
      noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
      content_feats = None if content_feats is None else jnp.asarray(content_feats)
      vectors = _style_tokens_jit(task.resampler, params["resampler"], jnp.asarray(feats), content_feats, noise_keys,
                                  float(style_cfg["noise"]), float(style_cfg["subtraction_scale"]),
                                  float(style_cfg["subtraction_blend"]))
    elif style_images is not None:
      raise PipelineError("this run has no style tokens (a text-to-image base); drop the style image or sample a "
                          "StyleAR run.")
    if style_cfg["style_scale"] is not None and not self.has_style:
      raise PipelineError("style_scale guides over style tokens; this run has none (leave style_scale unset).")
    cond, *uncond = [task.sequence_inputs(params, text_emb, text_mask, struct_ids, vectors, jnp.full((b,), drop),
                                          keep_style=keep)
                     for drop, keep in guidance_contexts(style_cfg["style_scale"])]
    ids = ar_sample.generate(task.lm, params["lm"], cond, sample_keys, task.seq_len, settings=settings,
                             uncond=uncond, vocab_mask=task.image_vocab_mask())
    return np.asarray(ids)

  def generate_ids(self, prompts: Sequence[str], num: int = 1, seed: int = 0, *, style_images: Any = None,
                   content_images: Any = None, structure_images: Any = None, **overrides: Any) -> np.ndarray:
    """ids [len(prompts) * num, L], prompt-major; row i draws from fold_in(key(seed), i). Per-prompt
    images (style/content/structure) are one for all or one per prompt."""
    if num < 1:
      raise PipelineError(f"num={num}; ask for at least one image.")
    prompts = [str(p) for p in check_prompts(prompts)]
    rows = [p for p in prompts for _ in range(num)]
    per_row = lambda x, what: None if x is None else np.repeat(as_images(x, what, len(prompts)), num, axis=0)
    base = jax.random.key(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(len(rows)))
    structure = structure_images
    if self.task.structure:
      structure = (self.default_structure(rows, seed + np.arange(len(rows))) if structure is None
                   else np.repeat(structure_masks(structure, len(prompts)), num, axis=0))
    return self.sample_rows(rows, keys, per_row(style_images, "style image"),
                            per_row(content_images, "content image"), structure, **overrides)

  def generate(self, prompts: Sequence[str], num: int = 1, seed: int = 0, *, best_of: int = 1,
               best_of_clip: Any = None, best_of_rank: str = "cosine", **kw: Any) -> np.ndarray:
    """Images uint8 [len(prompts) * num, H, W, 3]; each the best of `best_of` candidates by CLIP(image,
    prompt) (`sample/best_of.py`; best_of_clip: a CLIP run or embedder, default the run's text encoder's;
    best_of_rank: "cosine" or "contrastive");
    other keyword arguments as in `generate_ids`."""
    draw = lambda p, k: self.task.image_tokenizer.decode(self.generate_ids(p, k, seed, **kw))
    clip = best_of_clip or self.config.get("text_encoder")
    return best_of_lib.generate(draw, check_prompts(prompts), num, best_of, clip, best_of_rank)
