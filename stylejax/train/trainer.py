"""The one training loop: any `Task`, any mesh, resumable, preemption-safe, reporting as it goes."""
from __future__ import annotations

import json
import os
import re
import signal
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from stylejax import checkpoint as ckpt_lib
from stylejax import config as config_lib
from stylejax import parallel, shipped
from stylejax.data import pipeline as pipeline_lib
from stylejax.train import metrics_writer, optim, step as step_lib
from stylejax.train.task import Task, load_task


class TrainError(RuntimeError):
  """The run cannot go on; the message says why and what state the workdir is in."""


class _StopSignal:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: no signal handling
        pass
    return self

  def _handle(self, signum, frame):
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def build(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None,
          abstract: bool = False):
  """Mesh, task, optimizer and freshly initialised sharded state (no checkpoint I/O); with `abstract`, the
  state's shapes and shardings only (`step.init_state`), the target a checkpoint restores into."""
  if not config.get("task"):
    raise config_lib.ConfigError("config.task is empty; the config must name a Task class.")
  counts = {"total_steps": config.total_steps, "batch_size": config.batch_size, "log_every": config.log_every,
            "checkpoint.every": config.checkpoint.every, "grad_accum_steps": config.get("grad_accum_steps", 1)}
  if config.checkpoint.get("keep") is not None:  # None: orbax keeps every checkpoint
    counts["checkpoint.keep"] = config.checkpoint.keep
  bad = {k: v for k, v in counts.items() if int(v) < 1}
  if bad:
    raise config_lib.ConfigError(f"{', '.join(f'{k}={v}' for k, v in bad.items())}: each must be a whole number >= 1.")
  mesh = parallel.make_mesh(config.mesh, devices)
  parallel.check_batch(config.batch_size, mesh, config.grad_accum_steps)
  task = load_task(config)
  rules = parallel.as_rules(config.logical_axis_rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    # the model is traced once for its shapes and shardings: the optimizer's masks and the state build on them
    params, param_shardings = parallel.abstract_sharded(task.init, jax.random.key(config.seed), mesh, rules)
    tx, mask, schedule = optim.make_optimizer(config.optimizer, params, config.total_steps)
    state, shardings = step_lib.init_state(task, tx, config, mesh, params, param_shardings, abstract)
  return mesh, task, tx, mask, schedule, state, shardings


def train(config: ml_collections.ConfigDict, workdir: str, devices: Sequence[jax.Device] | None = None,
          max_steps: int | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint. Returns a summary dict.

  `max_steps` stops early after that many steps in this call (tests use it to simulate kills).
  """
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  latest = ckpt_lib.latest_step(os.path.join(workdir, "checkpoints"))
  # a resumed run restores into the state's shapes and shardings: nothing to initialise first
  mesh, task, tx, mask, schedule, state, shardings = build(config, devices, abstract=latest is not None)
  rules = parallel.as_rules(config.logical_axis_rules)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                                       async_save=config.checkpoint.async_save)
  data = pipeline_lib.make_pipeline(task.source("train"), config.batch_size, seed=config.seed,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    numeric_only=True)
  if latest is not None:
    try:
      state, data_state = checkpointer.restore(state)
    except ckpt_lib.CheckpointError:
      checkpointer.close()  # an open manager's async threads would print errors at exit
      raise
    if data_state is not None:
      data.set_state(data_state)
  elif config.get("init_from", {}).get("workdir"):
    state = _init_from(state, config.init_from.workdir, config.init_from.get("dont_load", ()))
  start = int(jax.device_get(state["step"]))
  total = config.total_steps
  summary = {"start_step": start, "final_step": start, "status": "done", "workdir": workdir}
  if start >= total:
    summary["status"] = "already_done"
    checkpointer.close()
    return summary

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    batch = parallel.host_batch_to_global(task.prepare_batch(next(data)), mesh)
    t0 = time.perf_counter()
    compiled = step_lib.jit_train_step(task, tx, mask, config, shardings, mesh).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    if is_main:  # only a config that built, fed and compiled replaces the workdir's record
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config_lib.to_json(config))
    flops_per_step = _flops_per_step(task, config, compiled)
    peak = metrics_writer.peak_flops_per_device()
    writer = metrics_writer.MetricsWriter(workdir, enabled=is_main)
    bar = tqdm(total=total, initial=start, disable=not (is_main and config.progress), desc="train",
               dynamic_ncols=True)
    first_bad = jnp.zeros((), jnp.int32)  # the first step whose loss or gradients were non-finite; 0: none
    last_saved = latest
    tick, tick_step = time.perf_counter(), start
    end = total if max_steps is None else min(total, start + max_steps)

    def save(step: int, force: bool = False):
      nonlocal last_saved
      bad_step = int(jax.device_get(first_bad))
      if bad_step:
        clip = config.optimizer.get("grad_clip_norm", 0.0)
        fix = f"Lower the learning rate (grad clipping at {clip} is on)" if clip else \
            "Lower the learning rate or enable grad clipping"
        raise TrainError(f"non-finite loss or gradients at step {bad_step} (skipped, then stopped without saving). "
                         f"Last good checkpoint: step {last_saved} in {checkpointer.directory}. "
                         f"{fix}, then rerun to resume.")
      checkpointer.save(step, state, data.get_state(), force=force)
      last_saved = step

    with _StopSignal() as stop:
      for step in range(start, end):
        if step > start:
          batch = parallel.host_batch_to_global(task.prepare_batch(next(data)), mesh)
        state, metrics = compiled(state, batch)
        first_bad = jnp.where((first_bad == 0) & metrics["nonfinite"], step + 1, first_bad)
        done = step + 1
        bar.update(1)
        if done % config.log_every == 0 or done == end:
          host = jax.device_get(metrics)
          if int(jax.device_get(first_bad)):
            save(done)  # raises with the message
          now = time.perf_counter()
          steps_per_s = (done - tick_step) / max(now - tick, 1e-9)
          scalars = {k: float(v) for k, v in host.items() if k != "nonfinite"}
          scalars.update(lr=float(schedule(done - 1)), steps_per_s=steps_per_s,
                         examples_per_s=steps_per_s * config.batch_size)
          if flops_per_step:
            tflops = flops_per_step * steps_per_s / 1e12
            scalars["tflops_per_s"] = tflops
            if peak:
              scalars["mfu"] = tflops * 1e12 / (peak * mesh.size)
          if done == start + config.log_every or (start == 0 and done == 1):
            scalars["compile_s"] = compile_s
          writer.write(done, scalars)
          bar.set_postfix(loss=f"{scalars['loss']:.4f}", ex_s=f"{scalars['examples_per_s']:.0f}")
          tick, tick_step = now, done
          summary["last_metrics"] = scalars
        preempted = stop.received is not None
        if jax.process_count() > 1 and not preempted:
          preempted = checkpointer.reached_preemption(done)
        if preempted:
          save(done, force=True)
          summary["status"] = "preempted"
          summary["final_step"] = done
          break
        if done % config.checkpoint.every == 0 or done == total:
          save(done)
        summary["final_step"] = done
    bar.close()
    writer.close()
  if summary["status"] == "done" and summary["final_step"] < total:
    summary["status"] = "stopped"
  checkpointer.close()
  summary["state"] = state
  return summary


def _init_from(state: dict[str, Any], workdir: str, dont_load: Sequence[str] = ()) -> dict[str, Any]:
  """Copies params whose path exists in `workdir` (a run or shipped name) into a fresh state (EMA too).

  Params only the new model has (adapters, LoRA, a resampler) and paths matching a `dont_load` regex keep
  their fresh init; any other shared path with a different shape is an error (the configs disagree).
  """
  _, source = load_params(workdir, devices=jax.devices()[:1])
  source = shipped.flatten_params(source)
  skip = [re.compile(r) for r in dont_load]
  copied = []

  def take(path, leaf):
    key = "/".join(str(getattr(p, "key", p)) for p in path)
    if key not in source or any(r.search(key) for r in skip):
      return leaf
    if source[key].shape != leaf.shape:
      raise TrainError(f"init_from {workdir}: {key} has shape {source[key].shape} there but {leaf.shape} here; "
                       f"the model configs must agree on shared params.")
    copied.append(key)
    return jax.device_put(source[key].astype(leaf.dtype), leaf.sharding)

  state = dict(state)
  for name in ("params", "ema"):
    if name in state:
      state[name] = jax.tree_util.tree_map_with_path(take, state[name])
  if not copied:
    raise TrainError(f"init_from {workdir}: no param path matches this model; is it the right workdir?")
  return state


def _flops_per_step(task: Task, config, compiled) -> float | None:
  per_example = task.flops_per_example()
  if per_example:
    return per_example * config.batch_size
  per_device = metrics_writer.compiled_flops(compiled)
  return per_device * jax.device_count() if per_device else None


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The training config of a workdir (its config.json) or of a shipped name, without loading weights."""
  if shipped.is_shipped(workdir):
    return config_lib.from_json(json.dumps(shipped.info(workdir)["config"]))
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise TrainError(f"{workdir} has no config.json; pass the workdir of a `stylejax train` run.")
  with open(path) as f:
    return config_lib.from_json(f.read())


def load_params(workdir: str, devices: Sequence[jax.Device] | None = None, use_ema: bool = True,
                step: int | None = None) -> tuple[Any, Any]:
  """Restores (config, params) from a workdir's checkpoint `step` (default: the latest) onto `devices`
  (default: all). Only the params (or their EMA) are read: no train state is initialised, no optimizer state read.

  A shipped name ("shapestyle:base") returns its config and numpy params instead.
  """
  if shipped.is_shipped(workdir):
    if step is not None:
      raise TrainError(f"{workdir} is a shipped model with one set of weights; it has no step {step}.")
    return shipped.load(workdir)
  config = load_config(workdir)
  config.unlock()
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.lock()
  if ckpt_lib.latest_step(os.path.join(workdir, "checkpoints")) is None:  # checked before anything is built
    raise TrainError(f"{workdir} has no checkpoint yet; train first.")
  *_, state, _ = build(config, devices, abstract=True)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  if step is not None and step not in checkpointer.all_steps():
    raise TrainError(f"{workdir} has no checkpoint at step {step}; it has {checkpointer.all_steps()}.")
  name = "ema" if (use_ema and "ema" in state) else "params"
  params = checkpointer.restore_entries({name: state[name]}, step=step)[name]
  checkpointer.close()
  return config, params


def load_part(workdir: str = "", config: str = "", seed: int = 0) -> tuple[Task, Any]:
  """(task, unboxed params) of a model another model builds on (a frozen tokenizer, text encoder).

  From a trained `workdir` (its config.json and latest checkpoint), or, when `workdir` is empty,
  freshly initialised from the config spec `config` ("configs/x.py:variant"): untrained weights,
  meant for runlocal smoke runs and tests.
  """
  if workdir:
    part_config, params = load_params(workdir, devices=jax.devices()[:1])
    return load_task(part_config), params_to_numpy(params)
  if not config:
    raise config_lib.ConfigError("a model part needs a `workdir` (trained) or a `config` spec (random init).")
  part_config = config_lib.load_config(config)
  task = load_task(part_config)
  params = jax.jit(lambda rng: parallel.unbox(task.init(rng)))(jax.random.key(seed))
  return task, params_to_numpy(params)


def params_to_numpy(params: Any) -> Any:
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
