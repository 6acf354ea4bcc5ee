"""Masked-token training for MaskGIT/Muse: masking, condition dropout, the masked cross-entropy.

The masking helpers mirror `stylejax.sample.mask_schedule` (same semantics) but are kept
self-contained here for now; the two are to be folded together.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from stylejax.config import ConfigError

MASK_RATE_METHODS = ("cosine", "arccos", "uniform")


def sample_mask_rate(rng: jax.Array, shape: tuple[int, ...] = (), method: str = "cosine",
                     min_rate: float = 0.0) -> jax.Array:
  """Training masking rates in [min_rate, 1], float32 of `shape`.

  "cosine": cos(pi/2 u), u ~ U[0,1), clipped below at min_rate (MaskGIT schedule at a random step).
  "arccos": Muse's truncated arccos density 2/pi (1-r^2)^-1/2 on [min_rate, 1], by inverse CDF
    (same law as "cosine" when min_rate = 0, but no point mass at min_rate).
  "uniform": U[min_rate, 1).
  """
  if not 0.0 <= min_rate <= 1.0:
    raise ConfigError(f"min_mask_rate must be in [0, 1], got {min_rate}.")
  if method == "cosine":
    u = jax.random.uniform(rng, shape, jnp.float32)
    return jnp.maximum(jnp.cos(0.5 * math.pi * u), min_rate)
  if method == "arccos":
    u_max = 2.0 / math.pi * math.acos(min_rate)  # cos(pi/2 u) >= min_rate  <=>  u <= u_max
    u = jax.random.uniform(rng, shape, jnp.float32, 0.0, u_max)
    return jnp.clip(jnp.cos(0.5 * math.pi * u), min_rate, 1.0)
  if method == "uniform":
    return jax.random.uniform(rng, shape, jnp.float32, min_rate, 1.0)
  raise ConfigError(f"mask_schedule={method!r}; use one of {MASK_RATE_METHODS}.")


def random_mask(rng: jax.Array, shape: tuple[int, int], rate: jax.Array) -> jax.Array:
  """Bool [B, L] with exactly clip(round(rate * L), 1, L) True per row, at uniform random positions.

  rate: scalar or [B].
  """
  batch, length = shape
  rate = jnp.broadcast_to(jnp.asarray(rate, jnp.float32), (batch,))
  count = jnp.clip(jnp.round(rate * length), 1, length).astype(jnp.int32)
  rank = jnp.argsort(jnp.argsort(jax.random.uniform(rng, (batch, length)), axis=-1), axis=-1)
  return rank < count[:, None]


def mask_tokens(rng: jax.Array, ids: jax.Array, mask_id: int, method: str = "cosine",
                min_rate: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """ids [B, L] -> (ids with masked positions set to mask_id, bool mask [B, L])."""
  rate_rng, pos_rng = jax.random.split(rng)
  rate = sample_mask_rate(rate_rng, (ids.shape[0],), method, min_rate)
  mask = random_mask(pos_rng, ids.shape, rate)
  return jnp.where(mask, jnp.asarray(mask_id, ids.dtype), ids), mask


def cond_dropout_mask(rng: jax.Array, batch: int, rate: float) -> jax.Array:
  """Bool [B]: True where the condition is replaced by the null condition (CFG training)."""
  return jax.random.bernoulli(rng, rate, (batch,))


def masked_token_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array, label_smoothing: float = 0.0,
                      token_weight: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy over masked positions only, averaged over all masked tokens in the batch.

  logits [B, L, K] (any float dtype; computed in float32); targets int [B, L]; mask bool [B, L].
  Label smoothing spreads `label_smoothing` uniformly over the K classes (MaskGIT uses 0.1):
  target = (1 - ls) onehot + ls / K. token_weight [B, L] (optional) scales each masked token's term in
  a weighted mean (the accuracy stays an unweighted mean over masked tokens).
  Returns (loss, {"masked_accuracy", "mask_rate"}).
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  # -sum(target * logp) with the smoothed target; mean(logp) * K * (ls / K) is the uniform part.
  ce = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1) if label_smoothing else nll
  weights = mask.astype(jnp.float32)
  denom = jnp.maximum(weights.sum(), 1.0)
  loss_weights = weights if token_weight is None else weights * token_weight.astype(jnp.float32)
  loss = jnp.sum(ce * loss_weights) / jnp.maximum(loss_weights.sum(), 1e-6)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return loss, {"masked_accuracy": jnp.sum(correct * weights) / denom, "mask_rate": jnp.mean(weights)}
