"""Meshes, logical axis rules, born-sharded params, host batches -> global arrays, multi-host init.

The pjit model: one named mesh ('data', 'fsdp', 'tensor'); modules name their axes logically
and the config's rules map logical names to mesh axes.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")


class ParallelError(ValueError):
  """A mesh or batch layout that cannot work; the message says how to fix it."""


def maybe_initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> bool:
  """Starts `jax.distributed` when flags or the environment say this is a multi-process run.

  Explicit flags win; otherwise a TPU VM pod slice (several worker hostnames) auto-detects.
  Returns True if a multi-process runtime was initialised.
  """
  coordinator = coordinator or os.environ.get("STYLEJAX_COORDINATOR", "")
  num_processes = num_processes or int(os.environ.get("STYLEJAX_NUM_PROCESSES", "0"))
  if process_id < 0:
    process_id = int(os.environ.get("STYLEJAX_PROCESS_ID", "-1"))
  if coordinator:
    if num_processes <= 0 or process_id < 0:
      raise ParallelError("--coordinator needs --num_processes and --process_id as well.")
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in hosts.split(",") if h]) > 1:
    jax.distributed.initialize()  # TPU VM pod: JAX reads the topology from the metadata server
    return True
  return False


def mesh_shape(mesh_config: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves a {'data','fsdp','tensor'} spec with at most one -1 into a shape that uses every device."""
  unknown = [k for k in MESH_AXES if k not in mesh_config]
  extra = [k for k in mesh_config if k not in MESH_AXES]
  if unknown or extra:
    raise ParallelError(f"config.mesh must have exactly the axes {MESH_AXES}; got {sorted(mesh_config)}.")
  sizes = [int(mesh_config[k]) for k in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ParallelError(f"config.mesh may have at most one -1 axis; got {dict(zip(MESH_AXES, sizes))}.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ParallelError(f"config.mesh sizes must be positive or -1; got {dict(zip(MESH_AXES, sizes))}.")
  known = math.prod(s for s in sizes if s != -1)
  if num_devices % known:
    raise ParallelError(
        f"mesh {dict(zip(MESH_AXES, sizes))} does not divide the {num_devices} devices; "
        f"choose axis sizes whose product divides {num_devices} (use -1 for 'the rest').")
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise ParallelError(
        f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} of {num_devices} devices; "
        f"make the product equal {num_devices} or set one axis to -1.")
  return tuple(sizes)


def make_mesh(mesh_config: dict[str, int], devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Builds the ('data','fsdp','tensor') mesh from the config over `devices` (default: all)."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(dict(mesh_config), len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)  # Explicit axes break linen logical constraints
  return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch(global_batch: int, mesh: jax.sharding.Mesh, grad_accum_steps: int = 1) -> None:
  """Rejects a global batch that the data axes (and accumulation and hosts) cannot split evenly."""
  dp = data_parallel_size(mesh)
  if global_batch % grad_accum_steps:
    raise ParallelError(
        f"batch_size {global_batch} is not divisible by grad_accum_steps {grad_accum_steps}; "
        f"pick a batch size that is a multiple of it.")
  micro = global_batch // grad_accum_steps
  if micro % dp:
    raise ParallelError(
        f"batch_size {global_batch} (micro-batch {micro}) does not divide over the {dp} data-parallel "
        f"devices (data x fsdp); use a multiple of {dp * grad_accum_steps}.")
  if global_batch % jax.process_count():
    raise ParallelError(f"batch_size {global_batch} does not divide over {jax.process_count()} hosts.")


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over data and fsdp; everything else replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def unbox(tree: Any) -> Any:
  """Strips `nn.Partitioned` boxes without adding sharding constraints (works on abstract trees)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box)


def as_rules(rules: Sequence[Sequence[Any]]) -> tuple:
  """Config rules (lists, as JSON keeps them) -> the tuple form flax expects."""
  return tuple((name, tuple(ax) if isinstance(ax, list) else ax) for name, ax in rules)


def abstract_sharded(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: jax.sharding.Mesh,
                     rules: Sequence[Sequence[Any]]) -> tuple[Any, Any]:
  """The params `init_fn` would make, as `jax.ShapeDtypeStruct`s carrying their shardings, without computing them
  (a checkpoint-restore target). Returns (abstract unboxed params, their shardings)."""
  rules = as_rules(rules)
  with nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(init_fn, rng)
    shardings = unbox(nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules))
  return with_shardings(unbox(abstract), shardings), shardings


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """Shape/dtype leaves (arrays or ShapeDtypeStructs) -> ShapeDtypeStructs with the matching `shardings` leaf."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def init_sharded(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: jax.sharding.Mesh,
                 rules: Sequence[Sequence[Any]], shardings: Any = None) -> tuple[Any, Any]:
  """Initialises params directly on their devices: eval_shape -> specs -> shardings -> jitted init.

  Returns (unboxed params, their shardings). `shardings`: the params' shardings when already known
  (`abstract_sharded`), which skips the eval_shape.
  """
  if shardings is None:
    _, shardings = abstract_sharded(init_fn, rng, mesh, rules)
  with nn.logical_axis_rules(as_rules(rules)):
    params = jax.jit(lambda r: unbox(init_fn(r)), out_shardings=shardings)(rng)
  return params, shardings


def host_batch_to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch (this process's slice of the global batch) -> global sharded arrays."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def param_count(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def describe_sharding(params: Any) -> dict[str, str]:
  """'/'-joined param path -> its PartitionSpec, for logs and tests."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
    out[key] = str(getattr(getattr(leaf, "sharding", None), "spec", None))
  return out
