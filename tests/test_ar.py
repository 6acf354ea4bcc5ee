"""DecoderLM: KV-cache decode == full recompute, padding/prefix masking, scan == no-scan,
placeholder overwrite, QK-norm, RoPE (1D and 2D), logical axis names."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import LOGICAL_AXIS_RULES
from stylejax.models import ar
from _testutil import random_params
from stylejax.nn import rope

V = 61
TINY = dict(vocab_size=V, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, mlp_dim=48, max_len=16,
            init_std=0.3)


def _init(model, tokens=None, **kw):
  return random_params(model, jnp.zeros((1, 4), jnp.int32) if tokens is None else tokens, **kw)


@functools.lru_cache(maxsize=None)
def _apply(model):
  """Jitted `model.apply` (eager flax compiles every op separately: far slower on CPU)."""
  return jax.jit(model.apply, static_argnames=("last_only",))


@pytest.fixture(scope="module")
def lm():
  # GQA 4/2, qkv bias, Chameleon QK-norm: the most moving parts in one tiny model
  model = ar.DecoderLM(**TINY, qkv_bias=True, qk_norm="layernorm")
  params = _init(model)
  return model, params


def test_decode_matches_full_recompute_with_padding(lm):
  model, params = lm
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, V, (2, 9)), jnp.int32)
  valid = jnp.ones((2, 9), bool).at[1, :2].set(False)  # row 1 is left-padded by 2
  full, none = _apply(model)({"params": params}, tokens, attention_mask=valid)
  assert none is None and full.shape == (2, 9, V)

  cache = model.init_cache(2, 12)
  logits, cache = _apply(model)({"params": params}, tokens[:, :4], cache=cache, attention_mask=valid[:, :4])
  np.testing.assert_allclose(logits, full[:, :4], atol=2e-5)
  for t in range(4, 9):
    logits, cache = _apply(model)({"params": params}, tokens[:, t:t + 1], cache=cache)
    np.testing.assert_allclose(logits[:, 0], full[:, t], atol=2e-5, err_msg=f"step {t}")
  assert int(cache.index) == 9 and cache.max_len == 12
  assert len(cache.k) == model.layers and all(k.shape == (2, 2, 8, 12) for k in cache.k)  # keys stored [.., Dh, S]
  assert all(v.shape == (2, 2, 12, 8) for v in cache.v)

  # padding changes nothing for the real tokens: row 1 equals its unpadded sequence alone
  alone, _ = _apply(model)({"params": params}, tokens[1:, 2:])
  np.testing.assert_allclose(full[1, 2:], alone[0], atol=2e-5)


def _cache_sized_ops(jaxpr, size: int) -> set[str]:
  """Primitives (recursing into sub-jaxprs) that produce an array of at least `size` elements."""
  found = set()
  for eqn in jaxpr.eqns:
    subs = [v for p in eqn.params.values() for v in (p if isinstance(p, (tuple, list)) else [p])
            if hasattr(v, "eqns") or hasattr(getattr(v, "jaxpr", None), "eqns")]
    for sub in subs:
      found |= _cache_sized_ops(sub.jaxpr if hasattr(sub, "jaxpr") else sub, size)
    if not subs and any(getattr(o.aval, "size", 0) >= size for o in eqn.outvars):
      found.add(eqn.primitive.name)
  return found


def test_decode_step_writes_cache_in_place_without_copies(lm):
  """One decode step touches the cache only through dynamic_update_slice (in place under a loop
  carry): no slicing layers out of a stacked array and no re-stacking them, which copied the whole
  cache per token before. The cache layout [B, kv_heads, S, Dh] (checked above) is what the
  attention dots consume, so XLA adds no transpose either. Scanned layers also read their slice
  (dynamic_slice, then a squeeze, which is a reshape)."""
  model, params = lm
  b, s = 2, 128
  step = lambda m, p, c: m.apply({"params": p}, jnp.zeros((b, 1), jnp.int32), cache=c, last_only=True)
  layer_size = b * model.kv_heads * s * model.head_dim
  jaxpr = jax.make_jaxpr(functools.partial(step, model))(params, model.init_cache(b, s)).jaxpr
  assert _cache_sized_ops(jaxpr, layer_size) == {"dynamic_update_slice"}
  scanned = model.clone(scan_layers=True)
  jaxpr = jax.make_jaxpr(functools.partial(step, scanned))(ar.stack_layer_params(params, model.layers),
                                                           scanned.init_cache(b, s)).jaxpr
  assert _cache_sized_ops(jaxpr, layer_size) == {"dynamic_update_slice", "dynamic_slice", "squeeze"}
  with pytest.raises(ValueError, match="scan_layers"):
    step(model, params, scanned.init_cache(b, s))


def test_scan_and_remat_equal_unrolled(lm):
  model, params = lm
  scanned = model.clone(scan_layers=True, remat=True)
  sparams = ar.stack_layer_params(params, model.layers)
  shapes = nn.meta.unbox(jax.eval_shape(scanned.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"])
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, sparams)
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, V, (2, 6)), jnp.int32)
  a, _ = _apply(model)({"params": params}, tokens)
  b, _ = _apply(scanned)({"params": sparams}, tokens)
  np.testing.assert_allclose(a, b, atol=1e-5)
  r, _ = _apply(model.clone(remat=True))({"params": params}, tokens)
  np.testing.assert_allclose(a, r, atol=1e-6)
  cache = scanned.init_cache(2, 8)
  c, cache = _apply(scanned)({"params": sparams}, tokens[:, :5], cache=cache)
  d, _ = _apply(scanned)({"params": sparams}, tokens[:, 5:], cache=cache)
  np.testing.assert_allclose(d[:, 0], a[:, 5], atol=1e-5)
  back = ar.unstack_layer_params(sparams, model.layers)
  assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), back, params))


def test_overwrite_positions_hand_example():
  x = jnp.zeros((2, 5, 1))
  mask = jnp.array([[0, 1, 0, 1, 0], [1, 1, 0, 0, 0]], bool)
  vec = jnp.array([[[10.], [20.]], [[30.], [40.]]])
  out = ar.overwrite_positions(x, mask, vec)[..., 0]
  np.testing.assert_array_equal(out, [[0, 10, 0, 20, 0], [30, 40, 0, 0, 0]])


def test_placeholder_override_in_model_equals_explicit_embeddings(lm):
  model, params = lm
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, V, (2, 7)), jnp.int32)
  mask = jnp.zeros((2, 7), bool).at[:, 2:5].set(True)  # 3 placeholder slots per row
  vectors = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3, model.hidden)), jnp.float32)
  got, _ = _apply(model)({"params": params}, tokens, input_embeds_override=(mask, vectors))
  # the same sequence given as ready-made embeddings (prefix path, no tokens)
  emb = params["embed"]["embedding"][tokens].at[:, 2:5].set(vectors)
  want, _ = _apply(model)({"params": params}, None, prefix_embeds=emb)
  np.testing.assert_allclose(got, want, atol=1e-5)
  plain, _ = _apply(model)({"params": params}, tokens)
  assert np.abs(np.asarray(plain[:, 2:] - got[:, 2:])).max() > 1e-3  # the override did something
  np.testing.assert_allclose(plain[:, :2], got[:, :2], atol=1e-5)  # causal: earlier positions untouched


def test_text_prefix_projection_and_dropped_prefix():
  model = ar.DecoderLM(**TINY, text_dim=12)
  tokens = jnp.asarray(np.random.default_rng(5).integers(0, V, (2, 5)), jnp.int32)
  text = jnp.asarray(np.random.default_rng(6).normal(size=(2, 3, 12)), jnp.float32)
  params = _init(model, tokens, prefix_embeds=text)
  assert params["prefix_proj"]["kernel"].shape == (12, model.hidden)
  # rows 0-1 see the prefix, rows 2-3 have it masked out ("dropped"), in one call
  keep = jnp.concatenate([jnp.ones((2, 3), bool), jnp.zeros((2, 3), bool)])
  mask = jnp.concatenate([keep, jnp.ones((4, 5), bool)], axis=1)
  both, _ = _apply(model)({"params": params}, jnp.tile(tokens, (2, 1)), prefix_embeds=jnp.tile(text, (2, 1, 1)),
                          attention_mask=mask)
  assert both.shape == (4, 8, V)
  no_prefix, _ = _apply(model)({"params": params}, tokens)
  np.testing.assert_allclose(both[2:, 3:], no_prefix, atol=1e-5)  # a dropped prefix is truly gone
  assert np.abs(np.asarray(both[:2, 3:] - no_prefix)).max() > 1e-3


def test_chameleon_qk_norm_matches_numpy():
  x = np.random.default_rng(0).normal(size=(1, 2, 3, 8)).astype(np.float32) * 3 + 1
  norm = ar.HeadLayerNorm()
  params = {"scale": np.linspace(0.5, 2, 24).reshape(3, 8).astype(np.float32),
            "bias": np.linspace(-1, 1, 24).reshape(3, 8).astype(np.float32)}
  got = norm.apply({"params": params}, x)
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  want = (x - mu) / np.sqrt(var + 1e-5) * params["scale"] + params["bias"]
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_params_carry_known_logical_names():
  known = {name for name, _ in LOGICAL_AXIS_RULES}
  for scan in (False, True):
    model = ar.DecoderLM(**TINY, qkv_bias=True, qk_norm="rms", scan_layers=scan)
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(l, nn.Partitioned) for l in leaves)
    for leaf in leaves:
      assert set(leaf.names) <= known and len(leaf.names) == leaf.value.ndim, leaf.names
    if scan:
      assert boxed["layers"]["attn"]["q"]["kernel"].names == ("layers", "embed", "heads", "kv")


# ----------------------------------------------------------------------------- RoPE


def test_rope_1d_matches_rotate_half_formula_and_is_relative():
  rng = np.random.default_rng(1)
  q = rng.normal(size=(1, 1, 1, 8)).astype(np.float32)
  k = rng.normal(size=(1, 1, 1, 8)).astype(np.float32)
  pos = np.array([[5]])
  inv = 1.0 / (100.0 ** (np.arange(0, 8, 2) / 8))
  ang = np.concatenate([5 * inv, 5 * inv])
  rot = np.concatenate([-q[..., 4:], q[..., :4]], -1)
  want = q * np.cos(ang) + rot * np.sin(ang)
  got, _ = rope.rope_1d(jnp.asarray(q), jnp.asarray(k), jnp.asarray(pos), theta=100.0)
  np.testing.assert_allclose(got, want, atol=1e-5)

  def score(m, n):
    qr, _ = rope.rope_1d(q, q, jnp.array([[m]]), 100.0)
    _, kr = rope.rope_1d(k, k, jnp.array([[n]]), 100.0)
    return float(jnp.sum(qr * kr))
  assert score(7, 3) == pytest.approx(score(14, 10), abs=1e-4)
  assert score(7, 3) != pytest.approx(score(7, 5), abs=1e-3)


def test_rope_2d_rotates_per_axis():
  d = 16
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 1, 1, d)).astype(np.float32))
  rot = lambda r, c: rope.rope_2d(x, x, jnp.array([[[r, c]]]))[0][0, 0, 0]
  row_dims = np.r_[0:d // 4, d // 2:d // 2 + d // 4]  # pairs (i, i + D/2) for i < D/4
  col_dims = np.r_[d // 4:d // 2, d // 2 + d // 4:d]
  base, col_moved, row_moved = rot(2, 3), rot(2, 6), rot(5, 3)
  np.testing.assert_allclose(base[row_dims], col_moved[row_dims], atol=1e-6)  # column change: row dims fixed
  assert np.abs(np.asarray(base[col_dims] - col_moved[col_dims])).max() > 1e-2
  np.testing.assert_allclose(base[col_dims], row_moved[col_dims], atol=1e-6)  # row change: column dims fixed
  assert np.abs(np.asarray(base[row_dims] - row_moved[row_dims])).max() > 1e-2
  np.testing.assert_allclose(rot(0, 0), x[0, 0, 0], atol=1e-6)  # prefix position (0, 0) is the identity

  y = jnp.asarray(np.random.default_rng(3).normal(size=(1, 1, 1, d)).astype(np.float32))
  def score(a, b):
    qa = rope.rope_2d(x, x, jnp.array([[a]]))[0]
    kb = rope.rope_2d(y, y, jnp.array([[b]]))[1]
    return float(jnp.sum(qa * kb))
  assert score((3, 4), (1, 1)) == pytest.approx(score((5, 7), (3, 4)), abs=1e-4)  # relative in both axes


def test_grid_positions_and_2d_model_decode():
  pos = rope.grid_positions(2, (2, 3))
  np.testing.assert_array_equal(pos, [[0, 0], [0, 0], [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
  model = ar.DecoderLM(**TINY, rope="2d", grid=(2, 3))
  positions = jnp.asarray(pos)[None].repeat(2, 0)
  tokens = jnp.asarray(np.random.default_rng(7).integers(0, V, (2, 8)), jnp.int32)
  params = _init(model, tokens, positions=positions)
  full, _ = _apply(model)({"params": params}, tokens, positions)
  cache = model.init_cache(2, 8)
  a, cache = _apply(model)({"params": params}, tokens[:, :5], positions[:, :5], cache)
  b, _ = _apply(model)({"params": params}, tokens[:, 5:], positions[:, 5:], cache)
  np.testing.assert_allclose(jnp.concatenate([a, b], 1), full, atol=2e-5)
  with pytest.raises(ValueError, match="2d"):
    _apply(model)({"params": params}, tokens)


def test_lm_loss_weights():
  logits = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1]]]))
  loss, aux = ar.lm_loss(logits, jnp.array([[0, 1]]), jnp.array([[1.0, 0.0]]))
  assert float(loss) == pytest.approx(np.log(2), abs=1e-6) and float(aux["accuracy"]) == 1.0


def test_decoder_from_config_validates_keys():
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(TINY, rope="2d", grid=[2, 3]))
  model = ar.decoder_from_config(cfg, dtype="bfloat16", scan_layers=True)
  assert model.grid == (2, 3) and model.scan_layers and hash(model)
  with pytest.raises(ValueError, match="unknown DecoderLM config keys"):
    ar.decoder_from_config(dict(TINY, hidden_size=3))
