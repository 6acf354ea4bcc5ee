"""Perceiver resampler: shapes and logical names, permutation invariance over feature tokens,
gradients reach every param, one block against a hand numpy computation (with the reference's
head_dim**-0.25 on q and k), and parity with diffusers' IPAdapterPlusImageProjection through
`convert_torch_state` (IP-Adapter/StyleAR key layout)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _testutil import random_params
from math import erf

from stylejax.nn import resampler as rs

CFG = dict(width=16, depth=2, heads=3, head_dim=4, num_queries=5, out_dim=20, ff_mult=4)
DIN, N = 12, 7


def _model(**kw):
  return rs.PerceiverResampler(**{**CFG, **kw})


def _feats(b=2, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, N, DIN)).astype(np.float32))


def test_shapes_and_logical_names():
  model = _model()
  boxed = jax.eval_shape(model.init, jax.random.key(0), _feats())["params"]
  assert boxed["latents"].value.shape == (5, 16)
  assert boxed["proj_in"]["kernel"].names == ("conv_in", "embed")
  assert boxed["layers_1"]["attn"]["query"]["kernel"].value.shape == (16, 3, 4)
  assert boxed["layers_0"]["attn"]["out"]["kernel"].names == ("heads", "kv", "embed")
  assert "bias" not in boxed["layers_0"]["attn"]["key"] and "bias" not in boxed["layers_0"]["ff"]["wi"]
  assert boxed["layers_0"]["ff"]["wi"]["kernel"].value.shape == (16, 64)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(x, nn.Partitioned) for x in leaves)
  params = random_params(model, _feats())
  out = jax.jit(model.apply)({"params": params}, _feats(3))
  assert out.shape == (3, 5, 20)
  with pytest.raises(ValueError, match=r"\[B, N, D\]"):
    model.apply({"params": params}, _feats()[0])


def test_permutation_invariant_over_feature_tokens_but_not_queries():
  model = _model()
  params = random_params(model, _feats())
  x = _feats()
  perm = np.random.default_rng(1).permutation(N)
  out = model.apply({"params": params}, x)
  out_perm = model.apply({"params": params}, x[:, perm])
  np.testing.assert_allclose(out_perm, out, atol=1e-5)
  # the queries are not interchangeable: each output token is its own latent's
  assert np.abs(np.asarray(out[:, 0] - out[:, 1])).max() > 1e-2
  # and the features matter
  assert np.abs(np.asarray(model.apply({"params": params}, _feats(seed=3)) - out)).max() > 1e-2


def test_gradient_reaches_latents_and_every_param():
  model = _model()
  params = random_params(model, _feats())
  target = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 20)).astype(np.float32))
  grads = jax.grad(lambda p: jnp.mean((model.apply({"params": p}, _feats()) - target) ** 2))(params)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert len(flat) == 7 + 2 * 12  # latents, proj_in/proj_out/norm_out 2 each; per layer 3 norms x 2 + 4 attn + 2 ff
  for path, g in flat:
    assert np.all(np.isfinite(g)) and np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)


def _np_ln(x, scale, bias, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def test_one_block_matches_hand_numpy():
  block = rs.PerceiverBlock(heads=3, head_dim=4, ff_mult=4)
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, N, 16)).astype(np.float32)
  lat = rng.normal(size=(2, 5, 16)).astype(np.float32)
  p = jax.tree.map(np.asarray, random_params(block, jnp.asarray(x), jnp.asarray(lat)))
  got = np.asarray(block.apply({"params": p}, jnp.asarray(x), jnp.asarray(lat)))

  xn = _np_ln(x, p["norm_x"]["scale"], p["norm_x"]["bias"])
  ln = _np_ln(lat, p["norm_latents"]["scale"], p["norm_latents"]["bias"])
  kv = np.concatenate([xn, ln], axis=1)  # [B, N+Q, W]
  a = p["attn"]
  q = np.einsum("bqw,whd->bhqd", ln, a["query"]["kernel"])
  k = np.einsum("bsw,whd->bhsd", kv, a["key"]["kernel"])
  v = np.einsum("bsw,whd->bhsd", kv, a["value"]["kernel"])
  s = 4 ** -0.25  # the reference: (q * dh^-1/4) @ (k * dh^-1/4)^T
  w = np.einsum("bhqd,bhsd->bhqs", q * s, k * s)
  w = np.exp(w - w.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  o = np.einsum("bhqs,bhsd->bqhd", w, v)
  lat1 = lat + np.einsum("bqhd,hdw->bqw", o, a["out"]["kernel"])
  h = _np_ln(lat1, p["norm_ff"]["scale"], p["norm_ff"]["bias"]) @ p["ff"]["wi"]["kernel"]
  h = h * 0.5 * (1 + np.vectorize(erf)(h / np.sqrt(2)))  # exact GELU (torch nn.GELU())
  want = lat1 + h @ p["ff"]["wo"]["kernel"]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _diffusers_to_ip_adapter(sd: dict) -> dict:
  """diffusers IPAdapterPlusImageProjection keys -> the original IP-Adapter / StyleAR keys."""
  out = {}
  for key, val in sd.items():
    val = val.detach().numpy()
    if ".attn.to_k." in key or ".attn.to_v." in key:
      continue
    new = (key.replace(".ln0.", ".0.norm1.").replace(".ln1.", ".0.norm2.").replace(".attn.to_q.", ".0.to_q.")
           .replace(".attn.to_out.0.", ".0.to_out.").replace(".ff.0.", ".1.0.")
           .replace(".ff.1.net.0.proj.", ".1.1.").replace(".ff.1.net.2.", ".1.3."))
    out[new] = val
  for key in [k for k in sd if ".attn.to_k." in k]:
    i = key.split(".")[1]
    out[f"layers.{i}.0.to_kv.weight"] = np.concatenate(
        [sd[key].detach().numpy(), sd[key.replace("to_k", "to_v")].detach().numpy()], axis=0)
  return out


def test_matches_diffusers_ip_adapter_plus_and_converter_reports_problems():
  torch = pytest.importorskip("torch")
  from diffusers.models.embeddings import IPAdapterPlusImageProjection

  torch.manual_seed(0)
  ref = IPAdapterPlusImageProjection(embed_dims=DIN, output_dims=20, hidden_dims=16, depth=2, dim_head=4, heads=3,
                                     num_queries=5, ffn_ratio=4).eval()
  with torch.no_grad():
    for name, prm in ref.named_parameters():
      prm.uniform_(0.5, 1.5) if prm.ndim == 1 and "weight" in name else prm.normal_(0.0, 0.3)
  state = _diffusers_to_ip_adapter(ref.state_dict())
  assert "layers.1.0.to_kv.weight" in state and len(state) == 7 + 2 * 11
  model = _model()
  params = rs.convert_torch_state({"image_proj." + k: v for k, v in state.items()}, model, prefix="image_proj.")
  x = np.asarray(_feats())
  with torch.no_grad():
    want = ref(torch.tensor(x)).numpy()
  got = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(x)))
  np.testing.assert_allclose(got, want, atol=2e-4)

  bad = dict(state)
  del bad["layers.0.0.to_q.weight"]
  bad["layers.0.0.extra"] = np.zeros(3, np.float32)
  bad["proj_out.weight"] = np.zeros((21, 16), np.float32)
  with pytest.raises(ValueError) as err:
    rs.convert_torch_state(bad, model)
  msg = str(err.value)
  for needle in ("missing 1", "layers.0.0.to_q.weight", "unexpected 1", "layers.0.0.extra", "shape mismatch 1",
                 "proj_out.weight"):
    assert needle in msg, (needle, msg)
