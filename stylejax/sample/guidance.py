"""Guidance combinations over logits [..., V] for masked-token samplers (pure, jit-friendly).

- Classifier-free guidance in two spellings: Muse `(1 + t) l_c - t l_u` and diffusers/aMUSEd
  `l_u + s (l_c - l_u)`. They are the same combination with s = 1 + t (t = 0 <=> s = 1: no
  guidance). A negative prompt simply supplies `uncond`: run the model on the negative prompt
  instead of the empty one and pass those logits as `uncond` (Muse; aMUSEd's default negative
  prompt is the empty string).
- StyleDrop two-model guidance and the "my object in my style" logit mix.
- Batch stacking helpers so one model call per parameter set serves several conditions.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from stylejax.config import ConfigError

FORMS = ("muse", "diffusers")


def cfg(cond: jax.Array, uncond: jax.Array, scale: jax.typing.ArrayLike, form: str = "muse") -> jax.Array:
  """Classifier-free guidance. cond, uncond: [..., V]; scale: scalar or broadcastable (e.g. [B, 1, 1]).

  form="muse": (1 + t) l_c - t l_u with t = scale (Muse, arXiv 2301.00704).
  form="diffusers": l_u + s (l_c - l_u) with s = scale (AmusedPipeline, LlamaGen).
  """
  if form == "muse":
    return (1.0 + scale) * cond - scale * uncond
  if form == "diffusers":
    return uncond + scale * (cond - uncond)
  raise ConfigError(f"Unknown guidance form {form!r}; use one of {FORMS}.")


def ramped_scale(scale: jax.typing.ArrayLike, step: jax.typing.ArrayLike, num_steps: int,
                 ramp: str = "constant", form: str = "muse") -> jax.Array:
  """Guidance scale at (0-based, possibly traced) step t of T.

  ramp="constant": `scale` every step (aMUSEd). ramp="linear": the guidance strength grows
  linearly and reaches `scale` at the last step: t_k = scale * (k + 1) / T for form="muse"
  (Muse ramps t linearly); for form="diffusers" the excess over 1 is ramped, s_k =
  1 + (scale - 1) * (k + 1) / T, so both forms describe the same guided logits.
  """
  if form not in FORMS:
    raise ConfigError(f"Unknown guidance form {form!r}; use one of {FORMS}.")
  scale = jnp.asarray(scale, jnp.float32)
  if ramp == "constant":
    return scale
  if ramp != "linear":
    raise ConfigError(f"Unknown guidance ramp {ramp!r}; use 'constant' or 'linear'.")
  frac = (jnp.asarray(step, jnp.float32) + 1.0) / num_steps
  if form == "muse":
    return scale * frac
  return 1.0 + (scale - 1.0) * frac


def styledrop(l_c_style: jax.Array, l_c_base: jax.Array, l_u_base: jax.Array,
              lambda_a: jax.typing.ArrayLike, lambda_b: jax.typing.ArrayLike) -> jax.Array:
  """StyleDrop guidance (arXiv 2306.00983): three passes combined, all [..., V].

  l = l(c, θs) + λA [l(c, θs) − l(c, θ0)] + λB [l(c, θ0) − l(∅, θ0)]
  l_c_style = l(c, θs) (style-tuned model, prompt); l_c_base = l(c, θ0) (base model, prompt);
  l_u_base = l(∅, θ0) (base model, empty or negative prompt). λA steers towards the style,
  λB is classifier-free guidance on the base model (unofficial defaults λA=2, λB=5).
  """
  return l_c_style + lambda_a * (l_c_style - l_c_base) + lambda_b * (l_c_base - l_u_base)


def mix(l_style: jax.Array, l_content: jax.Array, gamma: jax.typing.ArrayLike) -> jax.Array:
  """γ·l(θs) + (1−γ)·l(θc): mixes style- and content-adapter logits ("my object in my style")."""
  return gamma * l_style + (1.0 - gamma) * l_content


def stack_passes(*trees: Any) -> Any:
  """Concatenates same-structured pytrees along the batch axis 0: [B, ...] x n -> [n*B, ...]."""
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *trees)


def split_passes(tree: Any, num: int) -> tuple[Any, ...]:
  """Inverse of `stack_passes`: splits every leaf [n*B, ...] into n pytrees of [B, ...]."""
  leaves, treedef = jax.tree.flatten(tree)
  for leaf in leaves:
    if leaf.shape[0] % num:
      raise ValueError(f"Batch axis {leaf.shape[0]} does not split into {num} passes.")
  parts = [jnp.split(leaf, num, axis=0) for leaf in leaves]
  return tuple(jax.tree.unflatten(treedef, [p[i] for p in parts]) for i in range(num))


def stack_cond_uncond(cond: Any, uncond: Any) -> Any:
  """Stacks [cond; uncond] along axis 0 (cond first), e.g. text embeddings for one model call."""
  return stack_passes(cond, uncond)


def split_cond_uncond(tree: Any) -> tuple[Any, Any]:
  """Splits the output of a call on `stack_cond_uncond` inputs into (cond, uncond) halves."""
  return split_passes(tree, 2)
