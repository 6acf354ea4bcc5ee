"""Train state and the one jitted, sharded train step.

State is a plain dict pytree: {step, params, opt_state, rng[, ema]}. The step differentiates
only the trainable leaves, accumulates gradients over micro-batches with `lax.scan`, and skips
any update whose loss or gradients are non-finite (the host stops the run on that flag, so the
last checkpoint is never overwritten by a poisoned state).
"""
from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from stylejax import parallel
from stylejax.train.task import Task

State = dict[str, Any]


def split_trainable(params: Any, mask: Any) -> tuple[Any, Any]:
  """Two trees of the same structure with None where the other half lives."""
  train = jax.tree.map(lambda p, m: p if m else None, params, mask)
  frozen = jax.tree.map(lambda p, m: None if m else p, params, mask)
  return train, frozen


def merge_trainable(train: Any, frozen: Any, mask: Any) -> Any:
  return jax.tree.map(lambda m, t, f: t if m else f, mask, train, frozen, is_leaf=lambda x: x is None)


def init_state(task: Task, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
               mesh: jax.sharding.Mesh, params: Any, param_shardings: Any, abstract: bool = False
               ) -> tuple[State, Any]:
  """Params born sharded, optimizer state sharded like them. Returns (state, state shardings).

  params, param_shardings: the params' abstract shapes and shardings (`parallel.abstract_sharded`).
  abstract: the state's leaves as `jax.ShapeDtypeStruct`s with their shardings, nothing initialised or compiled
  (a restore target: loading a checkpoint then costs no init and no optimizer-state allocation)."""
  rng = jax.random.key(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  if not abstract:
    params, _ = parallel.init_sharded(task.init, init_rng, mesh, config.logical_axis_rules, param_shardings)
  # Optimizer state: follow the params' shardings where shapes match, replicate scalars.
  opt_abstract = jax.eval_shape(tx.init, params)
  opt_shardings = _like_params(opt_abstract, params, param_shardings, mesh)
  rep = parallel.replicated(mesh)
  shardings = {"step": rep, "params": param_shardings, "opt_state": opt_shardings, "rng": rep}
  if config.ema_decay:
    shardings["ema"] = param_shardings
  if abstract:
    shapes = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params, "opt_state": opt_abstract,
              "rng": train_rng}
    if config.ema_decay:
      shapes["ema"] = params
    return parallel.with_shardings(shapes, shardings), shardings
  opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
  state = {"step": jax.device_put(jnp.zeros((), jnp.int32), rep), "params": params,
           "opt_state": opt_state, "rng": jax.device_put(train_rng, rep)}
  if config.ema_decay:
    state["ema"] = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=param_shardings)(params)
  return state, shardings


def _like_params(opt_abstract: Any, params: Any, param_shardings: Any, mesh) -> Any:
  """Optimizer-state leaves that mirror a param (Adam moments) take that param's sharding.

  A moment's key path ends with its param's key path (optax nests the param tree inside its
  state), so we match on the longest dict-key suffix with the same shape; the rest is replicated.
  """
  def keys(path):
    return tuple(p.key for p in path if isinstance(p, jax.tree_util.DictKey))

  table = {}
  flat_shardings = jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(params), flat_shardings):
    table[keys(path)] = (leaf.shape, sharding)
  rep = parallel.replicated(mesh)

  def pick(path, leaf):
    k = keys(path)
    for start in range(len(k)):
      hit = table.get(k[start:])
      if hit is not None and hit[0] == leaf.shape:
        return hit[1]
    return rep

  return jax.tree_util.tree_map_with_path(pick, opt_abstract)


def train_step(task: Task, tx: optax.GradientTransformation, mask: Any, config: ml_collections.ConfigDict,
               state: State, batch: dict[str, jax.Array]) -> tuple[State, dict[str, jax.Array]]:
  """One optimizer step on a global batch (split into `grad_accum_steps` micro-batches)."""
  rng = jax.random.fold_in(state["rng"], state["step"])
  params = state["params"]
  train, frozen = split_trainable(params, mask)

  def loss_fn(train_params, micro_batch, micro_rng):
    loss, aux = task.loss(merge_trainable(train_params, frozen, mask), micro_batch, micro_rng)
    return loss, aux

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  accum = config.grad_accum_steps
  if accum == 1:
    (loss, aux), grads = grad_fn(train, batch, rng)
  else:
    micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)

    def body(carry, xs):
      i, mb = xs
      (l, a), g = grad_fn(train, mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (l, a, g)), None

    (l0, a0), g0 = jax.eval_shape(grad_fn, train, jax.tree.map(lambda x: x[0], micro), rng)
    carry0 = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (l0, a0, g0))
    (loss, aux, grads), _ = jax.lax.scan(body, carry0, (jnp.arange(accum), micro))
    loss, aux, grads = jax.tree.map(lambda x: x / accum, (loss, aux, grads))

  full_grads = merge_trainable(grads, jax.tree.map(jnp.zeros_like, frozen), mask)
  updates, opt_state = tx.update(full_grads, state["opt_state"], params)
  new_params = optax.apply_updates(params, updates)
  grad_norm = optax.tree.norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new_state = dict(state, step=state["step"] + 1, params=new_params, opt_state=opt_state)
  if "ema" in state:
    d = config.ema_decay
    new_state["ema"] = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state["ema"], new_params)
  # A non-finite step leaves the state as it was (only the step counter is not advanced either).
  new_state = {k: v if k == "rng" else jax.tree.map(lambda n, o: jnp.where(ok, n, o), v, state[k])
               for k, v in new_state.items()}
  metrics = {"loss": loss, "grad_norm": grad_norm, "param_norm": optax.tree.norm(new_params),
             "nonfinite": jnp.logical_not(ok), **aux}
  return new_state, metrics


def jit_train_step(task: Task, tx, mask, config, state_shardings, mesh) -> Any:
  """`train_step` jitted with explicit in/out shardings and the state donated."""
  step = partial(train_step, task, tx, mask, config)
  batch_sharding = parallel.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                 out_shardings=(state_shardings, parallel.replicated(mesh)), donate_argnums=0)
