"""Guided masked-token sampling: each mode equals its hand composition of separate model calls,
runs one batched call per parameter set, keeps the frozen weights single, and compiles once."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _testutil import random_params
from stylejax.models import muse
from stylejax.nn.adapters import AdapterConfig
from stylejax.sample import masked
from stylejax.sample.parallel_decode import DecodeConfig

K, L, C, DT, T, B = 16, 16, 5, 12, 3, 2


@functools.lru_cache(maxsize=None)
def setup(layout):
  c = muse.MuseConfig(layout=layout, codebook_size=K, seq_len=L, width=32, depth=2, heads=4, mlp_dim=64,
                      num_classes=C, text_dim=DT, text_len=T, dropout=0.0,
                      adapters=AdapterConfig(kind="styledrop", rank=2))
  model = muse.MaskedTransformer(c)
  params = random_params(model, *muse.dummy_inputs(c))  # adapters random too: tuned != base
  content = jax.tree.map(lambda x: -0.5 * x, params["adapters"])
  return model, params, content


def inputs(model, seed=1):
  c = model.config
  r1, r2, r3 = jax.random.split(jax.random.key(seed), 3)
  ids = jax.random.randint(r1, (B, L), 0, K).at[:, ::2].set(c.mask_id)
  if c.layout == "maskgit":
    return ids, jax.random.randint(r2, (B,), 0, C), None
  return ids, jax.random.normal(r2, (B, T, DT)), jax.random.normal(r3, (B, T, DT))


def call(model, params, ids, cond, adapters=True, drop=None):
  return model.apply({"params": params}, ids, cond, drop_cond=drop, adapters=adapters)[0]


def guided(model, guidance, params, content, ids, cond, scales, uncond=None, step=3, num_steps=8):
  base, style = muse.split_adapters(params)
  args = dict(base=base, style=style, content=content, cond=cond, cond_mask=None, uncond=uncond,
              uncond_mask=None, scales={k: jnp.float32(v) for k, v in scales.items()})
  fn = masked.GuidedLogits(model, guidance, num_steps)
  return fn(args, ids, jnp.int32(step))


SCALES = dict(scale=2.5, lambda_a=1.5, lambda_b=4.0, gamma=0.3)


@pytest.mark.parametrize("layout", ["maskgit", "muse"])
def test_each_mode_matches_hand_composition_with_one_call_per_param_set(layout):
  model, params, content = setup(layout)
  base, _ = muse.split_adapters(params)
  ids, cond, _ = inputs(model)
  null = jnp.ones((B,), bool)
  l_c = call(model, params, ids, cond)
  l_u = call(model, params, ids, cond, drop=null)
  l_cb = call(model, base, ids, cond, adapters=False)
  l_ub = call(model, base, ids, cond, adapters=False, drop=null)
  content_tree = muse.with_adapters(base, content)
  l_cc, l_uc = call(model, content_tree, ids, cond), call(model, content_tree, ids, cond, drop=null)
  tol = dict(rtol=1e-4, atol=1e-4)

  out = guided(model, masked.Guidance(mode="none"), params, None, ids, cond, SCALES)
  np.testing.assert_allclose(out, l_c, **tol)
  assert masked.last_trace_calls() == [("tuned", B)]

  out = guided(model, masked.Guidance(mode="cfg"), params, None, ids, cond, SCALES)
  np.testing.assert_allclose(out, 3.5 * l_c - 2.5 * l_u, **tol)  # Muse: (1 + t) l_c - t l_u
  assert masked.last_trace_calls() == [("tuned", 2 * B)]

  out = guided(model, masked.Guidance(mode="styledrop"), params, None, ids, cond, SCALES)
  np.testing.assert_allclose(out, l_c + 1.5 * (l_c - l_cb) + 4.0 * (l_cb - l_ub), **tol)
  assert masked.last_trace_calls() == [("tuned", B), ("base", 2 * B)]

  out = guided(model, masked.Guidance(mode="mix", form="diffusers"), params, content, ids, cond, SCALES)
  mc, mu = 0.3 * l_c + 0.7 * l_cc, 0.3 * l_u + 0.7 * l_uc
  np.testing.assert_allclose(out, mu + 2.5 * (mc - mu), **tol)
  assert masked.last_trace_calls() == [("style", 2 * B), ("content", 2 * B)]

  # Linear ramp at step 3 of 8: the CFG strength is scale * 4/8.
  out = guided(model, masked.Guidance(mode="cfg", ramp="linear"), params, None, ids, cond, SCALES)
  np.testing.assert_allclose(out, 2.25 * l_c - 1.25 * l_u, **tol)


def test_negative_prompt_replaces_the_null_condition():
  model, params, _ = setup("muse")
  ids, cond, negative = inputs(model)
  out = guided(model, masked.Guidance(mode="cfg", negative=True), params, None, ids, cond, SCALES, uncond=negative)
  l_c, l_n = call(model, params, ids, cond), call(model, params, ids, negative)
  np.testing.assert_allclose(out, 3.5 * l_c - 2.5 * l_n, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="uncond"):
    masked.sample(model, params, cond, jax.random.key(0), decode=DecodeConfig(mask_id=model.config.mask_id),
                  guidance=masked.Guidance(negative=True))


def test_decode_compiles_once_across_prompts_seeds_and_scales():
  model, params, content = setup("maskgit")
  cfg = DecodeConfig(mask_id=model.config.mask_id, num_steps=4)
  g = masked.Guidance(mode="styledrop")
  run = lambda cond, seed, la: masked.sample(model, params, jnp.asarray(cond), jax.random.key(seed), decode=cfg,
                                             guidance=g, scales=dict(lambda_a=la))
  first = run([0, 1], 0, 1.0)
  before = masked.trace_count()
  second = run([3, 2], 5, 2.0)
  third = run([0, 1], 0, 1.0)
  assert masked.trace_count() == before  # no retrace for new prompt, seed or guidance scale
  for out in (first, second, third):
    assert out.shape == (B, L) and int(out.max()) < K and int(out.min()) >= 0  # every position filled
  np.testing.assert_array_equal(first, third)  # same seed, same prompt: same sample
  assert not np.array_equal(first, second)


def test_frozen_weights_are_one_jit_argument():
  """StyleDrop runs base and tuned params; the compiled loop must hold the base weights once."""
  model, params, _ = setup("muse")
  cfg = DecodeConfig(mask_id=model.config.mask_id, num_steps=2)
  base, style = muse.split_adapters(params)
  args = dict(base=base, style=style, content=None, cond=inputs(model)[1], cond_mask=None, uncond=None,
              uncond_mask=None, scales={k: jnp.float32(1.0) for k in masked.SCALE_NAMES})
  fn = masked.GuidedLogits(model, masked.Guidance(mode="styledrop"), cfg.num_steps)
  ids = jnp.full((B, L), model.config.mask_id, jnp.int32)
  from stylejax.sample import parallel_decode
  compiled = parallel_decode.decode.lower(fn, args, ids, jax.random.key(0), cfg).compile()
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  arg_bytes = compiled.memory_analysis().argument_size_in_bytes
  assert arg_bytes < nbytes(params) + 64 * 1024  # base + adapters once (+ ids, cond, keys)
  assert arg_bytes < 1.5 * nbytes(base)


def test_bad_guidance_settings_raise():
  model, params, _ = setup("maskgit")
  base, _ = muse.split_adapters(params)
  with pytest.raises(ValueError, match="mode"):
    masked.Guidance(mode="bogus")
  with pytest.raises(ValueError, match="ramp"):
    masked.Guidance(ramp="cubic")
  cfg = DecodeConfig(mask_id=model.config.mask_id)
  with pytest.raises(ValueError, match="style adapters"):
    masked.sample(model, base, jnp.zeros((B,), jnp.int32), jax.random.key(0), decode=cfg,
                  guidance=masked.Guidance(mode="styledrop"))
  with pytest.raises(ValueError, match="unknown guidance scales"):
    masked.sample(model, params, jnp.zeros((B,), jnp.int32), jax.random.key(0), decode=cfg, scales={"lamda": 1})
