"""Parameter-efficient adapters: StyleDrop bottlenecks and LoRA, kept in their own subtree.

Design (why it looks like this):
  * Every adapter weight lives in ONE top-level subtree of the model's params, built by
    `AdapterBank` under the name "adapters":
        params = {<the base model's params, unchanged>, "adapters": {module: {proj: {w: array}}}}
    so the base part of a tuned model's tree is exactly the base model's tree. A base
    checkpoint loads into a tuned model, and a tuned parameter set is assembled without
    copying the frozen arrays: `tuned = {**base_params, "adapters": adapter_params}` (the dict
    holds references to the same base arrays). Freezing the base is the regex `^adapters/`
    in `optimizer.trainable` (or `^(?!adapters/)` in `optimizer.freeze`); every adapter leaf
    path also contains "adapters", so `^(?!.*adapter).*` freezes the base too.
  * The bank returns plain arrays stacked over ALL layers ([depth, ...]; layers without an
    adapter get zeros). Blocks take their slice as an ordinary call argument, which is what
    lets the same adapter params drive scanned (`nn.scan`, sliced by the scan) and unscanned
    layers, and lets the model run with adapters off (`adapters=False`) from the same tree.
  * Both kinds are "two matrices per site": [*in, r] then [r, *out], the second zero-initialised,
    so a freshly tuned model computes exactly the base model's outputs (x + 0 is exact; under
    jit XLA may schedule the extra matmuls differently, so expect agreement to float rounding).

StyleDrop (arXiv 2306.00983): `a + gelu(a W_down) W_up` on an attention sub-layer's output
(after the output projection, before the residual add); W_up zero-init.
  mode "per_layer": independent W_down/W_up per selected layer.
  mode "shared": one W_down/W_up shared by all selected layers plus per-layer offsets
    (zero-init), so layer l uses (W_down + dW_down[l], W_up + dW_up[l]); the offsets let layers
    specialise while most capacity is shared. (The paper mentions sharing without the exact
    form; this is our choice.)
LoRA (Hu et al. 2021): `y = x W + (alpha / rank) (x A) B`, B zero-init; alpha=None means
scale 1 (StyleAR's recipe). The same per_layer / shared modes apply.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from stylejax.config import ConfigError

ADAPTER_KINDS = ("none", "styledrop", "lora")
ADAPTER_MODES = ("per_layer", "shared")
# Per-layer weights handed to a block: {module: {proj: (first [*in, r], second [r, *out])}}.
LayerAdapters = Mapping[str, Mapping[str, tuple[jax.Array, jax.Array]]]


class Site(NamedTuple):
  """One place in a block where an adapter can attach.

  module/proj: where ("self_attn", "query"); the params live at adapters/<module>/<proj>/.
  in_shape/out_shape and their logical names: the shapes the adapter maps between.
  aliases: target names that select this site besides "<module>.<proj>" (e.g. "query").
  """
  module: str
  proj: str
  in_shape: tuple[int, ...]
  in_names: tuple[str, ...]
  out_shape: tuple[int, ...]
  out_names: tuple[str, ...]
  aliases: tuple[str, ...] = ()

  @property
  def key(self) -> str:
    return f"{self.module}.{self.proj}"


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """Which adapters a model carries. Hashable, so it can be a flax module field.

  kind: "none" | "styledrop" | "lora".
  rank: bottleneck / LoRA rank r.
  mode: "per_layer" | "shared" (see module docstring).
  layers: layer indices that get adapters; None means all.
  targets: site names; None means the kind's default: every attention output for StyleDrop,
    ("query", "key", "value") for LoRA (the aMUSEd StyleDrop-LoRA recipe).
  alpha: LoRA scale numerator (scale = alpha / rank); None means scale 1.
  init_std: std of the first (non-zero) matrix; None means 1/sqrt(fan_in).
  """
  kind: str = "none"
  rank: int = 4
  mode: str = "per_layer"
  layers: tuple[int, ...] | None = None
  targets: tuple[str, ...] | None = None
  alpha: float | None = None
  init_std: float | None = None

  def __post_init__(self):
    if self.kind not in ADAPTER_KINDS:
      raise ConfigError(f"adapters.kind={self.kind!r}; use one of {ADAPTER_KINDS}.")
    if self.mode not in ADAPTER_MODES:
      raise ConfigError(f"adapters.mode={self.mode!r}; use one of {ADAPTER_MODES}.")
    if self.enabled and self.rank <= 0:
      raise ConfigError(f"adapters.rank must be positive, got {self.rank}.")

  @property
  def enabled(self) -> bool:
    return self.kind != "none"

  @property
  def scale(self) -> float:
    """LoRA output scale alpha/rank (1 when alpha is None)."""
    return 1.0 if self.alpha is None else float(self.alpha) / self.rank

  def layer_ids(self, depth: int) -> tuple[int, ...]:
    if self.layers is None:
      return tuple(range(depth))
    ids = tuple(sorted(set(int(i) for i in self.layers)))
    bad = [i for i in ids if not 0 <= i < depth]
    if bad or not ids:
      raise ConfigError(f"adapters.layers={list(self.layers)} must be non-empty indices in [0, {depth}).")
    return ids

  def select_sites(self, sites: Sequence[Site]) -> tuple[Site, ...]:
    """The sites this config targets, in `sites` order; unknown target names raise."""
    if self.targets is None:
      if self.kind == "styledrop":
        return tuple(sites)
      targets = ("query", "key", "value")
    else:
      targets = tuple(self.targets)
    names = lambda s: (s.key,) + s.aliases
    unknown = [t for t in targets if not any(t in names(s) for s in sites)]
    if unknown:
      valid = sorted({n for s in sites for n in names(s)})
      raise ConfigError(f"adapters.targets {unknown} match no {self.kind} site; valid: {valid}.")
    return tuple(s for s in sites if any(t in names(s) for t in targets))

  @classmethod
  def from_config(cls, cfg: Any) -> "AdapterConfig":
    """From a ConfigDict/dict (or None / an AdapterConfig). layers may be None, "all" or a list."""
    if cfg is None:
      return cls()
    if isinstance(cfg, cls):
      return cfg
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ConfigError(f"unknown adapters config keys {sorted(unknown)}; valid: "
                        f"{sorted(f.name for f in dataclasses.fields(cls))}.")
    layers = d.get("layers")
    if isinstance(layers, str):
      if layers != "all":
        raise ConfigError(f"adapters.layers={layers!r}; use 'all' or a list of layer indices.")
      layers = None
    d["layers"] = None if layers is None else tuple(int(i) for i in layers)
    targets = d.get("targets")
    d["targets"] = None if targets is None else tuple(str(t) for t in targets)
    return cls(**d)


def bottleneck(a: jax.Array, weights: tuple[jax.Array, jax.Array]) -> jax.Array:
  """StyleDrop adapter `a + gelu(a W_down) W_up`. a [B, L, D]; W_down [D, r]; W_up [r, D]."""
  down, up = (w.astype(a.dtype) for w in weights)
  return a + jnp.dot(nn.gelu(jnp.dot(a, down)), up)


def lora_delta(x: jax.Array, weights: tuple[jax.Array, jax.Array], scale: float) -> jax.Array:
  """LoRA update `scale * (x A) B`. x [..., *in]; A [*in, r]; B [r, *out] -> [..., *out]."""
  a, b = (w.astype(x.dtype) for w in weights)
  h = jnp.tensordot(x, a, axes=a.ndim - 1)
  return jnp.tensordot(h, b, axes=1) * jnp.asarray(scale, x.dtype)


def layer_slice(weights: Any, i: int) -> Any:
  """Layer i's weights from the bank's stacked [depth, ...] output."""
  return jax.tree.map(lambda w: w[i], weights)


class _Pair(nn.Module):
  """The two matrices of one site, stacked over the selected layers ([n, *in, r], [n, r, *out])."""
  site: Site
  config: AdapterConfig
  num_layers: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    s, c, n, r = self.site, self.config, self.num_layers, self.config.rank
    std = c.init_std if c.init_std is not None else 1.0 / math.sqrt(math.prod(s.in_shape))
    first_name, second_name = ("down", "up") if c.kind == "styledrop" else ("a", "b")
    shapes = {first_name: (s.in_shape + (r,), s.in_names + ("adapter",), nn.initializers.normal(std)),
              second_name: ((r,) + s.out_shape, ("adapter",) + s.out_names, nn.initializers.zeros)}
    out = []
    for name, (shape, names, init) in shapes.items():
      if c.mode == "per_layer":
        w = self.param(name, nn.with_logical_partitioning(init, ("layers",) + names), (n,) + shape,
                       self.param_dtype)
      else:  # shared weight + zero-init per-layer offsets
        shared = self.param(f"{name}_shared", nn.with_logical_partitioning(init, names), shape, self.param_dtype)
        offset = self.param(f"{name}_offset", nn.with_logical_partitioning(nn.initializers.zeros, ("layers",) + names),
                            (n,) + shape, self.param_dtype)
        w = shared[None] + offset
      out.append(w)
    return tuple(out)


class _Group(nn.Module):
  sites: tuple[Site, ...]
  config: AdapterConfig
  num_layers: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> dict[str, tuple[jax.Array, jax.Array]]:
    return {s.proj: _Pair(s, self.config, self.num_layers, self.param_dtype, name=s.proj)() for s in self.sites}


class AdapterBank(nn.Module):
  """Holds every adapter weight of a model; call it to get them stacked over all layers.

  Name it "adapters" in the parent so the params land at params["adapters"].
  Returns {module: {proj: (first [depth, *in, r], second [depth, r, *out])}}; layers not in
  `config.layers` get zeros (an exact identity for both kinds).
  """
  config: AdapterConfig
  depth: int
  sites: tuple[Site, ...]  # all candidate sites of one layer; the config selects among them
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> dict[str, dict[str, tuple[jax.Array, jax.Array]]]:
    ids = self.config.layer_ids(self.depth)
    chosen = self.config.select_sites(self.sites)
    modules = list(dict.fromkeys(s.module for s in chosen))
    out = {m: _Group(tuple(s for s in chosen if s.module == m), self.config, len(ids), self.param_dtype, name=m)()
           for m in modules}
    if ids != tuple(range(self.depth)):
      idx = jnp.asarray(ids)
      out = jax.tree.map(lambda w: jnp.zeros((self.depth,) + w.shape[1:], w.dtype).at[idx].set(w), out)
    return out
