"""Checkpoints: the only module that imports orbax.

A checkpoint holds the train state pytree (restorable into any mesh: the caller passes the
target shardings) and the data-pipeline position as JSON, so a resumed run sees the same batches.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def latest_step(directory: str) -> int | None:
  """The latest saved step in `directory`; None when it has none or does not exist (nothing is created)."""
  if not os.path.isdir(directory):
    return None
  manager = ocp.CheckpointManager(os.path.abspath(directory),
                                  options=ocp.CheckpointManagerOptions(create=False, read_only=True))
  step = manager.latest_step()
  manager.close()
  return step


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
    abstract = jax.tree.map(_abstract, state_target)
    args = {"state": ocp.args.StandardRestore(abstract)}
    has_data = with_data and "data" in self._item_names(step)
    if has_data:
      args["data"] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], (restored["data"] if has_data else None)

  def restore_entries(self, targets: dict[str, Any], step: int | None = None) -> dict[str, Any]:
    """Restores only the named top-level entries of a saved state (e.g. {"params": abstract params}), reading
    nothing else from disk: no optimizer state is read or allocated when only params are wanted."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(_abstract, targets)
    args = ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=True)
    return self._manager.restore(step, args=ocp.args.Composite(state=args))["state"]

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
