"""Optimizer from config: schedule, clipping, weight decay, and regex freeze lists.

Frozen params get `optax.set_to_zero()` through `optax.multi_transform`, so they carry no
optimizer state at all (StyleDrop trains <1% of the weights; Adam moments for the rest would
triple its memory).
"""
from __future__ import annotations

import math
import re
from typing import Any

import jax
import ml_collections
import optax

from stylejax.config import ConfigError


def path_str(path) -> str:
  return "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)


def trainable_mask(params: Any, opt: ml_collections.ConfigDict) -> Any:
  """Bool pytree: True where a param is trained. `freeze` regexes win over `trainable` ones."""
  freeze = [re.compile(r) for r in opt.get("freeze", [])]
  train_only = [re.compile(r) for r in opt.get("trainable", [])]

  def is_trainable(path, _):
    name = path_str(path)
    if any(r.search(name) for r in freeze):
      return False
    return not train_only or any(r.search(name) for r in train_only)

  return jax.tree_util.tree_map_with_path(is_trainable, params)


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup, then cosine | linear | rsqrt | constant decay to `end_lr_frac * lr`."""
  lr, warmup = opt.lr, int(opt.warmup_steps)
  if not (math.isfinite(lr) and lr >= 0) or warmup < 0:
    raise ConfigError(f"optimizer.lr={lr}, optimizer.warmup_steps={warmup}; use a finite rate >= 0 and warmup >= 0.")
  end = lr * opt.get("end_lr_frac", 0.0)
  decay_steps = max(total_steps - warmup, 1)
  if opt.schedule == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
  elif opt.schedule == "linear":
    decay = optax.linear_schedule(lr, end, decay_steps)
  elif opt.schedule == "rsqrt":
    decay = lambda s: lr * jax.lax.rsqrt(1.0 + s / max(warmup, 1))
  elif opt.schedule == "constant":
    decay = optax.constant_schedule(lr)
  else:
    raise ConfigError(f"optimizer.schedule={opt.schedule!r}; use cosine, linear, rsqrt or constant.")
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def make_optimizer(opt: ml_collections.ConfigDict, params: Any, total_steps: int
                   ) -> tuple[optax.GradientTransformation, Any, optax.Schedule]:
  """Returns (optimizer, trainable mask, lr schedule)."""
  schedule = learning_rate_schedule(opt, total_steps)
  chain = []
  if opt.get("grad_clip_norm", 0.0):
    chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  # Decay matrices only (biases, norms and embeddings-as-vectors are left alone).
  decay_mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
  if opt.name == "adamw":
    chain.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                             weight_decay=opt.weight_decay, mask=decay_mask))
  elif opt.name == "adam":  # StyleDrop: plain Adam; weight_decay here is coupled L2 (added to grads)
    if opt.weight_decay:
      chain.append(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask))
    chain.append(optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps))
  elif opt.name == "sgd":
    chain.append(optax.sgd(schedule, momentum=opt.b1 or None))
  else:
    raise ConfigError(f"optimizer.name={opt.name!r}; use adamw, adam or sgd.")
  mask = trainable_mask(params, opt)
  if not any(jax.tree.leaves(mask)):
    raise ConfigError("optimizer.freeze/trainable leave no trainable params; loosen the regexes.")
  labels = jax.tree.map(lambda m: "train" if m else "freeze", mask)
  tx = optax.multi_transform({"train": optax.chain(*chain), "freeze": optax.set_to_zero()}, labels)
  return tx, mask, schedule
