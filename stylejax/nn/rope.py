"""Rotary position embeddings (RoPE) with explicit integer positions.

Convention: HF "rotate_half" — rotation pair i couples dims (i, i + D/2), frequency
`theta ** (-2i / D)`. This matches transformers' Llama/Qwen2 weights without permuting q/k.

1D: positions [B, L] (token index in the sequence; a KV-cache decode passes its own).
2D: positions [B, L, 2] = (row, col) on an image grid. Half the rotation pairs turn with the
row and half with the column (LlamaGen's 2D RoPE, here in rotate_half pairing). Prefix
(text/class) tokens take (0, 0), which is the identity rotation — LlamaGen's zero table.

Tables are computed in float32 and cast to the activation dtype, like transformers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stylejax.config import ConfigError


def inverse_frequencies(dim: int, theta: float) -> jax.Array:
  """[dim // 2] inverse frequencies `theta ** (-2i / dim)` (Su et al. 2021)."""
  if dim % 2:
    raise ConfigError(f"RoPE needs an even number of dims; got {dim}.")
  return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def rope_tables_1d(positions: jax.Array, head_dim: int, theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
  """positions [B, L] int -> (cos, sin), each [B, L, head_dim] float32."""
  freqs = positions.astype(jnp.float32)[..., None] * inverse_frequencies(head_dim, theta)  # [B, L, D/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def rope_tables_2d(positions: jax.Array, head_dim: int, theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
  """positions [B, L, 2] int (row, col) -> (cos, sin), each [B, L, head_dim] float32.

  Pairs 0..D/4-1 rotate with the row, pairs D/4..D/2-1 with the column; each axis uses the
  1D frequencies of a D/2-dim rope (LlamaGen `precompute_freqs_cis_2d`).
  """
  if head_dim % 4:
    raise ConfigError(f"2D RoPE needs head_dim divisible by 4; got {head_dim}.")
  if positions.shape[-1] != 2:
    raise ValueError(f"2D RoPE positions must be [..., 2] (row, col); got shape {positions.shape}.")
  inv = inverse_frequencies(head_dim // 2, theta)  # [D/4]
  pos = positions.astype(jnp.float32)
  freqs = jnp.concatenate([pos[..., 0:1] * inv, pos[..., 1:2] * inv], axis=-1)  # [B, L, D/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def rope_tables(positions: jax.Array, head_dim: int, theta: float, kind: str) -> tuple[jax.Array, jax.Array]:
  """Dispatches on kind: "1d" takes positions [B, L], "2d" takes [B, L, 2]."""
  if kind == "1d":
    if positions.ndim != 2:
      raise ValueError(f"1D RoPE positions must be [B, L]; got shape {positions.shape}.")
    return rope_tables_1d(positions, head_dim, theta)
  if kind == "2d":
    if positions.ndim != 3:
      raise ValueError(f"2D RoPE positions must be [B, L, 2]; got shape {positions.shape}.")
    return rope_tables_2d(positions, head_dim, theta)
  raise ConfigError(f"unknown rope kind {kind!r}; use '1d' or '2d'.")


def rotate_half(x: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x [B, L, H, D] rotated by tables [B, L, D] (broadcast over heads)."""
  cos = cos[:, :, None, :].astype(x.dtype)
  sin = sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotate_half(x) * sin


def rope_1d(q: jax.Array, k: jax.Array, positions: jax.Array, theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
  """q [B, L, H, D], k [B, L, Hkv, D], positions [B, L] -> rotated (q, k)."""
  cos, sin = rope_tables_1d(positions, q.shape[-1], theta)
  return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def rope_2d(q: jax.Array, k: jax.Array, positions: jax.Array, theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
  """q [B, L, H, D], k [B, L, Hkv, D], positions [B, L, 2] (row, col) -> rotated (q, k)."""
  cos, sin = rope_tables_2d(positions, q.shape[-1], theta)
  return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def grid_positions(prefix_len: int, grid: tuple[int, int], num_image_tokens: int | None = None) -> np.ndarray:
  """[prefix_len + N, 2] int32: (0, 0) for the prefix, then raster (row, col) for N image tokens.

  N defaults to the whole grid. Image token j (0-based) sits at (j // W, j % W).
  """
  h, w = grid
  n = h * w if num_image_tokens is None else num_image_tokens
  j = np.arange(n)
  image = np.stack([j // w, j % w], axis=-1)
  return np.concatenate([np.zeros((prefix_len, 2), np.int64), image]).astype(np.int32)
