"""The one interface between the trainer and any model.

A task says how to build parameters, how to score a batch, and where examples come from.
The trainer owns everything else: meshes, shardings, optimizer, checkpoints, logging.

A config names its task by import path (`config.task = "stylejax.models.vqgan:VQGANTask"`);
the trainer calls `Task(config)`.
"""
from __future__ import annotations

import abc
import importlib
from typing import Any, Mapping, Protocol

import jax
import ml_collections

from stylejax.config import ConfigError

Params = Any  # a pytree; leaves may be boxed with `nn.Partitioned` (logical axis names)
Batch = Mapping[str, jax.Array]


class RandomAccessSource(Protocol):
  """A grain-compatible data source: `len()` and `[i]` -> dict of numpy arrays."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


class Task(abc.ABC):
  """Base class of everything the trainer can train."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @abc.abstractmethod
  def init(self, rng: jax.Array) -> Params:
    """Returns freshly initialised params (logically boxed leaves are fine).

    Pure and jittable: the trainer runs it under `jax.eval_shape` and then `jax.jit` with
    sharded outputs, so params are born on their devices.
    """

  @abc.abstractmethod
  def loss(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (scalar loss, aux metrics dict of scalars). `params` are unboxed arrays."""

  @abc.abstractmethod
  def source(self, split: str = "train") -> RandomAccessSource:
    """Examples, one dict of numpy arrays per index (no batch axis)."""

  def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
    """Host-side step on each host batch (numpy in, numpy out) before it is sharded.

    For frozen preprocessing that is cheaper batched than per example: e.g. a frozen VQ
    tokenizer turning images into ids, a frozen text encoder embedding captions. Default: none.
    """
    return batch

  def flops_per_example(self) -> float | None:
    """Analytic training FLOPs per example, or None to use XLA's cost analysis."""
    return None

  def exported_params(self, params: Params) -> Params:
    """The params an exported (shipped) model keeps; a task drops its training-only parts (a GAN's
    discriminator) here. Default: all."""
    return params


def import_object(path: str, what: str = "config.task") -> Any:
  """"package.module:Name" -> the object."""
  module_name, _, attr = path.partition(":")
  if not attr:
    raise ConfigError(f"{what}={path!r} must look like 'package.module:Name'.")
  try:
    return getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f"{what}={path!r} cannot be imported ({e}); check the config.") from e


def load_task(config: ml_collections.ConfigDict) -> Task:
  """Imports `config.task` ("package.module:ClassName") and builds it."""
  return import_object(config.task)(config)
