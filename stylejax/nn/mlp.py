"""Transformer feed-forward: Dense -> activation -> Dense, or the gated form act(x Wg) * (x Wi)."""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from stylejax.config import ConfigError
from stylejax.nn.adapters import lora_delta

DEFAULT_INIT = nn.initializers.truncated_normal(0.02)
ACTIVATIONS = {
    "gelu": nn.gelu,  # tanh approximation (flax default; what MaskGIT's flax code gets)
    "gelu_exact": lambda x: nn.gelu(x, approximate=False),
    "silu": nn.silu,
    "relu": nn.relu,
}
LORA_PROJS = ("in", "gate", "out")


class MLP(nn.Module):
  """x [B, L, D] -> [B, L, out_dim or D] through a hidden width `hidden` (logical 'mlp').

  Kernels: wi/wg [D, hidden] ("embed", "mlp"), wo [hidden, D] ("mlp", "embed").
  gated=True gives GLU variants (act(x Wg) * x Wi; silu -> SwiGLU, gelu -> GeGLU).
  """
  hidden: int
  out_dim: int | None = None
  gated: bool = False
  activation: str = "gelu"
  use_bias: bool = True
  kernel_init: Any = DEFAULT_INIT
  lora_scale: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, lora: Mapping[str, tuple[jax.Array, jax.Array]] | None = None) -> jax.Array:
    """lora: optional {"in"|"gate"|"out": (A, B)} low-rank updates for this layer."""
    lora = lora or {}
    if set(lora) - set(LORA_PROJS):
      raise ConfigError(f"LoRA targets {sorted(set(lora) - set(LORA_PROJS))} are not MLP projections {LORA_PROJS}.")
    if self.activation not in ACTIVATIONS:
      raise ConfigError(f"MLP activation {self.activation!r}; use one of {sorted(ACTIVATIONS)}.")
    act = ACTIVATIONS[self.activation]
    named = nn.with_logical_partitioning

    def dense(name: str, inp: jax.Array, features: int, names: tuple[str, str], lora_key: str) -> jax.Array:
      y = nn.Dense(features, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                   kernel_init=named(self.kernel_init, names),
                   bias_init=named(nn.initializers.zeros, names[1:]))(inp)
      if lora_key in lora:
        y = y + lora_delta(inp.astype(y.dtype), lora[lora_key], self.lora_scale)
      return y

    h = dense("wi", x, self.hidden, ("embed", "mlp"), "in")
    if self.gated:
      h = act(dense("wg", x, self.hidden, ("embed", "mlp"), "gate")) * h
    else:
      h = act(h)
    h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
    y = dense("wo", h, self.out_dim or x.shape[-1], ("mlp", "embed"), "out")
    return nn.with_logical_constraint(y, ("act_batch", "act_length", "act_embed"))
