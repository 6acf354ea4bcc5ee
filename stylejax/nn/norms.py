"""Normalisation layers whose params carry logical axis names ('norm').

Thin subclasses of flax's own layers (same param names `scale`/`bias`, so no extra nesting
level in the params tree); only the initialisers are boxed with logical names. Statistics are
computed in float32 (flax's `force_float32_reductions`), so bf16 compute keeps stable norms.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn

_ones = nn.with_logical_partitioning(nn.initializers.ones, ("norm",))
_zeros = nn.with_logical_partitioning(nn.initializers.zeros, ("norm",))


class LayerNorm(nn.LayerNorm):
  """LayerNorm over the last axis, x [..., D] -> [..., D]. MaskGIT/BERT use eps 1e-12."""
  epsilon: float = 1e-6
  scale_init: Any = _ones
  bias_init: Any = _zeros


class RMSNorm(nn.RMSNorm):
  """RMSNorm over the last axis (no centring, no bias), x [..., D] -> [..., D]."""
  epsilon: float = 1e-6
  scale_init: Any = _ones
