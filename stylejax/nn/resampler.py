"""Perceiver resampler (IP-Adapter Plus / StyleAR): N image features -> Q learned style tokens.

features [B, N, Din] -> proj_in -> x [B, N, W]; latents [Q, W] (learned, shared over the batch).
Per layer (IP-Adapter `Resampler`, StyleAR's `image_proj`):
  kv      = concat(LN_x(x), LN_l(latents)) on the sequence axis       [B, N + Q, W]
  latents += out(Attn(q = LN_l(latents), k = v = kv))                   heads x head_dim, no biases
  latents += down(GELU(up(LN_ff(latents))))                            up: W -> mult W, no biases
then proj_out (W -> Dout) and a final LayerNorm: [B, Q, Dout].

Attention scale: the reference multiplies q and k each by head_dim**-0.25 (for fp16 range);
`MultiHeadAttention` scales the product by head_dim**-0.5 with float32 logits, which is the same
number and at least as stable. LayerNorms use torch's eps 1e-5 and GELU is exact (nn.GELU()),
so converted checkpoints match. StyleAR: Din 1280 (CLIP ViT-H/14 penultimate states, N = 257),
W = Dout = 4096, depth 4, 12 heads x 64, Q = 16, mult 4.

`convert_torch_state` maps an IP-Adapter/StyleAR-layout state dict (numpy arrays; keys
`latents`, `proj_in.*`, `layers.i.0.{norm1,norm2,to_q,to_kv,to_out}.*`, `layers.i.1.{0,1,3}.*`,
`proj_out.*`, `norm_out.*`) to these params.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stylejax.nn.attention import MultiHeadAttention
from stylejax.nn.mlp import MLP
from stylejax.nn.norms import LayerNorm

Array = jax.Array
TORCH_LN_EPS = 1e-5


def _init(fn: Any, names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(fn, names)


class PerceiverBlock(nn.Module):
  """One resampler layer: latents [B, Q, W] attend to concat(features, latents); then FF."""
  heads: int
  head_dim: int
  ff_mult: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, latents: Array) -> Array:
    """x [B, N, W] (already projected), latents [B, Q, W] -> latents [B, Q, W]."""
    width = latents.shape[-1]
    ln = lambda name: LayerNorm(epsilon=TORCH_LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    xn = ln("norm_x")(x)
    ln_lat = ln("norm_latents")(latents)
    kv = jnp.concatenate([xn, ln_lat], axis=1)  # Flamingo/IP-Adapter: latents also see themselves
    attn = MultiHeadAttention(self.heads, self.head_dim, use_bias=False, kernel_init=nn.initializers.lecun_normal(),
                              dtype=self.dtype, param_dtype=self.param_dtype, name="attn")
    latents = latents + attn(ln_lat, kv)
    h = ln("norm_ff")(latents)
    h = MLP(self.ff_mult * width, activation="gelu_exact", use_bias=False,
            kernel_init=nn.initializers.lecun_normal(), dtype=self.dtype, param_dtype=self.param_dtype, name="ff")(h)
    return nn.with_logical_constraint(latents + h, ("act_batch", "act_length", "act_embed"))


class PerceiverResampler(nn.Module):
  """features [B, N, in_dim] -> style tokens [B, num_queries, out_dim]. See the module docstring.

  Params: latents [Q, W]; proj_in [Din, W]; layers_i/{norm_x, norm_latents, attn/{query,key,value,out},
  norm_ff, ff/{wi,wo}}; proj_out [W, Dout]; norm_out. All carry logical axis names.
  """
  width: int = 1024  # W: the latent width ("dim" in IP-Adapter)
  depth: int = 4
  heads: int = 12
  head_dim: int = 64
  num_queries: int = 16
  out_dim: int = 1024
  ff_mult: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Array) -> Array:
    if features.ndim != 3:
      raise ValueError(f"resampler features must be [B, N, D]; got shape {features.shape}.")
    b = features.shape[0]
    # torch.randn / sqrt(W): unit-RMS-per-token queries at init, as the reference.
    latents = self.param("latents", _init(nn.initializers.normal(self.width ** -0.5), (None, "embed")),
                         (self.num_queries, self.width), self.param_dtype)
    latents = jnp.broadcast_to(latents.astype(self.dtype)[None], (b, self.num_queries, self.width))
    dense = lambda feats, names, name: nn.Dense(
        feats, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        kernel_init=_init(nn.initializers.lecun_normal(), names),
        bias_init=_init(nn.initializers.zeros, names[1:]))
    x = dense(self.width, ("conv_in", "embed"), "proj_in")(features)
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
    for i in range(self.depth):
      latents = PerceiverBlock(self.heads, self.head_dim, self.ff_mult, self.dtype, self.param_dtype,
                               name=f"layers_{i}")(x, latents)
    out = dense(self.out_dim, ("embed", "conv_out"), "proj_out")(latents)
    return LayerNorm(epsilon=TORCH_LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="norm_out")(out)


# ----------------------------------------------------------------------------- checkpoint conversion


def convert_torch_state(state: Mapping[str, Any], model: PerceiverResampler, prefix: str = "") -> dict:
  """IP-Adapter / StyleAR `Resampler` state dict (numpy arrays) -> unboxed params for `model`.

  Torch Linear weights are [out, in]; ours are [in, out] (heads split as [W, H, Dh] / [H, Dh, W]).
  `to_kv` is split in half (k first, as `.chunk(2, dim=-1)`). Raises one ValueError listing every
  missing key, unexpected key and shape mismatch.
  """
  w, h, dh = model.width, model.heads, model.head_dim
  ident = lambda a: a
  t = lambda a: a.T
  heads_in = lambda a: a.T.reshape(w, h, dh)
  kmap: dict[tuple[str, ...], tuple[str, Any]] = {
      ("latents",): ("latents", lambda a: a.reshape(a.shape[-2:])),  # [1, Q, W] -> [Q, W]
      ("proj_in", "kernel"): ("proj_in.weight", t), ("proj_in", "bias"): ("proj_in.bias", ident),
      ("proj_out", "kernel"): ("proj_out.weight", t), ("proj_out", "bias"): ("proj_out.bias", ident),
      ("norm_out", "scale"): ("norm_out.weight", ident), ("norm_out", "bias"): ("norm_out.bias", ident),
  }
  for i in range(model.depth):
    ours, src = f"layers_{i}", f"layers.{i}"
    for norm, key in (("norm_x", "0.norm1"), ("norm_latents", "0.norm2"), ("norm_ff", "1.0")):
      kmap[(ours, norm, "scale")] = (f"{src}.{key}.weight", ident)
      kmap[(ours, norm, "bias")] = (f"{src}.{key}.bias", ident)
    kmap[(ours, "attn", "query", "kernel")] = (f"{src}.0.to_q.weight", heads_in)
    kmap[(ours, "attn", "key", "kernel")] = (f"{src}.0.to_kv.weight", lambda a: heads_in(a[: a.shape[0] // 2]))
    kmap[(ours, "attn", "value", "kernel")] = (f"{src}.0.to_kv.weight", lambda a: heads_in(a[a.shape[0] // 2:]))
    kmap[(ours, "attn", "out", "kernel")] = (f"{src}.0.to_out.weight", lambda a: a.T.reshape(h, dh, w))
    kmap[(ours, "ff", "wi", "kernel")] = (f"{src}.1.1.weight", t)
    kmap[(ours, "ff", "wo", "kernel")] = (f"{src}.1.3.weight", t)

  din = next((np.shape(v)[-1] for k, v in state.items() if k == prefix + "proj_in.weight"), 1)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1, din), model.dtype))["params"]
  flat = {tuple(p.key for p in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(shapes))[0]}
  missing, mismatched, out = [], [], {}
  for path, want in flat.items():
    src, fn = kmap[path]
    if prefix + src not in state:
      missing.append(prefix + src)
      continue
    raw = np.asarray(state[prefix + src], np.float32)
    try:
      arr = fn(raw)
    except ValueError:
      arr = raw
    if arr.shape != tuple(want.shape):
      mismatched.append(f"{prefix + src} {raw.shape} -> {'/'.join(path)} want {tuple(want.shape)}")
      continue
    out[path] = jnp.asarray(arr, want.dtype)
  used = {prefix + kmap[p][0] for p in flat}
  unexpected = sorted(k for k in state if k.startswith(prefix) and k not in used)
  if missing or unexpected or mismatched:
    parts = [f"{name} {len(xs)}: " + ", ".join(sorted(set(xs)))
             for name, xs in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if xs]
    raise ValueError("resampler state does not fit PerceiverResampler — " + " | ".join(parts))
  params: dict = {}
  for path, arr in out.items():
    node = params
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = arr
  return params
