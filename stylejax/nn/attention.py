"""Multi-head attention (self and cross) with logically named q/k/v/out kernels.

Scores go through `jax.nn.dot_product_attention`, whose XLA path accumulates the logits and
the softmax in float32 even for bf16 inputs. Optional LoRA updates attach to the four
projections (see `stylejax.nn.adapters`); StyleDrop adapters are applied by the caller to
this module's output (after the output projection, before the residual add).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from stylejax.config import ConfigError
from stylejax.nn.adapters import lora_delta

DEFAULT_INIT = nn.initializers.truncated_normal(0.02)  # BERT / MaskGIT init
LORA_PROJS = ("query", "key", "value", "out")


class Projection(nn.Module):
  """x [..., *in] -> [..., *features]: contracts the trailing in-dims with a [*in, *features] kernel.

  `names` label the kernel's dims (in-dims then features). Unlike `nn.DenseGeneral`, the kernel
  is boxed with its names at its true rank (DenseGeneral boxes the flattened 2-D init, which a
  mesh-aware logical constraint then rejects); variance-scaling inits still see the flat
  (fan_in, fan_out) shape.
  """
  features: tuple[int, ...]
  names: tuple[str | None, ...]
  use_bias: bool = True
  kernel_init: Any = DEFAULT_INIT
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_out = len(self.features)
    n_in = len(self.names) - n_out
    shape = x.shape[x.ndim - n_in:] + tuple(self.features)

    def init(rng, shape, dtype):
      flat = (math.prod(shape[:n_in]), math.prod(shape[n_in:]))
      return jnp.reshape(self.kernel_init(rng, flat, dtype), shape)

    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.names), shape, self.param_dtype)
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=n_in)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.names[n_in:]),
                        tuple(self.features), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class MultiHeadAttention(nn.Module):
  """x [B, Lq, D] (and context [B, Lk, Dc] for cross-attention) -> [B, Lq, out_dim or D].

  Kernels: query/key/value [D, heads, kv] named ("embed", "heads", "kv"); out [heads, kv, D]
  named ("heads", "kv", "embed").
  """
  num_heads: int
  head_dim: int | None = None  # default D // num_heads
  out_dim: int | None = None  # default D
  use_bias: bool = True
  kernel_init: Any = DEFAULT_INIT
  lora_scale: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, *, mask: jax.Array | None = None,
               bias: jax.Array | None = None,
               lora: Mapping[str, tuple[jax.Array, jax.Array]] | None = None) -> jax.Array:
    """mask: bool, broadcastable to [B, heads, Lq, Lk], True = attend. bias: additive, same shape.

    lora: optional {"query"|"key"|"value"|"out": (A, B)} low-rank updates for this layer.
    """
    lora = lora or {}
    unknown = set(lora) - set(LORA_PROJS)
    if unknown:
      raise ConfigError(f"LoRA targets {sorted(unknown)} are not attention projections {LORA_PROJS}.")
    context = x if context is None else context
    width = x.shape[-1]
    head_dim = self.head_dim or width // self.num_heads
    head_names = ("act_batch", "act_length", "act_heads", "act_kv")

    def project(name: str, inp: jax.Array) -> jax.Array:
      y = Projection((self.num_heads, head_dim), ("embed", "heads", "kv"), use_bias=self.use_bias,
                     kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype, name=name)(inp)
      if name in lora:
        y = y + lora_delta(inp.astype(y.dtype), lora[name], self.lora_scale)
      return nn.with_logical_constraint(y, head_names)

    q = project("query", x)
    k = project("key", context)
    v = project("value", context)
    if bias is not None:
      bias = bias.astype(jnp.float32)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
    out = nn.with_logical_constraint(out, head_names)
    y = Projection((self.out_dim or width,), ("heads", "kv", "embed"), use_bias=self.use_bias,
                   kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)
    if "out" in lora:
      y = y + lora_delta(out, lora["out"], self.lora_scale)
    return nn.with_logical_constraint(y, ("act_batch", "act_length", "act_embed"))
