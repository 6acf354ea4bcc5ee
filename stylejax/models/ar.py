"""Decoder-only token LM (Llama / Qwen2 / Chameleon family) with a static, explicit KV cache.

Layer: x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x)). Attention is GQA (kv_heads divides
heads; q head h reads kv head h // (heads / kv_heads), as transformers' `repeat_kv`), with
optional q/k/v bias (Qwen2), optional per-head QK-norm (Chameleon LayerNorm or Qwen3 RMSNorm),
and RoPE on explicit positions (1D, or 2D over an image grid as LlamaGen).

The cache is a plain pytree (`KVCache`) passed in and returned: `model.apply(params, tokens,
positions, cache) -> (logits, new_cache)`, so prefill and decode are the same pure function.
It is stored in the layouts attention reads (keys [B, kv_heads, Dh, S], values [B, kv_heads, S, Dh]
per layer), and each layer writes its new keys/values with one `dynamic_update_slice`, so under a
`fori_loop` carry XLA updates the buffers in place: a decode step transposes and re-stacks nothing
cache-sized. Unrolled layers keep one buffer each (a tuple), which the attention dots read directly;
scanned layers need one stacked [layers, ...] array, carried through the scan, so each layer reads a
copy of its slice.
Masking works on cache *slots*: a query in slot q sees key slots s <= q that hold real tokens
(`valid`), plus itself. Padding can therefore sit anywhere in a prompt (e.g. a dropped text
prefix in a CFG unconditional row); padding tokens only attend to themselves, so every softmax
row stays finite.

Conditioning: `prefix_embeds` [B, P, D or text_dim] are prepended (through Dense 'prefix_proj'
when `text_dim` > 0); class/text conditioning by token ids needs nothing special; and
`input_embeds_override=(mask [B, L], vectors [B, K, D])` writes the k-th vector of a row into
that row's k-th masked token position (StyleAR's 16 style-token placeholders).

LoRA (optional, `lora_rank` > 0; Hu et al. 2021, StyleAR's recipe: rank 4, no alpha, so scale 1):
`y = x W + (x A) B` on the sites named in `lora_targets` ("q", "k", "v", "o", "gate", "up",
"down", "lm_head"). A is normal(1/sqrt(fan_in)), B is zero, so a fresh LoRA model computes
exactly the base model. The two matrices are params `lora_a` / `lora_b`: inside the Projection
for q/k/v/o (`layers_i/attn/q/lora_a`), in a sibling module for Dense sites
(`layers_i/mlp/down_lora/lora_a`, `lm_head_lora/lora_a`), so the regex `lora_[ab]$` selects
every one of them and nothing else; the base params keep their names.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from stylejax.config import ConfigError
from stylejax.nn import rope as rope_lib
from stylejax.nn.adapters import lora_delta

Array = jax.Array


class KVCache(NamedTuple):
  """Static-size KV cache; a pytree, so it crosses jit / scan / fori_loop boundaries as is.

  Size it for the whole run (prompt + generated): a write past the end is not an error under
  jit (dynamic_update_slice clamps its start) and would silently overwrite the last slots.
  """
  # Keys are stored transposed, S minor, so the decode step's q.K dot reads contiguous slots (XLA:CPU
  # runs it ~2.5x faster than on [S, head_dim] rows); values keep [S, head_dim] for p.V.
  k: Any  # scan_layers: [layers, B, kv_heads, head_dim, S]; else a tuple of `layers` [B, kv_heads, head_dim, S]
  v: Any  # scan_layers: [layers, B, kv_heads, S, head_dim]; else a tuple of `layers` [B, kv_heads, S, head_dim]
  valid: Array  # [B, S] bool: slot holds a real (non-padding) token
  index: Array  # [] int32: next slot to write

  @property
  def max_len(self) -> int:
    return jax.tree.leaves(self.v)[0].shape[-2]


class LayerKV(NamedTuple):
  """One layer's view of the cache (layouts as in `KVCache`). Unrolled: the layer's own k/v and layer
  None. Scanned: the stacked k/v and the [] int32 index of the layer to write (the Block advances it,
  so it rides in the scan carry)."""
  k: Array
  v: Array
  layer: Array | None


def _dtype(d: Any) -> jnp.dtype:
  return jnp.dtype(d)


def _init(std: float, names: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down", "lm_head")


class LoRAConfig(NamedTuple):
  """Which sites get a LoRA and of what rank (hashable: a module field). rank 0 = none."""
  rank: int = 0
  targets: tuple[str, ...] = ("q", "k", "v", "o", "down", "lm_head")  # StyleAR's sites
  init_std: float | None = None  # std of A; None = 1/sqrt(fan_in)

  def on(self, site: str) -> bool:
    return self.rank > 0 and site in self.targets


def _lora_params(module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 names: tuple[str, ...], cfg: LoRAConfig, param_dtype: Any) -> tuple[Array, Array]:
  """Declares (lora_a [*in, r], lora_b [r, *out]) on `module`; names = logical names of in + out dims."""
  n_in = len(in_shape)
  fan_in = 1
  for d in in_shape:
    fan_in *= d
  std = cfg.init_std if cfg.init_std is not None else fan_in ** -0.5
  a = module.param("lora_a", _init(std, names[:n_in] + ("adapter",)), (*in_shape, cfg.rank), param_dtype)
  b = module.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, ("adapter",) + names[n_in:]),
                   (cfg.rank, *out_shape), param_dtype)
  return a, b


class DenseLoRA(nn.Module):
  """The LoRA update of a Dense site, `(x A) B` [..., out] (added to the Dense output by the caller)."""
  features: int
  names: tuple[str, str]
  cfg: LoRAConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    ab = _lora_params(self, (x.shape[-1],), (self.features,), self.names, self.cfg, self.param_dtype)
    return lora_delta(x.astype(self.dtype), ab, 1.0)


def overwrite_positions(x: Array, mask: Array, vectors: Array) -> Array:
  """x [B, L, D]; mask [B, L] bool; vectors [B, K, D] -> x with the k-th True position of each
  row replaced by vectors[b, k]. Rows with more than K True positions reuse vector K-1."""
  k = vectors.shape[1]
  idx = jnp.clip(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0, k - 1)  # [B, L]
  gathered = jnp.take_along_axis(vectors, idx[..., None], axis=1)  # [B, L, D]
  return jnp.where(mask[..., None], gathered.astype(x.dtype), x)


class RMSNorm(nn.Module):
  """x * rsqrt(mean(x^2) + eps) * scale, statistics in float32 (transformers' LlamaRMSNorm)."""
  eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return y.astype(self.dtype) * scale.astype(self.dtype)


class HeadLayerNorm(nn.Module):
  """Chameleon QK-norm: LayerNorm over head_dim (eps 1e-5) with a separate affine per head."""
  eps: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:  # x [B, L, H, D]
    shape = x.shape[-2:]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("heads", "kv")), shape,
                       self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")), shape,
                      self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * scale + bias).astype(self.dtype)


class Projection(nn.Module):
  """y = x . kernel (+ bias) contracting the last `in_axes` dims of x; kernel [*in, *out].

  Our own DenseGeneral: flax's reshapes a boxed kernel to 2D at init, which breaks logical
  sharding constraints of rank-3 kernels under a mesh.
  """
  out_shape: tuple[int, ...]
  names: tuple[str, ...]  # logical names of the kernel, in then out dims
  in_axes: int = 1
  use_bias: bool = False
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  lora: LoRAConfig = LoRAConfig()  # rank > 0: adds params lora_a [*in, r], lora_b [r, *out]

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[x.ndim - self.in_axes:]
    kernel = self.param("kernel", _init(self.init_std, self.names), (*in_shape, *self.out_shape), self.param_dtype)
    contract = (tuple(range(x.ndim - self.in_axes, x.ndim)), tuple(range(self.in_axes)))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ())))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.names[self.in_axes:]),
                        self.out_shape, self.param_dtype)
      y = y + bias.astype(self.dtype)
    if self.lora.rank > 0:
      ab = _lora_params(self, tuple(in_shape), self.out_shape, self.names, self.lora, self.param_dtype)
      y = y + lora_delta(x.astype(self.dtype), ab, 1.0)
    return y


def slot_mask(q_slots: Array, kv_valid: Array) -> Array:
  """q_slots [L] int, kv_valid [B, S] bool -> [B, L, S]: causal over slots, real keys only, plus
  the diagonal (so padding queries attend to themselves and never produce NaN)."""
  k_slots = jnp.arange(kv_valid.shape[1])
  causal = k_slots[None, :] <= q_slots[:, None]
  diag = k_slots[None, :] == q_slots[:, None]
  return (causal[None] & kv_valid[:, None, :]) | diag[None]


class Attention(nn.Module):
  """GQA self-attention over an optional per-layer KV cache."""
  heads: int
  kv_heads: int
  head_dim: int
  qkv_bias: bool = False
  out_bias: bool = False
  qk_norm: str = "none"  # "none" | "layernorm" (Chameleon) | "rms" (Qwen3)
  rms_eps: float = 1e-6
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  lora: LoRAConfig = LoRAConfig()

  @nn.compact
  def __call__(self, x: Array, kv: LayerKV | None, cos: Array, sin: Array, mask: Array,
               index: Array) -> tuple[Array, LayerKV | None]:
    """x [B, L, D]; kv: a `LayerKV` or None; cos/sin [B, L, Dh]; mask [B, L, S or L].
    Returns (out [B, L, D], kv with this call's keys/values written at slots [index, index + L))."""
    if self.heads % self.kv_heads:
      raise ConfigError(f"heads={self.heads} must be a multiple of kv_heads={self.kv_heads}.")
    lora = lambda n: self.lora if self.lora.on(n) else LoRAConfig()
    dense = lambda n, feats, names, bias: Projection(feats, names, 1, bias, self.init_std, self.dtype,
                                                     self.param_dtype, lora(n), name=n)
    q = dense("q", (self.heads, self.head_dim), ("embed", "heads", "kv"), self.qkv_bias)(x)
    k = dense("k", (self.kv_heads, self.head_dim), ("embed", "heads", "kv"), self.qkv_bias)(x)
    v = dense("v", (self.kv_heads, self.head_dim), ("embed", "heads", "kv"), self.qkv_bias)(x)
    if self.qk_norm == "layernorm":  # Chameleon normalises before RoPE
      q = HeadLayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="q_norm")(q)
      k = HeadLayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="k_norm")(k)
    elif self.qk_norm == "rms":
      q = RMSNorm(self.rms_eps, self.dtype, self.param_dtype, name="q_norm")(q)
      k = RMSNorm(self.rms_eps, self.dtype, self.param_dtype, name="k_norm")(k)
    elif self.qk_norm != "none":
      raise ConfigError(f"qk_norm={self.qk_norm!r}; use 'none', 'layernorm' or 'rms'.")
    q = rope_lib.apply_rotary(q, cos, sin)
    k = rope_lib.apply_rotary(k, cos, sin)
    q = nn.with_logical_constraint(q, ("act_batch", "act_length", "act_heads", "act_kv"))
    # the cache layouts (k [B, Hkv, Dh, L], v [B, Hkv, L, Dh]): only these L new rows are ever transposed
    k, v = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)

    if kv is not None and kv.layer is None:  # this layer's own buffers
      k = jax.lax.dynamic_update_slice(kv.k, k.astype(kv.k.dtype), (0, 0, 0, index))
      v = jax.lax.dynamic_update_slice(kv.v, v.astype(kv.v.dtype), (0, 0, index, 0))
      kv = LayerKV(k, v, None)
    elif kv is not None:  # stacked (scan): write at [layer], then read that layer's slice
      ck = jax.lax.dynamic_update_slice(kv.k, k[None].astype(kv.k.dtype), (kv.layer, 0, 0, 0, index))
      cv = jax.lax.dynamic_update_slice(kv.v, v[None].astype(kv.v.dtype), (kv.layer, 0, 0, index, 0))
      kv = LayerKV(ck, cv, kv.layer)
      k = jax.lax.dynamic_index_in_dim(ck, kv.layer, 0, keepdims=False)
      v = jax.lax.dynamic_index_in_dim(cv, kv.layer, 0, keepdims=False)
    k = nn.with_logical_constraint(k.astype(self.dtype), ("act_batch", "act_heads", "act_kv", "act_length"))
    v = nn.with_logical_constraint(v.astype(self.dtype), ("act_batch", "act_heads", "act_length", "act_kv"))

    b, l = q.shape[:2]
    groups = self.heads // self.kv_heads
    qg = q.reshape(b, l, self.kv_heads, groups, self.head_dim).transpose(0, 2, 3, 1, 4)  # [B, Hkv, G, L, Dh]
    scores = jnp.einsum("bkgld,bkds->bkgls", qg, k).astype(jnp.float32) * self.head_dim ** -0.5
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    # bkgld, then transposed: asking the dot for blkgd directly makes XLA:CPU pick a layout ~7x slower at decode
    out = jnp.einsum("bkgls,bksd->bkgld", probs, v).transpose(0, 3, 1, 2, 4)
    out = out.reshape(b, l, self.heads, self.head_dim)
    out = Projection((x.shape[-1],), ("heads", "kv", "embed"), 2, self.out_bias, self.init_std, self.dtype,
                     self.param_dtype, lora("o"), name="o")(out)
    return out, kv


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""
  mlp_dim: int
  use_bias: bool = False
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  lora: LoRAConfig = LoRAConfig()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    def dense(n, feats, names):
      layer = nn.Dense(feats, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, name=n,
                       kernel_init=_init(self.init_std, names),
                       bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))
      if not self.lora.on(n):
        return layer
      delta = DenseLoRA(feats, names, self.lora, self.dtype, self.param_dtype, name=f"{n}_lora")
      return lambda h: layer(h) + delta(h)
    h = nn.silu(dense("gate", self.mlp_dim, ("embed", "mlp"))(x)) * dense("up", self.mlp_dim, ("embed", "mlp"))(x)
    h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
    return dense("down", x.shape[-1], ("mlp", "embed"))(h)


class Block(nn.Module):
  """Pre-norm decoder layer on carry = (x [B, L, D], kv: LayerKV | None); returns (carry, None),
  the signature nn.scan stacks (the cache rides in the carry, so the scan updates it in place)."""
  heads: int
  kv_heads: int
  head_dim: int
  mlp_dim: int
  rms_eps: float = 1e-6
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  qk_norm: str = "none"
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  lora: LoRAConfig = LoRAConfig()

  @nn.compact
  def __call__(self, carry: tuple[Array, LayerKV | None], cos: Array, sin: Array, mask: Array,
               index: Array) -> tuple[tuple[Array, LayerKV | None], None]:
    x, kv = carry
    h = RMSNorm(self.rms_eps, self.dtype, self.param_dtype, name="attn_norm")(x)
    h, kv = Attention(self.heads, self.kv_heads, self.head_dim, self.qkv_bias, self.out_bias, self.qk_norm,
                      self.rms_eps, self.init_std, self.dtype, self.param_dtype, self.lora, name="attn")(
                          h, kv, cos, sin, mask, index)
    x = nn.with_logical_constraint(x + h, ("act_batch", "act_length", "act_embed"))
    h = RMSNorm(self.rms_eps, self.dtype, self.param_dtype, name="mlp_norm")(x)
    h = MLP(self.mlp_dim, self.mlp_bias, self.init_std, self.dtype, self.param_dtype, self.lora, name="mlp")(h)
    x = nn.with_logical_constraint(x + h, ("act_batch", "act_length", "act_embed"))
    if kv is not None and kv.layer is not None:  # scanned: the next layer writes the next slice
      kv = kv._replace(layer=kv.layer + 1)
    return (x, kv), None


class DecoderLM(nn.Module):
  """Token decoder. See the module docstring; every field is a plain config value."""
  vocab_size: int
  hidden: int
  layers: int
  heads: int
  kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10000.0
  rms_eps: float = 1e-6
  qkv_bias: bool = False  # Qwen2: bias on q/k/v
  out_bias: bool = False  # Llama attention_bias=True also biases o_proj
  mlp_bias: bool = False
  qk_norm: Any = "none"  # "none" | "layernorm" (Chameleon) | "rms" (Qwen3); True means "layernorm"
  tie_embeddings: bool = False
  rope: str = "1d"  # "1d": positions [B, L]; "2d": positions [B, L, 2] (row, col)
  grid: tuple[int, int] = (0, 0)  # image token grid (rows, cols) for rope="2d" samplers
  max_len: int = 2048  # default KV-cache length
  text_dim: int = 0  # > 0: prefix_embeds of this width go through Dense 'prefix_proj'
  scan_layers: bool = False
  remat: bool = False
  init_std: float = 0.02
  lora_rank: int = 0  # > 0: LoRA of this rank on `lora_targets` (see the module docstring)
  lora_targets: tuple[str, ...] = ("q", "k", "v", "o", "down", "lm_head")
  lora_init_std: float | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @property
  def lora(self) -> LoRAConfig:
    unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
    if unknown:
      raise ConfigError(f"lora_targets {unknown} are not LoRA sites; use some of {list(LORA_TARGETS)}.")
    if self.lora_rank < 0:
      raise ConfigError(f"lora_rank={self.lora_rank} must be >= 0 (0 = no LoRA).")
    return LoRAConfig(int(self.lora_rank), tuple(self.lora_targets), self.lora_init_std)

  @property
  def qk_norm_kind(self) -> str:
    if self.qk_norm is True:
      return "layernorm"
    if self.qk_norm is False or self.qk_norm is None:
      return "none"
    return str(self.qk_norm)

  def init_cache(self, batch: int, max_len: int | None = None, dtype: Any = None) -> KVCache:
    """An empty cache of `max_len` slots (default `self.max_len`), in the compute dtype."""
    return init_cache(self, batch, max_len, dtype)

  @nn.compact
  def __call__(self, tokens: Array | None, positions: Array | None = None, cache: KVCache | None = None, *,
               prefix_embeds: Array | None = None, attention_mask: Array | None = None,
               input_embeds_override: tuple[Array, Array] | None = None,
               last_only: bool = False) -> tuple[Array, KVCache | None]:
    """Runs T = P + L positions: prefix_embeds [B, P, *] then tokens [B, L].

    positions: [B, T] (rope '1d') or [B, T, 2] (rope '2d'); for '1d' it defaults to the count of
      real tokens before each position (cache included), so padding does not shift positions.
    cache: a `KVCache`; this call writes slots [cache.index, cache.index + T). None: no cache.
    attention_mask: [B, T] bool, False for padding (default all True).
    input_embeds_override: (mask [B, L] bool over token positions, vectors [B, K, hidden]).
    last_only: return logits for the last position only ([B, 1, V]).
    Returns (logits [B, T, V] float32, new cache or None).
    """
    dtype, pdtype = _dtype(self.dtype), _dtype(self.param_dtype)
    embed = nn.Embed(self.vocab_size, self.hidden, dtype=dtype, param_dtype=pdtype, name="embed",
                     embedding_init=_init(self.init_std, ("vocab", "embed")))
    parts = []
    if prefix_embeds is not None:
      p = prefix_embeds.astype(dtype)
      if self.text_dim:
        p = nn.Dense(self.hidden, dtype=dtype, param_dtype=pdtype, name="prefix_proj",
                     kernel_init=_init(self.init_std, ("conv_in", "embed")),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(p)
      elif p.shape[-1] != self.hidden:
        raise ValueError(f"prefix_embeds width {p.shape[-1]} != hidden {self.hidden}; set text_dim to project it.")
      parts.append(p)
    if tokens is not None:
      e = embed(tokens)
      if input_embeds_override is not None:
        omask, vectors = input_embeds_override
        e = overwrite_positions(e, omask, vectors)
      parts.append(e)
    if not parts:
      raise ValueError("DecoderLM needs tokens or prefix_embeds.")
    x = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
    b, t = x.shape[:2]

    valid = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    if positions is None:
      if self.rope != "1d":
        raise ValueError("rope='2d' needs explicit positions [B, T, 2]; see stylejax.nn.rope.grid_positions.")
      before = jnp.zeros((b,), jnp.int32) if cache is None else jnp.sum(cache.valid, axis=1, dtype=jnp.int32)
      positions = jnp.maximum(before[:, None] + jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
    cos, sin = rope_lib.rope_tables(positions, self.head_dim, self.rope_theta, self.rope)

    if cache is None:
      index, kv_valid = jnp.zeros((), jnp.int32), valid
    else:
      if isinstance(cache.k, (tuple, list)) == self.scan_layers:
        raise ValueError(f"KV cache layout does not match scan_layers={self.scan_layers}; make it with "
                         "model.init_cache(...) for this model.")
      index = cache.index
      kv_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, index))
    mask = slot_mask(index + jnp.arange(t), kv_valid)

    block_kwargs = dict(heads=self.heads, kv_heads=self.kv_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
                        rms_eps=self.rms_eps, qkv_bias=self.qkv_bias, out_bias=self.out_bias, mlp_bias=self.mlp_bias,
                        qk_norm=self.qk_norm_kind, init_std=self.init_std, dtype=dtype, param_dtype=pdtype,
                        lora=self.lora)
    block_cls = Block
    if self.remat:
      block_cls = nn.remat(Block, prevent_cse=not self.scan_layers)
    if self.scan_layers:
      stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast), length=self.layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      kv = None if cache is None else LayerKV(cache.k, cache.v, jnp.zeros((), jnp.int32))
      (x, kv), _ = stack(**block_kwargs, name="layers")((x, kv), cos, sin, mask, index)
      new_kv = None if cache is None else (kv.k, kv.v)
    else:
      ks, vs = (None, None) if cache is None else (list(cache.k), list(cache.v))
      for i in range(self.layers):
        kv = None if cache is None else LayerKV(ks[i], vs[i], None)
        (x, kv), _ = block_cls(**block_kwargs, name=f"layers_{i}")((x, kv), cos, sin, mask, index)
        if kv is not None:
          ks[i], vs[i] = kv.k, kv.v
      new_kv = None if cache is None else (tuple(ks), tuple(vs))

    x = RMSNorm(self.rms_eps, dtype, pdtype, name="final_norm")(x)
    if last_only:
      x = x[:, -1:]
    if self.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(self.vocab_size, use_bias=False, dtype=dtype, param_dtype=pdtype, name="lm_head",
                        kernel_init=_init(self.init_std, ("embed", "vocab")))(x)
    if self.lora.on("lm_head"):
      logits = logits + DenseLoRA(self.vocab_size, ("embed", "vocab"), self.lora, dtype, pdtype, name="lm_head_lora")(x)
    logits = nn.with_logical_constraint(logits.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"))
    new_cache = None if cache is None else KVCache(new_kv[0], new_kv[1], kv_valid, index + t)
    return logits, new_cache


def decoder_from_config(model_cfg: Mapping[str, Any], **overrides: Any) -> DecoderLM:
  """DecoderLM from a flat mapping (e.g. `config.model`); unknown keys raise, lists become tuples
  (modules must be hashable to be static jit arguments). `overrides` win (dtype=..., scan_layers=...)."""
  fields = {f.name for f in dataclasses.fields(DecoderLM)} - {"parent", "name"}
  kwargs = {**dict(model_cfg), **overrides}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ConfigError(f"unknown DecoderLM config keys {unknown}; valid: {sorted(fields)}.")
  return DecoderLM(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})


def init_cache(model: DecoderLM, batch: int, max_len: int | None = None, dtype: Any = None) -> KVCache:
  """Empty `KVCache` for `model`: k [.., batch, kv_heads, head_dim, max_len] and v [.., batch, kv_heads,
  max_len, head_dim], stacked on a leading layers axis when `model.scan_layers`, else tuples of `layers`."""
  s = max_len or model.max_len
  dt = _dtype(dtype or model.dtype)
  k_shape, v_shape = (batch, model.kv_heads, model.head_dim, s), (batch, model.kv_heads, s, model.head_dim)
  if model.scan_layers:  # separate buffers for k and v (and per layer): each may be donated
    make = lambda shape: jnp.zeros((model.layers, *shape), dt)
  else:
    make = lambda shape: tuple(jnp.zeros(shape, dt) for _ in range(model.layers))
  return KVCache(make(k_shape), make(v_shape), jnp.zeros((batch, s), bool), jnp.zeros((), jnp.int32))


def lm_loss(logits: Array, targets: Array, weights: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """Next-token cross-entropy. logits [B, L, V] (already aligned with targets [B, L]); weights [B, L]."""
  w = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  denom = jnp.maximum(jnp.sum(w), 1.0)
  loss = jnp.sum(nll * w) / denom
  accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) * w) / denom
  return loss, {"accuracy": accuracy}


def stack_layer_params(params: dict, layers: int) -> dict:
  """Unscanned params ('layers_0'..'layers_{n-1}') -> scanned layout ('layers', leading axis)."""
  out = {k: v for k, v in params.items() if not k.startswith("layers_")}
  out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"layers_{i}"] for i in range(layers)])
  return out


def unstack_layer_params(params: dict, layers: int) -> dict:
  """Scanned params ('layers', leading axis) -> unscanned ('layers_0'..)."""
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(layers):
    out[f"layers_{i}"] = jax.tree.map(lambda x: x[i], params["layers"])
  return out
