"""The masked (bidirectional) token transformer of MaskGIT and Muse, plus its training task.

One model, several layouts. A layout is a registry entry of three module builders (embedding,
block, head) and the adapter sites of a block, so a new layout (aMUSEd's U-ViT: conv stages,
RMSNorm, AdaLN micro-conditioning) is one more `register_layout(...)` without touching these:

  "maskgit" (google-research/maskgit): post-LN BERT. LN(tok_emb + pos_emb) -> dropout ->
      depth x [LN(x + attn(x)), LN(x + MLP(x))], LN eps 1e-12, trunc-normal(0.02) init.
      Sequence = [class token, image tokens]; vocab = codebook + classes (+1 null class) + 1 mask,
      mask_id = vocab - 1 (explicit; the reference's -1 wraps to the same row). Head
      LN(gelu(Dense(h))) @ tok_emb.T + bias, tied to the input embedding.
  "muse" (Muse paper): pre-LN; every layer self-attention, cross-attention to the projected
      text embeddings, MLP; final LN; untied Dense head. Input vocab = codebook + 1 mask token.

Conditioning and CFG. `cond` is class ids [B] (maskgit) or text embeddings [B, T, Dt] (muse,
with an optional bool mask [B, T]). `drop_cond` [B] (bool) swaps rows for the null condition:
maskgit uses a dedicated null class id (`num_classes`; `null_class=False` drops it for the
reference's exact 2025 vocab), muse uses a learned null text embedding [text_len, Dt]
(`null_text="learned"`) or all-zero text (`null_text="zeros"`), with the text mask set to all
valid for those rows. `cond=None` means every row is unconditional.

Adapters. With `adapters.kind` set, params gain one subtree params["adapters"] (see
`stylejax.nn.adapters`); everything else is byte-for-byte the base model's tree, so
`{**base_params, "adapters": adapter_params}` is a tuned model that shares the base arrays,
and `apply(..., adapters=False)` on the same tree runs the base model (StyleDrop guidance
needs both). Adapters work with scanned and unscanned layers alike.

`conv_blocks` > 0 wraps the transformer in ConvNeXt stages on the token grid (`conv_in` after the
embedding, `conv_out` before the head), as aMUSEd's U-ViT does; 0 keeps the papers' plain transformer.
`conv_text_adaln` adds aMUSEd's text modulation to those blocks (`pooled_text` embeds the masked mean of the
projected text states; each block maps it to a scale and shift).

Layers are `layers_{i}` submodules, or with `scan_layers` one `layers` submodule whose params
have a leading "layers" axis; `stack_layers` / `unstack_layers` convert between the two.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stylejax.config import ConfigError
from stylejax.nn.adapters import AdapterBank, AdapterConfig, Site, bottleneck, layer_slice
from stylejax.nn.attention import LORA_PROJS as ATTN_LORA_PROJS, MultiHeadAttention
from stylejax.nn.mlp import MLP
from stylejax.nn.norms import LayerNorm
from stylejax.train import losses
from stylejax.train.task import Task

LAYER_NAME = "layers"


@dataclasses.dataclass(frozen=True)
class MuseConfig:
  """Architecture of a masked token transformer (hashable: a flax module field)."""
  layout: str = "maskgit"
  codebook_size: int = 1024
  seq_len: int = 256  # image tokens per example
  width: int = 768
  depth: int = 24
  heads: int = 16
  mlp_dim: int = 3072
  num_classes: int = 1000  # maskgit
  null_class: bool = True  # maskgit: reserve class id `num_classes` as the null (CFG) condition
  text_dim: int = 0  # muse: width of the text encoder's embeddings
  text_len: int = 0  # muse: length of the learned null text embedding
  null_text: str = "learned"  # muse: "learned" | "zeros"
  dropout: float = 0.1
  ln_eps: float | None = None  # None: the layout's default (maskgit 1e-12, muse 1e-6)
  init_std: float = 0.02
  use_bias: bool = True
  # Pad the input embedding table's rows to a multiple of this (e.g. 128) so its vocab axis
  # divides the 'tensor' mesh axis; padded rows are never indexed. 1 keeps reference shapes.
  vocab_multiple: int = 1
  gated_mlp: bool = False
  activation: str = "gelu"
  scan_layers: bool = False
  remat: bool = False
  # ConvNeXt blocks on the token grid before and after the transformer (aMUSEd's UVit2D down/up
  # blocks): translation-equivariant local mixing, so a shape's token pattern is learned once for
  # every position instead of per position embedding. 0 = the plain transformer of the papers.
  conv_blocks: int = 0
  conv_kernel: int = 3
  # aMUSEd's ConvNextBlock modulation: x * (1 + scale) + shift from the pooled text (muse layout), zero-initialised,
  # so the token-grid stages know what to draw; False keeps them text-blind (the shipped base: a 3000-step
  # continuation with it did not beat one without on 384 distinct prompts, launch/SHAPESTYLE_FINDINGS.md stop 42).
  conv_text_adaln: bool = False
  adapters: AdapterConfig = AdapterConfig()

  def __post_init__(self):
    get_layout(self.layout)  # validates the name
    if self.width % self.heads:
      raise ConfigError(f"model.width={self.width} must be divisible by model.heads={self.heads}.")
    if self.null_text not in ("learned", "zeros"):
      raise ConfigError(f"model.null_text={self.null_text!r}; use 'learned' or 'zeros'.")
    if self.conv_blocks and math.isqrt(self.seq_len) ** 2 != self.seq_len:
      raise ConfigError(f"model.conv_blocks needs a square token grid; model.seq_len={self.seq_len} is not a square.")
    if self.conv_text_adaln and (self.layout != "muse" or not self.conv_blocks):
      raise ConfigError("model.conv_text_adaln modulates the ConvNeXt stages by the pooled text: it needs "
                        "model.layout='muse' and model.conv_blocks > 0.")

  @property
  def vocab_size(self) -> int:
    """Input vocabulary (codes, then maskgit's class tokens, then the mask token last)."""
    if self.layout == "maskgit":
      return self.codebook_size + self.num_classes + int(self.null_class) + 1
    return self.codebook_size + 1

  @property
  def embed_rows(self) -> int:
    """Rows of the input embedding table: vocab_size padded up to `vocab_multiple`."""
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

  @property
  def mask_id(self) -> int:
    return self.vocab_size - 1

  @property
  def null_label(self) -> int:
    """maskgit's null class id (a label in [0, num_classes]); its token is codebook_size + null_label."""
    if not self.null_class:
      raise ConfigError("this maskgit config has no null class (model.null_class=False); CFG needs one.")
    return self.num_classes

  @property
  def eps(self) -> float:
    return self.ln_eps if self.ln_eps is not None else get_layout(self.layout).default_eps

  @property
  def head_dim(self) -> int:
    return self.width // self.heads

  @classmethod
  def from_config(cls, model_cfg: Any, **overrides) -> "MuseConfig":
    """From `config.model` (ConfigDict or dict); keys that are not architecture (loss settings) are ignored."""
    d = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
    d.update(overrides)
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in fields}
    kw["adapters"] = AdapterConfig.from_config(d.get("adapters"))
    return cls(**kw)


# --------------------------------------------------------------------------- layout registry

@dataclasses.dataclass(frozen=True)
class Layout:
  """Builders of one layout. Each module takes fields (config, train, dtype, param_dtype).

  embed(ids, cond, cond_mask, drop_cond) -> (x [B, S, D], ctx: dict of arrays/None for the blocks)
  block(x, ctx, adapters) -> (x, None)   (the (carry, out) form `nn.scan` wants)
  head(x, ctx, embed) -> logits [B, L, codebook_size] over the image positions only
  """
  embed: type[nn.Module]
  block: type[nn.Module]
  head: type[nn.Module]
  attention_modules: tuple[str, ...]  # attention sub-layers of a block (StyleDrop/LoRA sites)
  default_eps: float = 1e-6
  sites: Callable[["MuseConfig", tuple[str, ...]], tuple[Site, ...]] | None = None

  def adapter_sites(self, c: MuseConfig) -> tuple[Site, ...]:
    return (self.sites or transformer_sites)(c, self.attention_modules)


LAYOUTS: dict[str, Layout] = {}


def register_layout(name: str, layout: Layout) -> None:
  LAYOUTS[name] = layout


def get_layout(name: str) -> Layout:
  if name not in LAYOUTS:
    raise ConfigError(f"model.layout={name!r}; use one of {sorted(LAYOUTS)}.")
  return LAYOUTS[name]


def transformer_sites(c: MuseConfig, attention_modules: tuple[str, ...]) -> tuple[Site, ...]:
  """Adapter sites of a standard block: StyleDrop on each attention output; LoRA on q/k/v/out + MLP."""
  d, h, k, m = c.width, c.heads, c.head_dim, c.mlp_dim
  emb, hk = ((d,), ("embed",)), ((h, k), ("heads", "kv"))
  if c.adapters.kind == "styledrop":
    return tuple(Site(a, "adapter", *emb, *emb, aliases=(a,)) for a in attention_modules)
  sites = []
  for a in attention_modules:
    sites += [Site(a, p, *emb, *hk, aliases=(p,)) for p in ("query", "key", "value")]
    sites.append(Site(a, "out", *hk, *emb, aliases=("out",)))
  mlp = ((m,), ("mlp",))
  sites.append(Site("mlp", "in", *emb, *mlp, aliases=("mlp_in",)))
  if c.gated_mlp:
    sites.append(Site("mlp", "gate", *emb, *mlp, aliases=("mlp_gate",)))
  sites.append(Site("mlp", "out", *mlp, *emb, aliases=("mlp_out",)))
  return tuple(sites)


# --------------------------------------------------------------------------- shared pieces

def _named(init, names):
  return nn.with_logical_partitioning(init, names)


def _init(c: MuseConfig):
  return nn.initializers.truncated_normal(c.init_std)


def _seq(x: jax.Array) -> jax.Array:
  return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))


def _attention(mod: nn.Module, name: str, x: jax.Array, adapters: dict, context: jax.Array | None = None,
               mask: jax.Array | None = None) -> jax.Array:
  """Attention sub-layer output (after out-proj, StyleDrop adapter, dropout), before the residual add."""
  c = mod.config
  w = adapters.get(name, {})
  a = MultiHeadAttention(c.heads, use_bias=c.use_bias, kernel_init=_init(c), lora_scale=c.adapters.scale,
                         dtype=mod.dtype, param_dtype=mod.param_dtype, name=name)(
                             x, context, mask=mask, lora={p: v for p, v in w.items() if p in ATTN_LORA_PROJS})
  if "adapter" in w:  # StyleDrop: a + gelu(a W_down) W_up on the attention output
    a = bottleneck(a, w["adapter"])
  return nn.Dropout(c.dropout)(a, deterministic=not mod.train)


def _mlp(mod: nn.Module, x: jax.Array, adapters: dict) -> jax.Array:
  c = mod.config
  y = MLP(c.mlp_dim, gated=c.gated_mlp, activation=c.activation, use_bias=c.use_bias, kernel_init=_init(c),
          lora_scale=c.adapters.scale, dtype=mod.dtype, param_dtype=mod.param_dtype, name="mlp")(
              x, lora=adapters.get("mlp"))
  return nn.Dropout(c.dropout)(y, deterministic=not mod.train)


def _norm(mod: nn.Module, name: str) -> LayerNorm:
  return LayerNorm(epsilon=mod.config.eps, dtype=mod.dtype, param_dtype=mod.param_dtype, name=name)


def _check_ids(c: MuseConfig, ids: jax.Array) -> None:
  if ids.ndim != 2 or ids.shape[1] != c.seq_len:
    raise ValueError(f"ids must be [B, {c.seq_len}] (model.seq_len), got shape {ids.shape}.")


class _LayoutModule(nn.Module):
  config: MuseConfig
  train: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32


# --------------------------------------------------------------------------- "maskgit"

class MaskGITEmbed(_LayoutModule):
  """[class token, image tokens] -> LN(tok + pos) -> dropout. ids [B, L], labels [B] -> [B, L+1, D]."""

  def setup(self):
    c = self.config
    self.word_embeddings = nn.Embed(c.embed_rows, c.width, embedding_init=_named(_init(c), ("vocab", "embed")),
                                    dtype=self.dtype, param_dtype=self.param_dtype)
    self.position_embeddings = self.param("position_embeddings", _named(_init(c), (None, "embed")),
                                          (c.seq_len + 1, c.width), self.param_dtype)
    self.norm = LayerNorm(epsilon=c.eps, dtype=self.dtype, param_dtype=self.param_dtype)
    self.dropout = nn.Dropout(c.dropout)

  def __call__(self, ids, cond=None, cond_mask=None, drop_cond=None):
    c = self.config
    _check_ids(c, ids)
    if cond is None:
      labels = jnp.full((ids.shape[0],), c.null_label, jnp.int32)
    else:
      labels = jnp.asarray(cond).astype(jnp.int32).reshape(ids.shape[0])
    if drop_cond is not None:
      labels = jnp.where(drop_cond, c.null_label, labels)
    seq = jnp.concatenate([labels[:, None] + c.codebook_size, ids.astype(jnp.int32)], axis=1)
    x = self.word_embeddings(seq) + self.position_embeddings[None].astype(self.dtype)
    x = self.dropout(self.norm(x), deterministic=not self.train)
    return _seq(x), {}

  def tied_logits(self, h: jax.Array, num: int) -> jax.Array:
    """h [B, L, D] @ word_embeddings[:num].T -> [B, L, num]."""
    table = self.word_embeddings.embedding[:num].astype(self.dtype)
    return jnp.einsum("bld,vd->blv", h, table)


class PostLNBlock(_LayoutModule):
  """BERT block: x = LN(x + attn(x)); x = LN(x + MLP(x))."""

  @nn.compact
  def __call__(self, x, ctx, adapters):
    adapters = adapters or {}
    x = _norm(self, "attn_norm")(x + _attention(self, "self_attn", x, adapters))
    x = _norm(self, "mlp_norm")(x + _mlp(self, x, adapters))
    return _seq(x), None


class MaskGITHead(_LayoutModule):
  """LN(gelu(Dense(h))) @ word_embeddings.T + bias, on the image positions, codebook entries only."""

  @nn.compact
  def __call__(self, x, ctx, embed):
    c = self.config
    h = nn.Dense(c.width, dtype=self.dtype, param_dtype=self.param_dtype, name="transform",
                 kernel_init=_named(_init(c), ("embed", "mlp")),
                 bias_init=_named(nn.initializers.zeros, ("mlp",)))(x[:, 1:])
    h = _norm(self, "transform_norm")(nn.gelu(h))
    bias = self.param("bias", _named(nn.initializers.zeros, ("vocab",)), (c.embed_rows,), self.param_dtype)
    return embed.tied_logits(h, c.codebook_size) + bias[:c.codebook_size].astype(self.dtype)


# --------------------------------------------------------------------------- "muse"

class MuseEmbed(_LayoutModule):
  """Image tokens -> tok + pos -> dropout; text [B, T, Dt] -> LN(Dense(text)) as cross-attention context."""

  @nn.compact
  def __call__(self, ids, cond=None, cond_mask=None, drop_cond=None):
    c = self.config
    _check_ids(c, ids)
    batch = ids.shape[0]
    tok = nn.Embed(c.embed_rows, c.width, embedding_init=_named(_init(c), ("vocab", "embed")),
                   dtype=self.dtype, param_dtype=self.param_dtype, name="token_embeddings")
    pos = self.param("position_embeddings", _named(_init(c), (None, "embed")), (c.seq_len, c.width),
                     self.param_dtype)
    x = nn.Dropout(c.dropout)(tok(ids) + pos[None].astype(self.dtype), deterministic=not self.train)

    if c.null_text == "learned":
      if c.text_len <= 0:
        raise ConfigError("model.null_text='learned' needs model.text_len > 0 (the text length).")
      null = self.param("null_text", _named(_init(c), (None, "embed")), (c.text_len, c.text_dim), self.param_dtype)
    else:
      null = jnp.zeros((cond.shape[1] if cond is not None else max(c.text_len, 1), c.text_dim), self.param_dtype)
    if cond is None:
      text, mask = jnp.broadcast_to(null[None], (batch,) + null.shape), None
    else:
      text, mask = jnp.asarray(cond), cond_mask
      if text.ndim != 3 or text.shape[2] != c.text_dim:
        raise ValueError(f"muse cond must be text embeddings [B, T, {c.text_dim}], got shape {text.shape}.")
      if drop_cond is not None:
        if text.shape[1] != null.shape[0]:
          raise ValueError(f"text length {text.shape[1]} != model.text_len {null.shape[0]} (the learned null "
                           f"text's length); pad the text or set model.text_len.")
        text = jnp.where(drop_cond[:, None, None], null[None].astype(text.dtype), text)
        if mask is not None:
          mask = mask | drop_cond[:, None]
    text = nn.Dense(c.width, dtype=self.dtype, param_dtype=self.param_dtype, name="text_proj",
                    kernel_init=_named(_init(c), (None, "embed")),
                    bias_init=_named(nn.initializers.zeros, ("embed",)))(text)
    text = _seq(_norm(self, "text_norm")(text))
    mask = None if mask is None else jnp.asarray(mask, bool)[:, None, None, :]  # [B, 1, 1, T]
    return _seq(x), {"text": text, "text_mask": mask}


class PreLNCrossBlock(_LayoutModule):
  """x += SA(LN(x)); x += CA(LN(x), text); x += MLP(LN(x))."""

  @nn.compact
  def __call__(self, x, ctx, adapters):
    adapters = adapters or {}
    x = x + _attention(self, "self_attn", _norm(self, "self_attn_norm")(x), adapters)
    x = x + _attention(self, "cross_attn", _norm(self, "cross_attn_norm")(x), adapters,
                       context=ctx["text"], mask=ctx["text_mask"])
    x = x + _mlp(self, _norm(self, "mlp_norm")(x), adapters)
    return _seq(x), None


class MuseHead(_LayoutModule):
  """Final LN, then an untied Dense to codebook logits."""

  @nn.compact
  def __call__(self, x, ctx, embed):
    c = self.config
    x = _norm(self, "final_norm")(x)
    return nn.Dense(c.codebook_size, dtype=self.dtype, param_dtype=self.param_dtype, name="logits",
                    kernel_init=_named(_init(c), ("embed", "vocab")),
                    bias_init=_named(nn.initializers.zeros, ("vocab",)))(x)


register_layout("maskgit", Layout(MaskGITEmbed, PostLNBlock, MaskGITHead, ("self_attn",), default_eps=1e-12))
register_layout("muse", Layout(MuseEmbed, PreLNCrossBlock, MuseHead, ("self_attn", "cross_attn"), default_eps=1e-6))


# --------------------------------------------------------------------------- token-grid conv stage

def _spatial_l2_norm(y: jax.Array) -> jax.Array:
  """||y||_2 over the grid of [B, h, w, C] -> [B, 1, 1, C], with gradient 0 (as torch.norm) where it is 0.

  A channel that is exactly 0 everywhere (GELU of a dead unit) made the plain sqrt's gradient NaN
  and stopped a training run; the double `where` keeps the values and gives that channel a 0 gradient.
  """
  sq = jnp.sum(jnp.square(y), axis=(1, 2), keepdims=True)
  live = sq > 0
  return jnp.where(live, jnp.sqrt(jnp.where(live, sq, 1.0)), 0.0)


class PooledText(_LayoutModule):
  """Text states [B, T, D] (+ mask [B, 1, 1, T]) -> masked mean -> Dense, SiLU, Dense -> [B, D].

  aMUSEd embeds CLIP's pooled (EOS) text embedding with a TimestepEmbedding MLP (UVit2DModel.cond_embed, without
  its micro-conditions); this model is given the text states, so it pools their masked mean (a learned null
  text has no EOS)."""

  @nn.compact
  def __call__(self, text: jax.Array, mask: jax.Array | None) -> jax.Array:
    c, d = self.config, text.shape[-1]
    if mask is None:
      pooled = jnp.mean(text, axis=1)
    else:
      w = mask[:, 0, 0, :, None].astype(text.dtype)
      pooled = jnp.sum(text * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
    dense = functools.partial(nn.Dense, d, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=_named(_init(c), ("embed", "mlp")),
                              bias_init=_named(nn.initializers.zeros, ("mlp",)))
    return dense(name="linear_2")(nn.silu(dense(name="linear_1")(pooled)))


class ConvNeXtBlock(_LayoutModule):
  """x + Dense(GRN(gelu(Dense(LN(dwconv(x)))))) on the token grid [B, h, w, D] (aMUSEd UVit2D ConvNextBlock,
  without its micro-conditioning; GRN as ConvNeXt V2, Woo et al. 2023). With `pooled` [B, D'] (conv_text_adaln),
  then x * (1 + scale) + shift, (scale, shift) = Dense(SiLU(pooled)) as aMUSEd's cond_embeds_mapper, zero-init."""

  @nn.compact
  def __call__(self, x: jax.Array, pooled: jax.Array | None = None) -> jax.Array:
    c, d = self.config, x.shape[-1]
    k = c.conv_kernel
    zeros = nn.initializers.zeros

    def dense(features, names, name):
      return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                      kernel_init=_named(_init(c), names), bias_init=_named(zeros, names[1:]))

    y = nn.Conv(d, (k, k), padding="SAME", feature_group_count=d, dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=_named(_init(c), (None, None, None, "embed")), bias_init=_named(zeros, ("embed",)),
                name="depthwise")(x)
    y = LayerNorm(epsilon=c.eps, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(y)
    y = nn.gelu(dense(4 * d, ("embed", "mlp"), "expand")(y))
    gx = _spatial_l2_norm(y.astype(jnp.float32))  # ConvNeXt V2 GRN
    nx = gx / (jnp.mean(gx, axis=-1, keepdims=True) + 1e-6)
    gamma = self.param("grn_gamma", _named(zeros, ("mlp",)), (4 * d,), self.param_dtype)
    beta = self.param("grn_beta", _named(zeros, ("mlp",)), (4 * d,), self.param_dtype)
    y = gamma * (y * nx).astype(self.dtype) + beta + y
    x = x + dense(d, ("mlp", "embed"), "project")(y)
    if pooled is None:
      return x
    scale, shift = jnp.split(nn.Dense(2 * d, dtype=self.dtype, param_dtype=self.param_dtype, name="cond_mapper",
                                      kernel_init=_named(zeros, ("mlp", "embed")),
                                      bias_init=_named(zeros, ("embed",)))(nn.silu(pooled)), 2, axis=-1)
    return x * (1 + scale[:, None, None]) + shift[:, None, None]


class ConvStage(_LayoutModule):
  """`config.conv_blocks` ConvNeXt blocks on the sequence viewed as its square grid: [B, L, D] -> [B, L, D]
  (each modulated by `pooled` [B, D] when given)."""

  @nn.compact
  def __call__(self, x: jax.Array, pooled: jax.Array | None = None) -> jax.Array:
    b, length, d = x.shape
    side = math.isqrt(length)
    x = x.reshape(b, side, side, d)
    for i in range(self.config.conv_blocks):
      x = ConvNeXtBlock(self.config, dtype=self.dtype, param_dtype=self.param_dtype, name=f"block_{i}")(x, pooled)
    return _seq(x.reshape(b, length, d))


# --------------------------------------------------------------------------- the model

class MaskedTransformer(nn.Module):
  """Bidirectional transformer over image tokens.

  __call__(ids [B, L], cond, cond_mask=None, *, drop_cond=None, adapters=True, train=False)
    -> (logits [B, L, codebook_size] float32, aux {})
  ids may hold `config.mask_id`. cond: labels [B] (maskgit) or text [B, T, Dt] (muse) or None
  (unconditional). drop_cond: bool [B], rows to run with the null condition. adapters=False
  runs the base model even if the params hold adapters.
  """
  config: MuseConfig
  dtype: Any = jnp.float32  # compute dtype (bf16 for bf16 compute; params stay param_dtype)
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, cond: jax.Array | None = None, cond_mask: jax.Array | None = None, *,
               drop_cond: jax.Array | None = None, adapters: bool = True, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    c = self.config
    layout = get_layout(c.layout)
    kw = dict(config=c, train=train, dtype=self.dtype, param_dtype=self.param_dtype)
    embed = layout.embed(**kw, name="embed")
    x, ctx = embed(ids, cond, cond_mask, drop_cond)
    image = slice(x.shape[1] - c.seq_len, None)  # the image tokens (maskgit prepends its class token)
    pooled = PooledText(**kw, name="pooled_text")(ctx["text"], ctx["text_mask"]) if c.conv_text_adaln else None
    if c.conv_blocks:
      x = x.at[:, image].set(ConvStage(**kw, name="conv_in")(x[:, image], pooled))

    weights = {}
    if adapters and c.adapters.enabled:
      weights = AdapterBank(c.adapters, c.depth, layout.adapter_sites(c), self.param_dtype, name="adapters")()

    block = nn.remat(layout.block, prevent_cse=not c.scan_layers) if c.remat else layout.block
    if c.scan_layers:
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast, 0), length=c.depth, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(**kw, name=LAYER_NAME)(x, ctx, weights)
    else:
      tuned = set(c.adapters.layer_ids(c.depth)) if weights else set()
      for i in range(c.depth):
        x, _ = block(**kw, name=f"{LAYER_NAME}_{i}")(x, ctx, layer_slice(weights, i) if i in tuned else {})

    if c.conv_blocks:
      x = x.at[:, image].set(ConvStage(**kw, name="conv_out")(x[:, image], pooled))
    logits = layout.head(**kw, name="head")(x, ctx, embed).astype(jnp.float32)
    return nn.with_logical_constraint(logits, ("act_batch", "act_length", "act_vocab")), {}


def dummy_inputs(c: MuseConfig, batch: int = 1) -> tuple[jax.Array, jax.Array]:
  """(ids, cond) of the right shapes for `init`."""
  ids = jnp.zeros((batch, c.seq_len), jnp.int32)
  if c.layout == "maskgit":
    return ids, jnp.zeros((batch,), jnp.int32)
  return ids, jnp.zeros((batch, max(c.text_len, 1), c.text_dim), jnp.float32)


def stack_layers(params: dict, depth: int) -> dict:
  """Unscanned params (layers_0..layers_{depth-1}) -> scanned (one `layers` with a leading axis).

  Works on unboxed arrays; the rest of the tree (embed, head, adapters) is shared as is.
  """
  out = {k: v for k, v in params.items() if not k.startswith(f"{LAYER_NAME}_")}
  out[LAYER_NAME] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"{LAYER_NAME}_{i}"] for i in range(depth)])
  return out


def unstack_layers(params: dict) -> dict:
  """Scanned params -> unscanned (`layers_{i}`); inverse of `stack_layers`."""
  out = {k: v for k, v in params.items() if k != LAYER_NAME}
  depth = jax.tree.leaves(params[LAYER_NAME])[0].shape[0]
  for i in range(depth):
    out[f"{LAYER_NAME}_{i}"] = jax.tree.map(lambda x: x[i], params[LAYER_NAME])
  return out


def split_adapters(params: dict) -> tuple[dict, dict | None]:
  """A tuned params tree -> (base params, adapter params or None). No arrays are copied."""
  base = {k: v for k, v in params.items() if k != "adapters"}
  return base, params.get("adapters")


def with_adapters(base_params: dict, adapter_params: dict) -> dict:
  """A tuned params tree referencing the same base arrays: {**base, "adapters": adapter_params}."""
  return {**base_params, "adapters": adapter_params}


# --------------------------------------------------------------------------- synthetic data

class SyntheticTokens:
  """Deterministic class/text-conditioned token grids, until ShapeStyle tokens exist.

  Example i (from numpy's RNG seeded with (seed, i)): a class c; a grid of side sqrt(L)
  (1 x L if L is not square) painted with class c's palette of 4 codes in class c's pattern
  (c % 4: horizontal stripes, vertical stripes, checkerboard, diagonals), a random phase and
  stripe width, and 3% random tokens. Returns {"ids": int32 [L], "label": int32 []} and, with
  text_dim > 0, "text_emb" float32 [T, Dt]: class c's fixed random embedding plus small noise.
  """

  def __init__(self, num_examples: int, seq_len: int, codebook_size: int, num_classes: int, seed: int = 0,
               text_len: int = 0, text_dim: int = 0, noise: float = 0.03):
    self.num_examples, self.seq_len, self.codebook_size = num_examples, seq_len, codebook_size
    self.num_classes, self.seed, self.text_len, self.text_dim, self.noise = num_classes, seed, text_len, text_dim, noise
    side = math.isqrt(seq_len)
    self.grid = (side, side) if side * side == seq_len else (1, seq_len)
    table = np.random.default_rng((seed, 2**31 - 1))
    n_colors = min(4, codebook_size)
    self.palettes = np.stack([table.choice(codebook_size, n_colors, replace=False) for _ in range(num_classes)])
    self.text = table.normal(size=(num_classes, text_len, text_dim)).astype(np.float32) if text_dim else None

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.num_examples:
      raise IndexError(index)
    rng = np.random.default_rng((self.seed, int(index)))
    c = int(rng.integers(self.num_classes))
    palette = self.palettes[c]
    phase, width = int(rng.integers(4)), int(rng.integers(1, 3))
    r, k = np.meshgrid(np.arange(self.grid[0]), np.arange(self.grid[1]), indexing="ij")
    kind = c % 4
    if kind == 0:
      idx = (r + phase) // width % len(palette)
    elif kind == 1:
      idx = (k + phase) // width % len(palette)
    elif kind == 2:
      idx = (r // width + k // width + phase) % 2
    else:
      idx = (r + k + phase) // width % len(palette)
    ids = palette[idx].reshape(-1)
    flip = rng.random(self.seq_len) < self.noise
    ids = np.where(flip, rng.integers(self.codebook_size, size=self.seq_len), ids).astype(np.int32)
    out = {"ids": ids, "label": np.int32(c)}
    if self.text is not None:
      out["text_emb"] = (self.text[c] + 0.05 * rng.normal(size=self.text[c].shape)).astype(np.float32)
    return out


# --------------------------------------------------------------------------- training task

def content_class(shape: Any, color: Any, count: Any) -> Any:
  """ShapeStyle content -> class id in [0, 216): the index in `shapestyle.all_contents()`."""
  from stylejax.data import shapestyle as ss
  return (shape * len(ss.COLORS) + color) * ss.MAX_COUNT + count - 1


class _ShapeStyleCaptions:
  """ShapeStyle examples + numeric fields the Muse task needs: label (content class), the
  caption's token ids/mask (strings cannot ride in numeric batches) and the shape mask where there is one."""

  def __init__(self, source, tokenize=None):
    self.source, self.tokenize = source, tokenize

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    ex = self.source[index]
    label = content_class(ex["shape"], ex["color"], ex["count"]) if "shape" in ex else 0
    out = {"image": ex["image"], "label": np.int32(label)}
    if "mask" in ex:
      out["mask"] = ex["mask"]
    if self.tokenize is not None:
      ids, mask = self.tokenize([str(ex["caption"])])
      out.update(caption_ids=ids[0], caption_mask=mask[0])
    return out


class MuseTask(Task):
  """Masked-token training of `MaskedTransformer`.

  config.model: the `MuseConfig` fields (layout, codebook_size, num_classes, width, depth, heads,
    mlp_dim, seq_len, text_dim, text_len, dropout, adapters, ...) plus the loss settings
    label_smoothing (MaskGIT 0.1), mask_schedule ("cosine" | "arccos" | "uniform"),
    min_mask_rate, cond_dropout (Muse 0.1; rows trained with the null condition for CFG),
    foreground_weight (ShapeStyle only; 0 = off, as Muse): masked tokens whose cell holds a shape pixel
    weigh 1 + foreground_weight in the loss. On ShapeStyle their accuracy is logged as shape_token_accuracy.
  config.data: name="synthetic_tokens" (num_examples, seed; a test fixture) or name="shapestyle"
    (image_size, styles, plain_fraction, heldout_prompts, num_examples, seed): images tokenized by the frozen
    `config.tokenizer` part, captions embedded by the frozen `config.text_encoder` part (muse),
    class = content class (maskgit). Parts are {workdir, config} (see `trainer.load_part`).
    name="image_captions" (path to a `data.finetune` .npz, num_examples, augment, seed): fine-tuning.
  Batches: {"ids" [B, L], "label" [B]} (maskgit) or {"ids", "text_emb" [B, T, Dt], optional
  "text_mask" [B, T]} (muse); ShapeStyle adds "foreground" [B, L] (1 where a token cell holds a shape pixel).
  """

  def __init__(self, config):
    super().__init__(config)
    self.model_config = MuseConfig.from_config(config.model, scan_layers=bool(config.get("scan_layers", False)),
                                               remat=bool(config.get("remat", False)))
    self.model = MaskedTransformer(self.model_config, dtype=jnp.dtype(config.get("compute_dtype", "float32")))
    self._tokenizer = self._text = None

  @property
  def image_tokenizer(self):
    """The frozen VQ tokenizer part (loaded on first use)."""
    if self._tokenizer is None:
      from stylejax.models.parts import load_image_tokenizer
      self._tokenizer = load_image_tokenizer(self.config.tokenizer)
      if self._tokenizer.seq_len != self.model_config.seq_len or \
         self._tokenizer.codebook_size != self.model_config.codebook_size:
        raise ConfigError(f"the tokenizer gives {self._tokenizer.seq_len} ids from {self._tokenizer.codebook_size} "
                          f"codes; set model.seq_len={self._tokenizer.seq_len} and "
                          f"model.codebook_size={self._tokenizer.codebook_size}.")
    return self._tokenizer

  @property
  def text_encoder(self):
    """The frozen CLIP text encoder part (muse layout; loaded on first use)."""
    if self._text is None:
      from stylejax.models.parts import load_text_encoder
      self._text = load_text_encoder(self.config.text_encoder)
      c = self.model_config
      if (self._text.dim, self._text.max_len) != (c.text_dim, c.text_len):
        raise ConfigError(f"the text encoder gives [T={self._text.max_len}, D={self._text.dim}] embeddings; "
                          f"set model.text_len={self._text.max_len} and model.text_dim={self._text.dim}.")
    return self._text

  def init(self, rng):
    ids, cond = dummy_inputs(self.model_config)
    return self.model.init({"params": rng}, ids, cond)["params"]

  def loss(self, params, batch, rng):
    m, c = self.config.model, self.model_config
    mask_rng, drop_rng, dropout_rng = jax.random.split(rng, 3)
    ids = batch["ids"]
    masked_ids, mask = losses.mask_tokens(mask_rng, ids, c.mask_id, m.get("mask_schedule", "cosine"),
                                          m.get("min_mask_rate", 0.0))
    p_drop = m.get("cond_dropout", 0.0)
    drop = losses.cond_dropout_mask(drop_rng, ids.shape[0], p_drop) if p_drop else None
    if c.layout == "maskgit":
      cond, cond_mask = batch["label"], None
    else:
      cond, cond_mask = batch["text_emb"], batch.get("text_mask")
    logits, aux = self.model.apply({"params": params}, masked_ids, cond, cond_mask, drop_cond=drop, train=True,
                                   rngs={"dropout": dropout_rng})
    fg, fg_weight = batch.get("foreground"), m.get("foreground_weight", 0.0)
    weight = 1.0 + fg_weight * fg if fg is not None and fg_weight else None
    loss, metrics = losses.masked_token_loss(logits, ids, mask, m.get("label_smoothing", 0.0), weight)
    if fg is not None:  # the tokens that decide which shape is drawn (launch/shape_probe.py's token_acc)
      shape = mask & (fg > 0)
      metrics["shape_token_accuracy"] = ((jnp.argmax(logits, -1) == ids) & shape).sum() / jnp.maximum(shape.sum(), 1)
    return loss, {**aux, **metrics}

  def source(self, split="train"):
    d, c = self.config.data, self.model_config
    name = d.get("name", "synthetic_tokens")
    if name == "shapestyle":
      from stylejax.data import shapestyle as ss
      base = ss.ShapeStyleSource(split=split, image_size=d.image_size, seed=d.get("seed", 0),
                                 styles=d.get("styles", "named+plain"), num_examples=d.num_examples,
                                 plain_fraction=d.get("plain_fraction", None),
                                 heldout_prompts=d.get("heldout_prompts", 0.0))
      return _ShapeStyleCaptions(base, self.text_encoder.tokenize if c.layout != "maskgit" else None)
    if name == "image_captions":  # a small fine-tuning set (StyleDrop); text-conditioned only
      if c.layout == "maskgit":
        raise ConfigError("data.name='image_captions' needs a text-conditioned (muse) model.")
      from stylejax.data.finetune import ImageCaptionSource
      base = ImageCaptionSource(d.path, d.num_examples, d.get("seed", 0), d.get("augment", "flip,shift"),
                                d.get("image_size"))
      return _ShapeStyleCaptions(base, self.text_encoder.tokenize)
    if name != "synthetic_tokens":
      raise ConfigError(f"data.name={name!r}; MuseTask knows 'synthetic_tokens', 'shapestyle' and 'image_captions'.")
    seed = d.get("seed", 0) + (0 if split == "train" else 1)
    num_classes = c.num_classes if c.layout == "maskgit" else d.get("num_classes", 10)
    text_dim = c.text_dim if c.layout != "maskgit" else 0
    return SyntheticTokens(d.get("num_examples", 1024), c.seq_len, c.codebook_size, num_classes, seed,
                           text_len=max(c.text_len, 1) if text_dim else 0, text_dim=text_dim)

  def prepare_batch(self, batch):
    """ShapeStyle batches: images -> ids with the frozen tokenizer; captions -> text embeddings."""
    if "image" not in batch:
      return batch
    out = {"ids": self.image_tokenizer.encode(batch["image"]), "label": batch["label"]}
    if "mask" in batch:  # [B, S, S] shape masks -> [B, L] float {0, 1} per token cell
      from stylejax.data.shapestyle import shape_token_mask
      grid = int(round(self.model_config.seq_len ** 0.5))
      out["foreground"] = shape_token_mask(np.asarray(batch["mask"]), grid).astype(np.float32)
    if self.model_config.layout != "maskgit":
      out["text_emb"], out["text_mask"] = self.text_encoder.embed_ids(batch["caption_ids"], batch["caption_mask"])
    return out

  def flops_per_example(self):
    c = self.model_config
    d, m, k = c.width, c.mlp_dim, c.codebook_size
    s = c.seq_len + (1 if c.layout == "maskgit" else 0)
    mlp = 2 * d * m * (3 if c.gated_mlp else 2)
    layer = s * (8 * d * d + 4 * s * d + mlp)  # q/k/v/o projections + scores/values + MLP
    if c.layout == "muse":
      t = max(c.text_len, 1)
      layer += s * (4 * d * d + 4 * t * d) + 4 * t * d * d  # cross-attn q/o, scores, k/v on text
    head = s * 2 * d * k + (s * 2 * d * d if c.layout == "maskgit" else 0)
    conv = 2 * c.conv_blocks * c.seq_len * (2 * c.conv_kernel ** 2 * d + 16 * d * d)  # depthwise + 2 pointwise
    if c.conv_text_adaln:
      conv += 4 * d * d + 2 * c.conv_blocks * 4 * d * d  # pooled-text MLP + each block's scale / shift mapper
    return 3.0 * (c.depth * layer + head + conv)
