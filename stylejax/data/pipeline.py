"""grain input pipelines: random-access source -> shuffled, repeated, per-host, batched iterator.

The global example stream is the same on every host (same seed); host p takes elements
p, p + P, p + 2P, ... of it, so the P host batches of step k are disjoint and together are
exactly global examples [k*G, (k+1)*G). The iterator's `get_state()` is a small JSON-able dict
that the trainer checkpoints; `set_state()` on a fresh iterator resumes at the same batch.

Sources are anything with `len` and `[i]` -> dict of numpy arrays: `ShapeStyleSource` (on the fly,
no files), a `tfds.data_source(...)` split (array_record files), or a task's own source.
"""
from __future__ import annotations

from typing import Any, Callable

import grain
import numpy as np

from stylejax.config import ConfigError


def _drop_text(example: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in example.items() if np.asarray(v).dtype.kind not in "USO"}


def make_dataset(source: Any, global_batch_size: int, seed: int = 0, shuffle: bool = True,
                 process_index: int = 0, process_count: int = 1, num_epochs: int | None = None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 numeric_only: bool = False, num_threads: int = 1, prefetch: int = 2,
                 worker_count: int = 0) -> grain.IterDataset:
  """The pipeline as a grain `IterDataset` of host batches (dicts of [G / P, ...] numpy arrays).

  MapDataset.source -> [map transform] -> shuffle(seed) -> repeat(num_epochs, reshuffled each epoch)
  -> host shard [p::P] -> batch(G / P, drop_remainder) -> to_iter_dataset [-> mp_prefetch].

  `num_epochs=None` repeats forever. With finite epochs the stream is cut to whole global batches so
  every host yields the same number of steps. `numeric_only` drops str/bytes/object fields (captions)
  so batches can go straight to `jax.make_array_from_process_local_data`. `worker_count > 0` adds
  grain multiprocessing prefetch (the source and `transform` must then be picklable).
  """
  if global_batch_size <= 0:
    raise ConfigError(f"global_batch_size={global_batch_size}; use a positive batch size.")
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index}, process_count={process_count}; "
                     f"need 0 <= process_index < process_count.")
  if global_batch_size % process_count:
    raise ConfigError(f"global batch size {global_batch_size} does not divide over {process_count} hosts; "
                      f"use a multiple of {process_count}.")
  if num_epochs is not None and num_epochs <= 0:
    raise ConfigError(f"num_epochs={num_epochs}; use a positive count or None (repeat forever).")
  n = len(source)
  if n == 0:
    raise ConfigError("the data source is empty; check the dataset path, split and num_examples.")
  if num_epochs is not None and n * num_epochs < global_batch_size:
    raise ConfigError(f"{n} examples x {num_epochs} epochs is less than one global batch of {global_batch_size}; "
                      f"lower the batch size or raise num_epochs.")
  ds = grain.MapDataset.source(source)
  if transform is not None:
    ds = ds.map(transform)
  if numeric_only:
    ds = ds.map(_drop_text)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)  # reseeds the shuffle every epoch
  if num_epochs is not None:
    ds = ds[: len(ds) // global_batch_size * global_batch_size]
  ds = ds[process_index::process_count]
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
  if worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it


def make_pipeline(source: Any, global_batch_size: int, seed: int = 0, shuffle: bool = True,
                  process_index: int = 0, process_count: int = 1, num_epochs: int | None = None,
                  **kwargs: Any) -> grain.DatasetIterator:
  """An iterator of this host's batches; `get_state()` / `set_state()` checkpoint its position.

  Extra keyword arguments go to `make_dataset` (transform, numeric_only, num_threads, prefetch,
  worker_count).
  """
  return iter(make_dataset(source, global_batch_size, seed=seed, shuffle=shuffle, process_index=process_index,
                           process_count=process_count, num_epochs=num_epochs, **kwargs))
