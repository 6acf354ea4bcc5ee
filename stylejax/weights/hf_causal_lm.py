"""transformers Llama / Qwen2 / Qwen3 causal LMs -> `DecoderLM` params.

Reads a hub-layout directory (config.json + model.safetensors, or a sharded
model.safetensors.index.json) or a hub id (through huggingface_hub.snapshot_download). Only
safetensors are read (numpy, `safe_open`); pickled .bin checkpoints are refused.

Key map (transformers -> ours; torch Linear weights are [out, in], ours [in, out]):
  model.embed_tokens.weight                    embed/embedding              [V, D]
  model.layers.i.input_layernorm.weight        layers_i/attn_norm/scale
  model.layers.i.self_attn.{q,k,v}_proj.weight layers_i/attn/{q,k,v}/kernel  T -> [D, H, Dh]
  model.layers.i.self_attn.{q,k,v}_proj.bias   layers_i/attn/{q,k,v}/bias    -> [H, Dh]
  model.layers.i.self_attn.o_proj.weight       layers_i/attn/o/kernel       T -> [H, Dh, D]
  model.layers.i.self_attn.{q,k}_norm.weight   layers_i/attn/{q,k}_norm/scale (Qwen3)
  model.layers.i.post_attention_layernorm.w    layers_i/mlp_norm/scale
  model.layers.i.mlp.{gate,up,down}_proj.w     layers_i/mlp/{gate,up,down}/kernel  T
  model.norm.weight                            final_norm/scale
  lm_head.weight                               lm_head/kernel  T (absent / ignored when tied)
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stylejax.models.ar import DecoderLM, stack_layer_params

SUPPORTED = ("llama", "qwen2", "qwen3")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class WeightLoadError(ValueError):
  """A checkpoint that does not fit the model; the message lists every problem."""


# ----------------------------------------------------------------------------- config


def config_from_hf(hf_config: Any) -> dict[str, Any]:
  """A transformers PretrainedConfig (llama/qwen2/qwen3) -> `DecoderLM` keyword arguments."""
  mt = getattr(hf_config, "model_type", "")
  if mt not in SUPPORTED:
    raise WeightLoadError(f"model_type {mt!r} is not supported; supported: {SUPPORTED}.")
  act = getattr(hf_config, "hidden_act", "silu")
  if act not in ("silu", "swish"):
    raise WeightLoadError(f"hidden_act {act!r} is not supported (SwiGLU with silu only).")
  rope_params = dict(getattr(hf_config, "rope_parameters", None) or {})
  legacy_scaling = getattr(hf_config, "rope_scaling", None)  # transformers < 5
  rope_type = rope_params.get("rope_type", (legacy_scaling or {}).get("rope_type", "default"))
  if rope_type != "default":
    raise WeightLoadError(f"rope_type {rope_type!r} (RoPE scaling) is not supported; only 'default'.")
  theta = rope_params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
  layer_types = getattr(hf_config, "layer_types", None) or []
  if getattr(hf_config, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
    raise WeightLoadError("sliding-window attention layers are not supported.")
  heads = hf_config.num_attention_heads
  head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
  attention_bias = bool(getattr(hf_config, "attention_bias", False))
  return dict(
      vocab_size=hf_config.vocab_size,
      hidden=hf_config.hidden_size,
      layers=hf_config.num_hidden_layers,
      heads=heads,
      kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
      head_dim=head_dim,
      mlp_dim=hf_config.intermediate_size,
      rope_theta=float(theta),
      rms_eps=float(hf_config.rms_norm_eps),
      qkv_bias=True if mt == "qwen2" else attention_bias,  # Qwen2 always biases q/k/v, never o
      out_bias=False if mt == "qwen2" else attention_bias,
      mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
      qk_norm="rms" if mt == "qwen3" else "none",
      tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
      max_len=int(getattr(hf_config, "max_position_embeddings", 2048)),
  )


# ----------------------------------------------------------------------------- files


def resolve_checkpoint_dir(path_or_repo: str, revision: str | None = None) -> str:
  """A local directory as is; otherwise a hub id fetched with snapshot_download (safetensors only)."""
  if os.path.isdir(path_or_repo):
    return path_or_repo
  try:
    from huggingface_hub import snapshot_download
    return snapshot_download(path_or_repo, revision=revision,
                             allow_patterns=["config.json", "generation_config.json", "*.safetensors",
                                             "model.safetensors.index.json"])
  except Exception as e:  # offline, unknown repo, no auth: one clear line
    raise WeightLoadError(f"{path_or_repo!r} is not a local directory and could not be fetched from the hub "
                          f"({type(e).__name__}: {e}); pass a directory with config.json + *.safetensors.") from e


def safetensors_files(ckpt_dir: str) -> dict[str, str]:
  """tensor name -> file path, from model.safetensors.index.json or model.safetensors."""
  index = os.path.join(ckpt_dir, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return {k: os.path.join(ckpt_dir, v) for k, v in weight_map.items()}
  single = os.path.join(ckpt_dir, "model.safetensors")
  if os.path.exists(single):
    from safetensors import safe_open
    with safe_open(single, framework="numpy") as f:
      return {k: single for k in f.keys()}
  listing = sorted(os.listdir(ckpt_dir))
  hint = " (pickled .bin checkpoints are refused; re-save with safe_serialization=True)" if any(
      n.endswith(".bin") for n in listing) else ""
  raise WeightLoadError(f"no model.safetensors or model.safetensors.index.json in {ckpt_dir}{hint}; found {listing}.")


def read_tensors(files: dict[str, str], names: Iterable[str]) -> dict[str, np.ndarray]:
  """Reads the named tensors as numpy arrays, opening each file once."""
  from safetensors import safe_open
  by_file: dict[str, list[str]] = {}
  for n in names:
    by_file.setdefault(files[n], []).append(n)
  out = {}
  for path, keys in by_file.items():
    with safe_open(path, framework="numpy") as f:
      for k in keys:
        out[k] = f.get_tensor(k)
  return out


# ----------------------------------------------------------------------------- conversion


def _key_map(model: DecoderLM) -> dict[tuple[str, ...], tuple[str, Callable[[np.ndarray], np.ndarray]]]:
  """Our unscanned param path -> (transformers key, transform)."""
  d, h, kvh, dh = model.hidden, model.heads, model.kv_heads, model.head_dim
  ident = lambda w: w
  t = lambda w: w.T
  proj_in = lambda n: (lambda w: w.T.reshape(d, n, dh))
  bias_in = lambda n: (lambda w: w.reshape(n, dh))
  m: dict[tuple[str, ...], tuple[str, Callable]] = {
      ("embed", "embedding"): ("model.embed_tokens.weight", ident),
      ("final_norm", "scale"): ("model.norm.weight", ident),
  }
  if not model.tie_embeddings:
    m[("lm_head", "kernel")] = ("lm_head.weight", t)
  for i in range(model.layers):
    hf, ours = f"model.layers.{i}", f"layers_{i}"
    m[(ours, "attn_norm", "scale")] = (f"{hf}.input_layernorm.weight", ident)
    m[(ours, "mlp_norm", "scale")] = (f"{hf}.post_attention_layernorm.weight", ident)
    for name, n in (("q", h), ("k", kvh), ("v", kvh)):
      m[(ours, "attn", name, "kernel")] = (f"{hf}.self_attn.{name}_proj.weight", proj_in(n))
      m[(ours, "attn", name, "bias")] = (f"{hf}.self_attn.{name}_proj.bias", bias_in(n))
    m[(ours, "attn", "o", "kernel")] = (f"{hf}.self_attn.o_proj.weight", lambda w: w.T.reshape(h, dh, d))
    m[(ours, "attn", "o", "bias")] = (f"{hf}.self_attn.o_proj.bias", ident)
    for name in ("q", "k"):
      m[(ours, "attn", f"{name}_norm", "scale")] = (f"{hf}.self_attn.{name}_norm.weight", ident)
    for name in ("gate", "up", "down"):
      m[(ours, "mlp", name, "kernel")] = (f"{hf}.mlp.{name}_proj.weight", t)
      m[(ours, "mlp", name, "bias")] = (f"{hf}.mlp.{name}_proj.bias", ident)
  return m


def expected_shapes(model: DecoderLM) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
  """Flattened unscanned param shapes from `jax.eval_shape(init)`."""
  unscanned = model.clone(scan_layers=False, remat=False)
  tree = jax.eval_shape(unscanned.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(tree))[0]
  return {tuple(p.key for p in path): leaf for path, leaf in flat}


def convert_state(tensor_names: Iterable[str], read: Callable[[list[str]], dict[str, np.ndarray]],
                  model: DecoderLM) -> dict:
  """Builds our (nested, unboxed, scanned if `model.scan_layers`) params from transformers tensors.

  Raises one `WeightLoadError` listing every missing key, unexpected key and shape mismatch.
  """
  names = set(tensor_names)
  shapes = expected_shapes(model)
  kmap = _key_map(model)
  missing, mismatched = [], []
  needed = {}
  for path, want in shapes.items():
    if path not in kmap:
      missing.append(f"{'/'.join(path)} (no transformers key maps to it)")
    elif kmap[path][0] not in names:
      missing.append(f"{kmap[path][0]} (for {'/'.join(path)})")
    else:
      needed[path] = kmap[path]
  used = {hf for hf, _ in needed.values()}
  ignorable = lambda n: n.endswith(_IGNORED_SUFFIXES) or (model.tie_embeddings and n == "lm_head.weight")
  unexpected = sorted(n for n in names - used if not ignorable(n))
  tensors = read(sorted(used))
  flat = {}
  for path, (hf, fn) in needed.items():
    raw, want = np.asarray(tensors[hf]), shapes[path]
    try:
      arr = fn(raw)
    except ValueError:  # a reshape that cannot work: the source shape is wrong
      arr = raw
    if tuple(arr.shape) != tuple(want.shape):
      mismatched.append(f"{hf} {tuple(raw.shape)} -> {'/'.join(path)}: want {tuple(want.shape)}")
      continue
    flat[path] = jnp.asarray(arr.astype(np.float32), dtype=want.dtype)
  if missing or unexpected or mismatched:
    parts = []
    if missing:
      parts.append(f"missing {len(missing)}: " + ", ".join(missing))
    if unexpected:
      parts.append(f"unexpected {len(unexpected)}: " + ", ".join(unexpected))
    if mismatched:
      parts.append(f"shape mismatch {len(mismatched)}: " + "; ".join(mismatched))
    raise WeightLoadError("checkpoint does not fit DecoderLM — " + " | ".join(parts))
  params: dict = {}
  for path, arr in flat.items():
    node = params
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = arr
  if model.scan_layers:
    params = stack_layer_params(params, model.layers)
  return params


def load_hf_causal_lm(path_or_repo: str, *, revision: str | None = None, dtype: Any = "float32",
                      param_dtype: Any = "float32", scan_layers: bool = False, remat: bool = False,
                      max_len: int | None = None, **overrides: Any) -> tuple[DecoderLM, dict]:
  """Loads a transformers Llama/Qwen2/Qwen3 causal LM. Returns (DecoderLM, unboxed params).

  `overrides` replace DecoderLM fields read from config.json (e.g. rope='1d', text_dim=...).
  """
  from transformers import AutoConfig
  ckpt_dir = resolve_checkpoint_dir(path_or_repo, revision)
  hf_config = AutoConfig.from_pretrained(ckpt_dir)
  kwargs = config_from_hf(hf_config)
  if max_len is not None:
    kwargs["max_len"] = max_len
  kwargs.update(overrides)
  model = DecoderLM(**kwargs, scan_layers=scan_layers, remat=remat, dtype=jnp.dtype(dtype),
                    param_dtype=jnp.dtype(param_dtype))
  files = safetensors_files(ckpt_dir)
  params = convert_state(files.keys(), lambda names: read_tensors(files, names), model)
  return model, params
