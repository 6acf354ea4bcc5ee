"""Hugging Face CLIP checkpoints <-> `stylejax.models.clip.CLIPModel` params.

Reads `config.json` + `*.safetensors` (hub layout, sharded or not) with numpy through
`safetensors.safe_open`; never unpickles (`pytorch_model.bin`-only repos are refused). The key
map is explicit: every one of our param paths names its HF key and a transform
(linear [out, in] -> [in, out], conv OIHW -> HWIO, or copy), shapes are checked against
`jax.eval_shape(init)`, and all missing / unexpected / mis-shaped keys are reported in one error.
`save_hf` writes the inverse so transformers' `CLIPModel.from_pretrained(dir)` loads our weights.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from stylejax.models.clip import CLIPConfig, CLIPModel, init_params

# Non-persistent buffers older transformers versions still wrote into checkpoints.
_IGNORED_SUFFIXES = ("position_ids",)
_LINEAR, _CONV, _COPY = "linear", "conv", "copy"
_LAYER = re.compile(r"^layers_(\d+)$")


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def hf_key(path: tuple[str, ...]) -> tuple[str, str]:
  """Our param path -> (HF state-dict key, transform). Module names are HF's except that linen's
  `layers_3` is torch's ModuleList entry `layers.3`; leaves are renamed (kernel -> weight, ...)."""
  path = tuple(_LAYER.sub(r"layers.\1", p) for p in path)
  *mods, leaf = path
  if leaf in ("class_embedding", "logit_scale"):
    return ".".join(path), _COPY
  if leaf == "embedding":  # nn.Embed
    return ".".join(mods + ["weight"]), _COPY
  if leaf == "scale":  # nn.LayerNorm
    return ".".join(mods + ["weight"]), _COPY
  if leaf == "kernel":
    return ".".join(mods + ["weight"]), _CONV if mods[-1] == "patch_embedding" else _LINEAR
  if leaf == "bias":
    return ".".join(path), _COPY
  raise KeyError(f"no HF key rule for param {'/'.join(path)}")


def key_map(config: CLIPConfig) -> dict[tuple[str, ...], tuple[str, str, tuple[int, ...]]]:
  """Every param path of `CLIPModel(config)` -> (HF key, transform, our shape)."""
  shapes = jax.eval_shape(lambda: nn.unbox(init_params(CLIPModel(config), jax.random.key(0))))
  return {p: (*hf_key(p), tuple(s.shape)) for p, s in _flatten(shapes)}


def _to_ours(x: np.ndarray, transform: str) -> np.ndarray:
  if transform == _LINEAR:
    return x.T
  if transform == _CONV:
    return x.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  return x


def _to_hf(x: np.ndarray, transform: str) -> np.ndarray:
  if transform == _LINEAR:
    return x.T
  if transform == _CONV:
    return x.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  return x


def resolve(path_or_id: str) -> str:
  """A local directory, or a hub repo id downloaded (config + safetensors only) via huggingface_hub."""
  if os.path.isdir(path_or_id):
    return path_or_id
  if os.path.exists(path_or_id):
    raise ValueError(f"{path_or_id} is a file; pass the directory holding config.json and model.safetensors.")
  try:
    from huggingface_hub import snapshot_download
    return snapshot_download(path_or_id, allow_patterns=["config.json", "model*.safetensors",
                                                         "model.safetensors.index.json"])
  except Exception as e:  # offline, unknown repo, ...: one clear line
    raise ValueError(f"{path_or_id!r} is not a local directory and could not be fetched from the hub "
                     f"({type(e).__name__}: {e}); download it on a connected machine and pass the path.") from None


def _checkpoint_files(directory: str) -> list[str]:
  """model.safetensors, or the shards a model.safetensors.index.json names (other *.safetensors in a
  repo, e.g. open_clip's, are not transformers checkpoints and are ignored)."""
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      return sorted({os.path.join(directory, v) for v in json.load(f)["weight_map"].values()})
  single = os.path.join(directory, "model.safetensors")
  if os.path.exists(single):
    return [single]
  raise ValueError(f"no model.safetensors in {directory}; pickled checkpoints (pytorch_model.bin) are not "
                   "loaded. Convert with transformers: model.save_pretrained(dir, safe_serialization=True).")


def _read_tensors(directory: str) -> dict[str, np.ndarray]:
  out = {}
  for file in _checkpoint_files(directory):
    with safe_open(file, framework="numpy") as f:
      bf16 = [k for k in f.keys() if f.get_slice(k).get_dtype() == "BF16"]
      out.update((k, f.get_tensor(k)) for k in f.keys() if k not in bf16)
    if bf16:  # numpy has no bfloat16: read those through jax (ml_dtypes) and widen
      with safe_open(file, framework="flax") as f:
        out.update((k, np.asarray(f.get_tensor(k)).astype(np.float32)) for k in bf16)
  return out


def load_hf(path_or_id: str, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32
            ) -> tuple[CLIPModel, dict[str, Any], CLIPConfig]:
  """Loads a transformers `CLIPModel` checkpoint.

  Returns (model, params, config); `params` is the unboxed "params" collection, use it as
  `model.apply({"params": params}, ...)`. Raises ValueError listing every key problem at once.
  """
  directory = resolve(path_or_id)
  with open(os.path.join(directory, "config.json")) as f:
    raw = json.load(f)
  if raw.get("model_type", "clip") != "clip":
    raise ValueError(f"{directory}/config.json has model_type {raw.get('model_type')!r}; expected 'clip' "
                     "(a full CLIPModel with text and vision towers).")
  config = CLIPConfig.from_hf_dict(raw)
  tensors = _read_tensors(directory)
  params, problems = {}, []
  used = set()
  for path, (key, transform, shape) in key_map(config).items():
    if key not in tensors:
      problems.append(f"missing: {key} (for {'/'.join(path)}, shape {shape})")
      continue
    used.add(key)
    value = _to_ours(np.asarray(tensors[key]), transform)
    if tuple(value.shape) != shape:
      problems.append(f"shape: {key} is {tuple(tensors[key].shape)}, gives {tuple(value.shape)}; expected {shape}")
      continue
    params[path] = jnp.asarray(value, param_dtype)
  unexpected = sorted(k for k in tensors if k not in used and not k.endswith(_IGNORED_SUFFIXES))
  problems += [f"unexpected: {k} {tuple(tensors[k].shape)}" for k in unexpected]
  if problems:
    raise ValueError(f"{directory} does not match CLIPModel({config}):\n  " + "\n  ".join(problems))
  return CLIPModel(config, dtype=dtype, param_dtype=param_dtype), _unflatten(params), config


def save_hf(params: Any, config: CLIPConfig, directory: str) -> None:
  """Writes `params` (boxed or not) as `config.json` + `model.safetensors` in HF `CLIPModel` layout."""
  flat = dict(_flatten(nn.unbox(params)))
  expected = key_map(config)
  if set(flat) != set(expected):
    missing = sorted("/".join(p) for p in set(expected) - set(flat))
    extra = sorted("/".join(p) for p in set(flat) - set(expected))
    raise ValueError(f"params do not match the config: missing {missing}, unexpected {extra}")
  tensors = {}
  for path, (key, transform, shape) in expected.items():
    value = np.asarray(jax.device_get(flat[path]), np.float32)
    if value.shape != shape:
      raise ValueError(f"param {'/'.join(path)} has shape {value.shape}; the config implies {shape}")
    tensors[key] = np.array(_to_hf(value, transform), order="C")  # keeps 0-d logit_scale 0-d
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config.to_hf_dict(), f, indent=2)
