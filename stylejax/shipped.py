"""Models shipped inside the package: the ShapeStyle world's trained parts, named "shapestyle:<part>".

  stylejax sample --workdir shapestyle:base --prompt "two red stars in neon outline style"
  pipe = stylejax.load("shapestyle:base")

Each part is two files under `stylejax/assets/shapestyle/`: `<part>.safetensors` (params, '/'-joined
keys) and `<part>.json` (the training config, the command that produced it, its recorded quality).
Anywhere a workdir is accepted (`trainer.load_params`, part specs, `--workdir`), a shipped name works
too. `launch/build_shapestyle.py` rebuilds all of them with `export`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

PREFIX = "shapestyle:"
ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "shapestyle")
# part name -> what it is (the README table and error messages use these)
PARTS = {
    "tokenizer": "VQGAN image tokenizer, 64x64 -> 8x8 ids from 128 codes (merged from 4096; decoder fine-tuned)",
    "clip": "tiny CLIP (text tower for Muse/AR prompts; CLIP-T/CLIP-I metrics)",
    "clip_style": "tiny CLIP after its conv-stem stage (vision tower: StyleAR's style tokens)",
    "content": "content classifier scorer (shape, color, count)",
    "style": "style encoder scorer (CSD analogue)",
    "base": "text-to-image Muse base on plain + named styles",
    "ar": "text-to-image AR base on plain + named styles",
}


class ShippedError(ValueError):
  """A shipped model name is unknown or its files are missing."""


def is_shipped(name: str | None) -> bool:
  return bool(name) and str(name).startswith(PREFIX)


def _files(part: str, root: str | None = None) -> tuple[str, str]:
  root = root or ASSETS
  return os.path.join(root, part + ".safetensors"), os.path.join(root, part + ".json")


def available(root: str | None = None) -> list[str]:
  """Shipped names whose files are present in this install."""
  return [PREFIX + p for p in PARTS if all(os.path.exists(f) for f in _files(p, root))]


def flatten_params(params: Any) -> dict[str, np.ndarray]:
  """Nested params (boxed or not) -> {"a/b/kernel": numpy array}."""
  import flax.linen as nn
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(params)):
    key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
    out[key] = np.array(jax.device_get(leaf), copy=True)  # contiguous; keeps 0-d scalars 0-d
  return out


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """{"a/b/kernel": array} -> nested dicts."""
  out: dict[str, Any] = {}
  for key, value in flat.items():
    node = out
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def _part(name: str) -> str:
  part = name[len(PREFIX):] if is_shipped(name) else name
  if part not in PARTS:
    raise ShippedError(f"unknown shipped model {name!r}; the ShapeStyle world has "
                       f"{', '.join(PREFIX + p for p in PARTS)}.")
  return part


def info(name: str, root: str | None = None) -> dict[str, Any]:
  """The part's JSON record: {"config": {...}, "command": str, "metrics": {...}, ...}."""
  part = _part(name)
  weights, record = _files(part, root)
  if not (os.path.exists(weights) and os.path.exists(record)):
    raise ShippedError(f"{PREFIX + part} is not built in this install ({weights} missing); rebuild the shipped "
                       f"models with `python launch/build_shapestyle.py` or pass a trained workdir instead.")
  with open(record) as f:
    return json.load(f)


def load(name: str, root: str | None = None) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """(training config, params as nested numpy float32 dicts) of a shipped part."""
  from safetensors.numpy import load_file
  from stylejax import config as config_lib
  record = info(name, root)
  flat = load_file(_files(_part(name), root)[0])
  params = unflatten_params({k: v.astype(np.float32) for k, v in flat.items()})
  return config_lib.from_json(json.dumps(record["config"])), params


def export(workdir: str, part: str, command: str, metrics: Mapping[str, Any] | None = None,
           dtype: str = "float32", root: str | None = None) -> tuple[str, str]:
  """Writes a trained workdir's params (EMA if kept) as shipped part `part`; returns the two paths.

  `dtype="float16"` halves the file (the package budget is 30 MB); params load back as float32,
  so recorded metrics must be measured on the exported files (see launch/build_shapestyle.py).
  """
  from stylejax.train import trainer
  from stylejax.train.task import load_task
  config, params = trainer.load_params(workdir, devices=jax.devices()[:1])
  params = load_task(config).exported_params(params)  # e.g. without a GAN's discriminator
  return export_params(config, params, part, command, metrics, dtype, root)


def export_params(config: ml_collections.ConfigDict, params: Any, part: str, command: str,
                  metrics: Mapping[str, Any] | None = None, dtype: str = "float32", root: str | None = None,
                  **extra: Any) -> tuple[str, str]:
  """`export` from (config, params) in hand, e.g. after a post-training step; `extra` goes in the record."""
  from safetensors.numpy import save_file
  from stylejax import config as config_lib
  part = _part(part)
  flat = {k: v.astype(dtype) for k, v in flatten_params(params).items()}
  weights, record_path = _files(part, root)
  os.makedirs(os.path.dirname(weights), exist_ok=True)
  save_file(flat, weights)
  record = {"part": part, "what": PARTS[part], "command": command, "dtype": dtype,
            "num_params": int(sum(v.size for v in flat.values())),
            "config": json.loads(config_lib.to_json(config)), "metrics": dict(metrics or {}), **extra}
  with open(record_path, "w") as f:
    json.dump(record, f, indent=1, sort_keys=True)
  return weights, record_path


def record_metrics(name: str, metrics: Mapping[str, Any], root: str | None = None) -> None:
  """Merges measured `metrics` into a shipped part's JSON record."""
  record = info(name, root)
  record["metrics"].update(metrics)
  with open(_files(_part(name), root)[1], "w") as f:
    json.dump(record, f, indent=1, sort_keys=True)
