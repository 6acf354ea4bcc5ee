"""Checkpoints: the only module that imports orbax.

A checkpoint holds the train state pytree (restorable into any mesh: the caller passes the
target shardings) and the data-pipeline position as JSON, so a resumed run sees the same batches.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """A saved checkpoint does not fit the state it is restored into; the message says what to do."""


def latest_step(directory: str) -> int | None:
  """The latest saved step in `directory`; None when it has none or does not exist (nothing is created)."""
  if not os.path.isdir(directory):
    return None
  with _quiet_orbax():  # a read-only manager warns that it is read-only, on every resume and load
    manager = ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
        create=False, read_only=True, save_interval_steps=0))
    step = manager.latest_step()
    manager.close()
  return step


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax's warnings about reading (read-only managers, an item's metadata file) say nothing a user can act on."""
  absl_log = logging.getLogger("absl")
  level = absl_log.level
  absl_log.setLevel(logging.ERROR)
  try:
    yield
  finally:
    absl_log.setLevel(level)


class Checkpointer:
  """Async saves every N steps, keeps the last K, restores the latest into given shardings."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict | None = None, force: bool = False) -> bool:
    args = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
      args["data"] = ocp.args.JsonSave(data_state)
    return self._manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, state_target: Any, step: int | None = None, with_data: bool = True) -> tuple[Any, dict | None]:
    """Restores into `state_target`: a pytree of arrays or `jax.ShapeDtypeStruct`s with shardings.

    The target's shardings decide the layout, so a checkpoint saved on 8 devices restores on 1.
    """
    step = self.latest_step() if step is None else step
    self._check_params_fit(step, state_target)
    abstract = jax.tree.map(_abstract, state_target)
    args = {"state": ocp.args.StandardRestore(abstract)}
    has_data = with_data and "data" in self._item_names(step)
    if has_data:
      args["data"] = ocp.args.JsonRestore()
    restored = self._restore(step, ocp.args.Composite(**args))
    return restored["state"], (restored["data"] if has_data else None)

  def restore_entries(self, targets: dict[str, Any], step: int | None = None) -> dict[str, Any]:
    """Restores only the named top-level entries of a saved state (e.g. {"params": abstract params}), reading
    nothing else from disk: no optimizer state is read or allocated when only params are wanted."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(_abstract, targets)
    args = ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=True)
    return self._restore(step, ocp.args.Composite(state=args))["state"]

  def _restore(self, step: int, args: Any) -> Any:
    try:
      return self._manager.restore(step, args=args)
    except ValueError as e:  # orbax: tree structures or array shapes differ (its message can be pages long)
      raise self._misfit(step, str(e).strip().splitlines()[0].split(". ")[0].rstrip(".:")) from e

  def _check_params_fit(self, step: int, state_target: Any) -> None:
    """Compares the saved params' names and shapes with the target's before any array is read: a failed
    read of a misfit leaves orbax's async readers printing errors at exit."""
    if not isinstance(state_target, dict) or "params" not in state_target:
      return
    try:
      with _quiet_orbax(), ocp.StandardCheckpointer() as reader:
        saved = reader.metadata(os.path.join(self.directory, str(step), "state")).item_metadata["params"]
    except (FileNotFoundError, KeyError, TypeError, ValueError):
      return  # no readable metadata: the restore itself decides
    shapes = lambda tree: {jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", ()))
                           for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    have, want = shapes(saved), shapes(state_target["params"])
    for name in sorted(set(have) | set(want)):
      if have.get(name) != want.get(name):
        fmt = lambda shape: "absent" if shape is None else f"shape {shape}"
        raise self._misfit(step, f"params{name}: {fmt(have.get(name))} saved, {fmt(want.get(name))} here")

  def _misfit(self, step: int, detail: str) -> CheckpointError:
    config_json = os.path.join(os.path.dirname(self.directory), "config.json")
    return CheckpointError(f"the checkpoint at step {step} in {self.directory} does not fit this config's model "
                           f"and optimizer ({detail[:200]}); resume with the config it was trained with "
                           f"({config_json}) or train in a new --workdir.")

  def _item_names(self, step: int) -> set[str]:
    return set(os.listdir(os.path.join(self.directory, str(step))))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    """True on every host once any host got a preemption notice (multi-host sync point)."""
    return self._manager.reached_preemption(step)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _abstract(x: Any) -> Any:
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
