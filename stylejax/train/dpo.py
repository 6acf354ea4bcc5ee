"""Direct Preference Optimization (Rafailov et al. 2023) for token generators (StyleAR post-training).

  loss = -log sigmoid(beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))))

with sequence log-probs summed over the weighted target tokens. The implicit reward of a
sequence is `beta * (log pi - log ref)`; a pair is "correct" when the chosen reward is larger.
Optional `label_smoothing` eps gives conservative DPO (cDPO): `(1-eps) L(h) + eps L(-h)`.
Optional `sft_weight` alpha adds the chosen sequences' per-token NLL, `alpha * -log pi(y_w|x) / |y_w|`
(RPO, Pang et al. 2024, arXiv 2404.19733), which keeps DPO from lowering the chosen log-probs too.

Pairs come from K samples per prompt ranked by a score (`preference_pairs`: best vs worst),
built on the host since the number of usable pairs (ties dropped) varies.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stylejax.config import ConfigError

Array = jax.Array


def sequence_logprobs(logits: Array, targets: Array, weights: Array | None = None) -> Array:
  """Sum over positions of weights * log softmax(logits)[target].

  logits [B, L, V] (computed in float32), targets int [B, L], weights [B, L] (bool or float;
  None = all ones; 0 for prompt/padding positions). Returns [B] float32.
  Align logits and targets yourself (logits[:, t] predicts targets[:, t]).
  """
  if logits.shape[:2] != targets.shape:
    raise ValueError(f"logits {logits.shape} and targets {targets.shape} must agree on [B, L].")
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  tok = jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  if weights is not None:
    tok = tok * weights.astype(jnp.float32)
  return jnp.sum(tok, axis=-1)


def dpo_loss(chosen_logps: Array, rejected_logps: Array, ref_chosen_logps: Array, ref_rejected_logps: Array,
             beta: float = 0.1, label_smoothing: float = 0.0, pair_weights: Array | None = None,
             sft_weight: float = 0.0, chosen_tokens: Array | float = 1.0) -> tuple[Array, dict[str, Array]]:
  """DPO on sequence log-probs, all [B] (one entry per preference pair).

  The reference log-probs are treated as constants (stop_gradient). pair_weights [B] (bool or
  float) masks padding pairs; the loss and metrics are weighted means over pairs. sft_weight > 0
  adds sft_weight * mean(-chosen_logps / chosen_tokens) (RPO; chosen_tokens: tokens per chosen
  sequence, [B] or a scalar). Returns (loss, {"reward_accuracy", "reward_margin", "chosen_reward",
  "rejected_reward", "chosen_nll"}).
  """
  if beta <= 0:
    raise ConfigError(f"DPO beta must be > 0; got {beta}.")
  if not 0.0 <= label_smoothing < 0.5:
    raise ConfigError(f"DPO label_smoothing must be in [0, 0.5); got {label_smoothing}.")
  sg = jax.lax.stop_gradient
  chosen_r = beta * (chosen_logps.astype(jnp.float32) - sg(ref_chosen_logps).astype(jnp.float32))
  rejected_r = beta * (rejected_logps.astype(jnp.float32) - sg(ref_rejected_logps).astype(jnp.float32))
  margin = chosen_r - rejected_r  # beta * h
  losses = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(margin) - label_smoothing * jax.nn.log_sigmoid(-margin)
  w = jnp.ones_like(margin) if pair_weights is None else pair_weights.astype(jnp.float32)
  mean = lambda x: jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)
  metrics = {
      "reward_accuracy": mean((chosen_r > rejected_r).astype(jnp.float32)),
      "reward_margin": mean(margin),
      "chosen_reward": mean(chosen_r),
      "rejected_reward": mean(rejected_r),
      "chosen_nll": mean(-chosen_logps.astype(jnp.float32) / chosen_tokens),
  }
  return mean(losses) + sft_weight * metrics["chosen_nll"], metrics


def dpo_loss_from_logits(policy_logits: Array, ref_logits: Array, targets: Array, weights: Array | None = None,
                         beta: float = 0.1, label_smoothing: float = 0.0, pair_weights: Array | None = None
                         ) -> tuple[Array, dict[str, Array]]:
  """DPO from per-token logits of a stacked batch: rows [0, B) chosen, rows [B, 2B) rejected.

  policy_logits, ref_logits [2B, L, V]; targets [2B, L]; weights [2B, L]. Stacking lets one
  forward pass score both halves of every pair (rejected row i pairs with chosen row i).
  """
  rows = policy_logits.shape[0]
  if rows % 2 or ref_logits.shape[:2] != policy_logits.shape[:2]:
    raise ValueError(f"need [2B, L, V] policy and ref logits (chosen rows then rejected rows); got "
                     f"{policy_logits.shape} and {ref_logits.shape}.")
  pol = sequence_logprobs(policy_logits, targets, weights)
  ref = sequence_logprobs(ref_logits, targets, weights)
  b = rows // 2
  loss, metrics = dpo_loss(pol[:b], pol[b:], ref[:b], ref[b:], beta, label_smoothing, pair_weights)
  metrics["chosen_logp"] = jnp.mean(pol[:b])
  metrics["rejected_logp"] = jnp.mean(pol[b:])
  return loss, metrics


def preference_pairs(scores: np.ndarray, min_gap: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """K scored samples per prompt -> one (best, worst) pair per prompt.

  scores [N, K] (higher is better; sample k of prompt n is flat index n*K + k). Prompts whose
  best and worst scores differ by <= min_gap (all tied, by default) give no pair. Among tied
  best (or worst) samples the first one is taken. Returns (chosen, rejected), int64 flat
  indices of equal length <= N, in prompt order; prompt of a pair = chosen // K.
  """
  scores = np.asarray(scores, np.float64)
  if scores.ndim != 2 or scores.shape[1] < 2:
    raise ValueError(f"scores must be [N prompts, K >= 2 samples]; got shape {scores.shape}.")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores contain NaN or inf; score every sample with a finite number.")
  n, k = scores.shape
  best, worst = np.argmax(scores, axis=1), np.argmin(scores, axis=1)
  gap = scores[np.arange(n), best] - scores[np.arange(n), worst]
  keep = np.flatnonzero(gap > min_gap)
  return keep * k + best[keep], keep * k + worst[keep]
