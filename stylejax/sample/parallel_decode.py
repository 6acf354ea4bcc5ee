"""MaskGIT / Muse / aMUSEd parallel decoding as one jitted `lax.fori_loop`.

Each step (MaskGIT `libml/parallel_decode.py`, aMUSEd `AmusedScheduler.step`):
  logits = logits_fn(fn_args, ids, t)                       # [B, L, V]
  sampled = sample(logits / temperature) at masked positions; known tokens stay
  conf = log p(sampled) (or its logit) + tau_t * Gumbel;  conf[known] = +inf
  n = clip(floor(N0 * schedule((t + 1) / T)), 1, #masked - 1);  n = 0 at the last step
  re-mask the n lowest-confidence positions.
N0 is the row's initial number of masked tokens (MaskGIT) or the sequence length (aMUSEd).

Compile once: `logits_fn` and `DecodeConfig` are static (hashable) and everything that varies
between calls (params, prompt embeddings, guidance scales, rng) travels in `fn_args`/`rng` as
traced values. Keep one `logits_fn` object alive and reuse it: a new lambda per call retraces.

Reproducibility per sample: row b draws its randomness from fold_in(rng, b) (or from rng[b]
when a [B] batch of keys is given), so a row's result does not depend on the other rows.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from stylejax.config import ConfigError
from stylejax.sample import mask_schedule

# logits_fn(fn_args, ids [B, L] int32, step scalar int32) -> logits [B, L, V]
LogitsFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeConfig:
  """Static decode settings (hashable, so it is a static jit argument).

  Attributes:
    mask_id: id of [MASK] in `ids`.
    num_steps: T, total steps including any skipped by `start_step`.
    schedule: mask schedule name (mask_schedule.schedule: cosine, linear, powK, log, exp).
    mask_len_base: "unknown" (MaskGIT: N0 = initial #masked per row) or "seq_len" (aMUSEd: N0 = L).
    sampling: "categorical" (inverse CDF: one uniform per position, like torch.multinomial in
      aMUSEd) or "gumbel_argmax" (argmax(logits / temperature + Gumbel), what MaskGIT's
      jax.random.categorical and open Muse code do; L x V random numbers per step). Both draw
      exactly from softmax(logits / temperature); categorical needs far fewer random bits.
    temperature: token sampling temperature; 0 means greedy argmax.
    confidence: "log_prob" (log softmax of the untempered logits at the sampled token) or
      "logits" (the raw logit of the sampled token).
    choice_temperature: tau0, the scale of the Gumbel noise added to the confidence.
    temperature_schedule: "maskgit_linear" tau0 * (1 - (t + 1) / T) or "amused_linspace"
      linspace(tau0, 0, T)[t] (aMUSEd uses tau0 = 2).
    start_step: first step to run (MaskGIT editing starts later, e.g. 2, on partly known ids).
    forbid_mask_token: when mask_id < V, never sample [MASK] (its logit is set to -inf).
  """
  mask_id: int
  num_steps: int = 12
  schedule: str = "cosine"
  mask_len_base: str = "unknown"
  sampling: str = "categorical"
  temperature: float = 1.0
  confidence: str = "log_prob"
  choice_temperature: float = 4.5
  temperature_schedule: str = "maskgit_linear"
  start_step: int = 0
  forbid_mask_token: bool = True

  def __post_init__(self):
    mask_schedule.check_method(self.schedule)  # raises ValueError on an unknown name
    choices = {
        "mask_len_base": ("unknown", "seq_len"),
        "sampling": ("categorical", "gumbel_argmax"),
        "confidence": ("log_prob", "logits"),
        "temperature_schedule": ("maskgit_linear", "amused_linspace"),
    }
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ConfigError(f"DecodeConfig.{name}={getattr(self, name)!r}; use one of {allowed}.")
    if self.num_steps < 1 or not 0 <= self.start_step < self.num_steps:
      raise ConfigError(f"Need num_steps >= 1 and 0 <= start_step < num_steps, got "
                        f"num_steps={self.num_steps}, start_step={self.start_step}.")
    if self.temperature < 0 or self.choice_temperature < 0:
      raise ConfigError("temperature and choice_temperature must be >= 0.")


def choice_temperature(step: jax.typing.ArrayLike, config: DecodeConfig) -> jax.Array:
  """Gumbel scale for the re-masking choice at (0-based) step t."""
  t = jnp.asarray(step, jnp.float32)
  num = config.num_steps
  if config.temperature_schedule == "maskgit_linear":
    return config.choice_temperature * (1.0 - (t + 1.0) / num)  # MaskGIT: tau0 * (1 - ratio)
  # aMUSEd: torch.linspace(tau0, 0, T)[t]; a single step keeps tau0, as linspace does.
  return config.choice_temperature * (1.0 - t / max(num - 1, 1))


def num_masked_after(step: jax.typing.ArrayLike, base: jax.typing.ArrayLike,
                     num_unknown: jax.typing.ArrayLike, config: DecodeConfig) -> jax.Array:
  """How many tokens stay masked after step t: clip(floor(base * s((t+1)/T)), 1, #masked - 1).

  At the last step it is 0. Where a row has <= 1 masked token the reference keeps one masked
  until the last step; we unmask it (so every step makes progress while any remain).
  """
  ratio = (jnp.asarray(step, jnp.float32) + 1.0) / config.num_steps
  base = jnp.asarray(base, jnp.float32)
  # The 1e-4 keeps exact products (16 * cos(pi/3) = 8) from flooring to 7 under float32 rounding.
  n = jnp.floor(base * mask_schedule.schedule(ratio, config.schedule, total_unknown=base) + 1e-4)
  n = jnp.minimum(jnp.maximum(n, 1.0), jnp.asarray(num_unknown, jnp.float32) - 1.0)
  n = jnp.where(step >= config.num_steps - 1, 0.0, jnp.maximum(n, 0.0))
  return n.astype(jnp.int32)


def _gumbel(u: jax.Array) -> jax.Array:
  """Gumbel(0, 1) noise from uniforms in (0, 1)."""
  return -jnp.log(-jnp.log(u))


def _categorical_inverse_cdf(u: jax.Array, logits: jax.Array) -> jax.Array:
  """One draw per row of [L, V] logits from one uniform each (u [L] in (0, 1)).

  Needs L random numbers instead of the L x V that Gumbel-argmax needs (8192 x 256 per image
  per step for aMUSEd). Zero-probability tokens (-inf logits) are never returned.
  """
  cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)
  idx = jnp.sum(cdf <= (u * cdf[:, -1])[:, None], axis=-1)
  # float32 rounding can put u * total on the last plateau: fall back to the last live token.
  vocab = logits.shape[-1]
  last_live = vocab - 1 - jnp.argmax(jnp.flip(logits > -jnp.inf, axis=-1), axis=-1)
  return jnp.minimum(idx, last_live).astype(jnp.int32)


def _update_row(rng: jax.Array, logits: jax.Array, ids: jax.Array, base: jax.Array,
                step: jax.Array, config: DecodeConfig) -> jax.Array:
  """One decode step for one row: logits [L, V], ids [L] -> new ids [L]."""
  length, vocab = logits.shape
  unknown = ids == config.mask_id
  # Uniforms in (0, 1) for the token sampling and the re-masking choice, one key per row and step.
  tiny = jnp.finfo(jnp.float32).tiny
  if config.temperature == 0:  # greedy
    choice_u = jax.random.uniform(rng, (length,), minval=tiny)
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  elif config.sampling == "categorical":
    u = jax.random.uniform(rng, (length, 2), minval=tiny)
    choice_u = u[:, 1]
    tokens = _categorical_inverse_cdf(u[:, 0], logits / config.temperature)
  else:  # gumbel_argmax (separate draws: odd [L, V + 1] shapes compile slowly on CPU)
    token_rng, choice_rng = jax.random.split(rng)
    choice_u = jax.random.uniform(choice_rng, (length,), minval=tiny)
    noise = _gumbel(jax.random.uniform(token_rng, (length, vocab), minval=tiny))
    tokens = jnp.argmax(logits / config.temperature + noise, axis=-1).astype(jnp.int32)
  sampled = jnp.where(unknown, tokens, ids)
  scores = jax.nn.log_softmax(logits, axis=-1) if config.confidence == "log_prob" else logits
  # Known ids may lie outside the vocab (e.g. prefix tokens); their score is replaced below.
  conf = jnp.take_along_axis(scores, jnp.clip(sampled, 0, vocab - 1)[:, None], -1)[:, 0]
  conf = conf + choice_temperature(step, config) * _gumbel(choice_u)
  conf = jnp.where(unknown, conf, jnp.inf)
  n = num_masked_after(step, base, jnp.sum(unknown), config)
  # Re-mask exactly the n lowest-confidence positions (ranks, so ties cannot change the count;
  # n <= #masked - 1 and known tokens rank last at +inf, so they are never chosen).
  rank = jnp.argsort(jnp.argsort(conf, stable=True), stable=True)
  return jnp.where(rank < n, config.mask_id, sampled).astype(jnp.int32)


def _row_keys(rng: jax.Array, batch: int) -> jax.Array:
  """One key per row: fold_in(rng, b) from a single key, or rng itself if it is a [B] batch."""
  typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
  single = rng.ndim == 0 if typed else rng.shape == (2,)
  if single:
    return jax.vmap(lambda b: jax.random.fold_in(rng, b))(jnp.arange(batch))
  if rng.shape[0] != batch:
    raise ValueError(f"rng holds {rng.shape[0]} keys for a batch of {batch} rows.")
  return rng


def _decode_impl(logits_fn: LogitsFn, fn_args: Any, ids: jax.Array, rng: jax.Array,
                 config: DecodeConfig, with_history: bool) -> tuple[jax.Array, jax.Array | None]:
  ids = jnp.asarray(ids).astype(jnp.int32)
  batch, length = ids.shape
  row_keys = _row_keys(rng, batch)
  if config.mask_len_base == "unknown":
    base = jnp.sum(ids == config.mask_id, axis=-1)
  else:
    base = jnp.full((batch,), length, jnp.int32)
  num_run = config.num_steps - config.start_step
  update = jax.vmap(functools.partial(_update_row, config=config), in_axes=(0, 0, 0, 0, None))

  def body(i, carry):
    cur, history = carry
    step = config.start_step + i
    logits = logits_fn(fn_args, cur, step).astype(jnp.float32)
    if config.forbid_mask_token and 0 <= config.mask_id < logits.shape[-1]:
      logits = logits.at[..., config.mask_id].set(-jnp.inf)
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)
    new = update(keys, logits, cur, base, step)
    if history is not None:
      history = jax.lax.dynamic_update_index_in_dim(history, new, i, axis=0)
    return new, history

  history0 = jnp.zeros((num_run, batch, length), jnp.int32) if with_history else None
  return jax.lax.fori_loop(0, num_run, body, (ids, history0))


def decode_fn(logits_fn: LogitsFn, fn_args: Any, ids: jax.Array, rng: jax.Array,
              config: DecodeConfig) -> jax.Array:
  """Decodes masked `ids` [B, L] to [B, L] int32 with no [MASK] left (un-jitted; see `decode`).

  Args:
    logits_fn: static callable (fn_args, ids [B, L], step) -> logits [B, L, V].
    fn_args: any pytree passed to logits_fn as traced values.
    ids: [B, L] ids; positions equal to config.mask_id are generated, all others never change.
    rng: a PRNG key (typed or raw), or a [B] batch of keys, one per row.
    config: DecodeConfig.
  """
  return _decode_impl(logits_fn, fn_args, ids, rng, config, with_history=False)[0]


def decode_with_history_fn(logits_fn: LogitsFn, fn_args: Any, ids: jax.Array, rng: jax.Array,
                           config: DecodeConfig) -> tuple[jax.Array, jax.Array]:
  """As `decode_fn`, also returning history [num_steps - start_step, B, L]: ids after each step."""
  return _decode_impl(logits_fn, fn_args, ids, rng, config, with_history=True)


# Jitted entries: compiled once per (logits_fn, config, shapes/dtypes of the traced inputs).
decode = jax.jit(decode_fn, static_argnames=("logits_fn", "config"))
decode_with_history = jax.jit(decode_with_history_fn, static_argnames=("logits_fn", "config"))
