"""Guided sampling of a masked token transformer: the forward passes of one decode step and how
their logits combine, plugged into the shared jitted loop (`parallel_decode.decode`).

Each distinct parameter set runs ONE batched model call per step; conditions that share a
parameter set are stacked on the batch axis:
  none       l(c)                                     1 call  [B]
  cfg        [l(c); l(∅)] on the tuned (or base) model   1 call  [2B]
  styledrop  l(c, θs) on the tuned model               1 call  [B]
             [l(c, θ0); l(∅, θ0)] on the base model       1 call  [2B]
  mix        [l(c); l(∅)] on base+style adapters          1 call  [2B]
             [l(c); l(∅)] on base+content adapters        1 call  [2B]
             then γ-mix the two and apply CFG (StyleDrop "my object in my style").
The tuned trees are assembled inside the jitted function from the one copy of the base params
(`with_adapters`), so the frozen weights are a single jit argument: no duplicate in memory.

∅ is the model's own null condition (`drop_cond`), or with `Guidance.negative=True` an explicit
negative condition (negative prompt) passed as `uncond`.

Guidance scales, conditions, params and the PRNG key are traced arguments: sampling again
with another prompt, seed or scale reuses the compiled loop (`trace_count` shows it).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from stylejax.config import ConfigError
from stylejax.models.muse import MaskedTransformer, split_adapters, with_adapters
from stylejax.sample import guidance as gd
from stylejax.sample import parallel_decode

MODES = ("none", "cfg", "styledrop", "mix")
SCALE_NAMES = ("scale", "lambda_a", "lambda_b", "gamma")
_TRACES = {"count": 0, "calls": []}


def trace_count() -> int:
  """How many times a `GuidedLogits` step has been traced (compiled) in this process."""
  return _TRACES["count"]


def last_trace_calls() -> list[tuple[str, int]]:
  """(parameter set, batch size) of each model call in the most recent traced step."""
  return list(_TRACES["calls"])


@dataclasses.dataclass(frozen=True)
class Guidance:
  """Static guidance structure (hashable). Scales are traced values; see `sample`.

  mode: one of MODES. form: CFG spelling, "muse" (1+t)l_c - t l_u or "diffusers" l_u + s(l_c - l_u).
  ramp: "constant" or "linear" (Muse ramps the CFG scale; for styledrop it ramps λB, the CFG term).
  negative: the unconditional pass uses the given `uncond` condition (negative prompt) instead of
    the model's null condition.
  """
  mode: str = "cfg"
  form: str = "muse"
  ramp: str = "constant"
  negative: bool = False

  def __post_init__(self):
    if self.mode not in MODES:
      raise ConfigError(f"guidance mode {self.mode!r}; use one of {MODES}.")
    gd.ramped_scale(0.0, 0, 1, self.ramp, self.form)  # validates form and ramp


@dataclasses.dataclass(frozen=True)
class GuidedLogits:
  """The static `logits_fn` of the decode loop: (args, ids [B, L], step) -> guided logits [B, L, V]."""
  model: MaskedTransformer
  guidance: Guidance
  num_steps: int

  def _apply(self, name: str, params: Any, ids: jax.Array, cond: Any, mask: Any, drop: Any,
             adapters: bool) -> jax.Array:
    _TRACES["calls"].append((name, ids.shape[0]))
    logits, _ = self.model.apply({"params": params}, ids, cond, mask, drop_cond=drop, adapters=adapters)
    return logits

  def _cond_uncond(self, name: str, params: Any, ids: jax.Array, args: dict, adapters: bool
                   ) -> tuple[jax.Array, jax.Array]:
    """[l(c); l(∅)] in one call of batch 2B, split back into two [B, L, V]."""
    batch = ids.shape[0]
    ids2 = gd.stack_cond_uncond(ids, ids)
    if self.guidance.negative:
      cond = gd.stack_cond_uncond(args["cond"], args["uncond"])
      mask = None if args["cond_mask"] is None else gd.stack_cond_uncond(args["cond_mask"], args["uncond_mask"])
      drop = None
    else:
      cond = gd.stack_cond_uncond(args["cond"], args["cond"])
      mask = None if args["cond_mask"] is None else gd.stack_cond_uncond(args["cond_mask"], args["cond_mask"])
      drop = jnp.arange(2 * batch) >= batch
    return gd.split_cond_uncond(self._apply(name, params, ids2, cond, mask, drop, adapters))

  def __call__(self, args: dict, ids: jax.Array, step: jax.Array) -> jax.Array:
    _TRACES["count"] += 1
    _TRACES["calls"] = []
    g, s = self.guidance, args["scales"]
    base, style = args["base"], args["style"]
    tuned = base if style is None else with_adapters(base, style)
    ramp = lambda x: gd.ramped_scale(x, step, self.num_steps, g.ramp, g.form)
    if g.mode == "none":
      return self._apply("tuned", tuned, ids, args["cond"], args["cond_mask"], None, style is not None)
    if g.mode == "cfg":
      cond, uncond = self._cond_uncond("tuned", tuned, ids, args, style is not None)
      return gd.cfg(cond, uncond, ramp(s["scale"]), g.form)
    if g.mode == "styledrop":
      l_c_style = self._apply("tuned", tuned, ids, args["cond"], args["cond_mask"], None, True)
      l_c_base, l_u_base = self._cond_uncond("base", base, ids, args, False)
      return gd.styledrop(l_c_style, l_c_base, l_u_base, s["lambda_a"], ramp(s["lambda_b"]))
    # mix: "my object in my style" = CFG over γ-mixed style/content adapter logits.
    style_c, style_u = self._cond_uncond("style", tuned, ids, args, True)
    content_c, content_u = self._cond_uncond("content", with_adapters(base, args["content"]), ids, args, True)
    cond = gd.mix(style_c, content_c, s["gamma"])
    uncond = gd.mix(style_u, content_u, s["gamma"])
    return gd.cfg(cond, uncond, ramp(s["scale"]), g.form)


def sample(model: MaskedTransformer, params: Any, cond: Any, rng: jax.Array, *,
           decode: parallel_decode.DecodeConfig, guidance: Guidance = Guidance(),
           scales: dict[str, float] | None = None, cond_mask: jax.Array | None = None,
           uncond: Any = None, uncond_mask: jax.Array | None = None,
           content_adapters: Any = None, ids: jax.Array | None = None) -> jax.Array:
  """Generates image token ids [B, L] with the jitted decode loop.

  Args:
    model: the (tuned) `MaskedTransformer`; its adapter config must match `params["adapters"]`.
    params: unboxed params; a tuned tree {**base, "adapters": ...} or a base tree.
    cond: class ids [B] (maskgit) or text embeddings [B, T, Dt] (muse); cond_mask: [B, T] bool.
    rng: PRNG key, or [B] keys (one per sample, reproducible per row).
    decode: static decode settings. guidance: static guidance structure.
    scales: traced floats, any of SCALE_NAMES (defaults: scale 3, λA 2, λB 5, γ 0.5).
    uncond, uncond_mask: the negative condition when `guidance.negative`.
    content_adapters: the second adapter tree for mode "mix".
    ids: [B, L] start ids (mask_id where unknown) for editing/inpainting; default all masked.
  """
  base, style = split_adapters(params)
  if guidance.mode in ("styledrop", "mix") and style is None:
    raise ValueError(f"guidance mode {guidance.mode!r} needs style adapters in params['adapters'].")
  if guidance.mode == "mix" and content_adapters is None:
    raise ValueError("guidance mode 'mix' needs content_adapters (the content adapter params).")
  if guidance.negative and uncond is None:
    raise ValueError("Guidance(negative=True) needs `uncond` (the negative condition).")
  if (cond_mask is None) != (uncond_mask is None) and guidance.negative:
    raise ValueError("give both cond_mask and uncond_mask, or neither.")
  batch = jax.tree.leaves(cond)[0].shape[0]
  if ids is None:
    ids = jnp.full((batch, model.config.seq_len), model.config.mask_id, jnp.int32)
  defaults = {"scale": 3.0, "lambda_a": 2.0, "lambda_b": 5.0, "gamma": 0.5}
  unknown = set(scales or {}) - set(SCALE_NAMES)
  if unknown:
    raise ConfigError(f"unknown guidance scales {sorted(unknown)}; use {SCALE_NAMES}.")
  scales = {k: jnp.asarray(v, jnp.float32) for k, v in {**defaults, **(scales or {})}.items()}
  args = dict(base=base, style=style, content=content_adapters if guidance.mode == "mix" else None,
              cond=cond, cond_mask=cond_mask, uncond=uncond if guidance.negative else None,
              uncond_mask=uncond_mask if guidance.negative else None, scales=scales)
  logits_fn = GuidedLogits(model, guidance, decode.num_steps)
  return parallel_decode.decode(logits_fn, args, ids, rng, decode)
