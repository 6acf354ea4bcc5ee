"""Mask schedules for MaskGIT/Muse: the decode-time mask ratio and training-time mask rates.

`schedule(r)` maps progress r in [0, 1] to the fraction of tokens still masked: 1 at r = 0
(everything masked), ~0 at r = 1, non-increasing in between. The forms follow MaskGIT's
`libml/mask_schedule.py` (cosine, linear a.k.a. "uniform", powK, log, exp).

Training samples a masking rate per example (`sample_mask_rate`) and masks exactly
round(rate * L) random positions per row (`random_mask`), as the aMUSEd/open-muse trainers do.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from stylejax.config import ConfigError

SCHEDULES = ("cosine", "linear", "uniform", "powK", "log", "exp")
RATE_METHODS = ("cosine", "arccos", "uniform")  # plus any schedule name (see sample_mask_rate)


def check_method(method: str) -> None:
  """Raises ValueError unless `method` names a schedule."""
  if method in ("cosine", "linear", "uniform", "log", "exp"):
    return
  if method.startswith("pow"):
    try:
      if float(method[3:]) > 0:
        return
    except ValueError:
      pass
  raise ConfigError(f"Unknown mask schedule {method!r}; use one of cosine, linear, powK (e.g. pow2), log, exp.")


def schedule(ratio: jax.typing.ArrayLike, method: str = "cosine",
             total_unknown: jax.typing.ArrayLike = 256) -> jax.Array:
  """Fraction of tokens left masked after progress `ratio` (any shape, values in [0, 1]).

  Args:
    ratio: progress r; at decode step t of T it is (t + 1) / T.
    method: "cosine" cos(pi/2 r); "linear" (alias "uniform", MaskGIT's name) 1 - r;
      "powK" 1 - r^K (K any positive float, "pow2", "pow2.5"); "log" -log2(r) / log2(N);
      "exp" 1 - N^-(1 - r), which starts at 1 - 1/N rather than 1 (MaskGIT's form, kept).
    total_unknown: N for "log"/"exp" (broadcasts with `ratio`; MaskGIT passes the initial
      number of masked tokens). Values below 2 are raised to 2 so log2(N) > 0.
  Returns:
    float32 array, broadcast shape of `ratio` and (for log/exp) `total_unknown`, in [0, 1].
  """
  check_method(method)
  r = jnp.asarray(ratio, jnp.float32)
  if method == "cosine":
    out = jnp.cos(0.5 * math.pi * r)
  elif method in ("linear", "uniform"):
    out = 1.0 - r
  elif method.startswith("pow"):
    out = 1.0 - r ** float(method[3:])
  else:
    log2_n = jnp.log2(jnp.maximum(jnp.asarray(total_unknown, jnp.float32), 2.0))
    if method == "log":
      out = -jnp.log2(r) / log2_n  # +inf at r = 0, clipped to 1 below
    else:  # exp
      out = 1.0 - jnp.exp2(-log2_n * (1.0 - r))
  # MaskGIT clips to [1e-6, 1]; the floor only matters for rates, and sample_mask_rate and
  # random_mask handle "at least one token" themselves, so [0, 1] is enough here.
  return jnp.clip(out, 0.0, 1.0)


def sample_mask_rate(rng: jax.Array, shape: tuple[int, ...] = (), method: str = "cosine",
                     min_rate: float = 0.0) -> jax.Array:
  """Samples training masking rates in [min_rate, 1], float32 array of `shape` (e.g. (B,)).

  Methods:
    "cosine": rate = cos(pi/2 u), u ~ U[0, 1), then clipped from below at `min_rate` (the
      aMUSEd / open-muse trainer; the clip puts a point mass at `min_rate`).
    "arccos": Muse's truncated arccos distribution, density p(r) = 2/pi (1 - r^2)^-1/2
      restricted to [min_rate, 1] and renormalised, sampled by inverse CDF (no point mass).
      Note cos(pi/2 u) has exactly this density, so with min_rate = 0 it equals "cosine".
    "uniform": rate ~ U[min_rate, 1).
    any other schedule name (e.g. "pow2", "linear"): schedule(u), clipped like "cosine".
  """
  if not 0.0 <= min_rate <= 1.0:
    raise ConfigError(f"min_rate must be in [0, 1], got {min_rate}.")
  if method == "arccos":
    # CDF of the arccos density is 1 - (2/pi) arccos(r); its inverse maps u to cos(pi/2 u).
    # Truncating to r >= min_rate means u < (2/pi) arccos(min_rate).
    u_max = 2.0 / math.pi * math.acos(min_rate)
    u = jax.random.uniform(rng, shape, jnp.float32, 0.0, u_max)
    return jnp.clip(jnp.cos(0.5 * math.pi * u), min_rate, 1.0)
  if method == "uniform":
    return jax.random.uniform(rng, shape, jnp.float32, min_rate, 1.0)
  u = jax.random.uniform(rng, shape, jnp.float32)
  return jnp.maximum(schedule(u, method), min_rate)


def random_mask(rng: jax.Array, ids_shape: tuple[int, ...], rate: jax.typing.ArrayLike) -> jax.Array:
  """Bool mask of `ids_shape` [B, ...] with exactly clip(round(rate * L), 1, L) True per row.

  L is the product of the non-batch dims; `rate` is a scalar or [B]. Positions are a uniform
  random subset (rank of i.i.d. uniforms), as in the aMUSEd trainer.
  """
  batch = ids_shape[0]
  length = math.prod(ids_shape[1:])
  rate = jnp.broadcast_to(jnp.asarray(rate, jnp.float32), (batch,))
  num = jnp.clip(jnp.round(rate * length), 1, length).astype(jnp.int32)
  noise = jax.random.uniform(rng, (batch, length))
  rank = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
  return (rank < num[:, None]).reshape(ids_shape)
