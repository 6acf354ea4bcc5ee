"""The jitted KV-cache sampler: logit processors on hand examples, greedy == full recompute,
one compilation per mode (greedy / sampling) across prompts/seeds/settings, a greedy loop free
of sampling ops, per-row PRNG, CFG (dropped prefix; 2D class conditioning), vocabulary masks +
repetition penalty + bias inside the loop."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stylejax.models import ar
from _testutil import random_params
from stylejax.nn import rope
from stylejax.sample import autoregressive as sa

V, B, L, T = 53, 3, 6, 7
TINY = dict(vocab_size=V, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, mlp_dim=48, init_std=0.3)
GREEDY = sa.SampleSettings(temperature=0.0)


@functools.lru_cache(maxsize=None)
def _full(model):
  """Jitted full forward (no cache) -> logits [B, N, V]."""
  return jax.jit(lambda p, toks, pos, mask, prefix: model.apply(
      {"params": p}, toks, pos, prefix_embeds=prefix, attention_mask=mask)[0])


def _greedy_reference(step_logits, prompt, mask, num_steps, process=lambda logits, step, seq: logits):
  """Greedy decoding by full recomputation over a fixed-length buffer (one compile).

  step_logits(tokens [B, N], valid [B, N], read_at) -> [B, V] logits at column read_at.
  """
  b, l = prompt.shape
  toks = np.zeros((b, l + num_steps), np.int32)
  valid = np.zeros((b, l + num_steps), bool)
  toks[:, :l], valid[:, :l] = prompt, mask
  for step in range(num_steps):
    logits = np.asarray(step_logits(jnp.asarray(toks), jnp.asarray(valid), l - 1 + step))
    nxt = np.argmax(np.asarray(process(logits, step, toks[:, :l + step])), -1)
    toks[:, l + step], valid[:, l + step] = nxt, True
  return toks[:, l:]


@pytest.fixture(scope="module")
def lm():
  model = ar.DecoderLM(**TINY, qkv_bias=True)
  return model, random_params(model, jnp.zeros((1, 2), jnp.int32))


def _prompts(seed):
  toks = np.random.default_rng(seed).integers(0, V, (B, L))
  mask = np.ones((B, L), bool)
  mask[1, :2] = False  # ragged prompts: left padding
  mask[2, :4] = False
  return toks, mask


# ----------------------------------------------------------------------------- processors


def test_cfg_combine_hand_example():
  cond, uncond = jnp.array([1.0, 2.0]), jnp.array([0.0, 1.0])
  np.testing.assert_allclose(sa.cfg_combine(cond, uncond, 3.0), [3.0, 4.0])
  np.testing.assert_allclose(sa.cfg_combine(cond, uncond, 1.0), cond)
  np.testing.assert_allclose(sa.cfg_combine(cond, uncond, 0.0), uncond)


def test_nested_cfg_combine_hand_example():
  full, style, null = jnp.array([[3.0, 1.0]]), jnp.array([[1.0, 1.0]]), jnp.array([[0.0, 2.0]])
  stacked = jnp.stack([full, style, null])
  # l_null + s_style (l_style - l_null) + s (l_full - l_style), s = 2, s_style = 0.5
  np.testing.assert_allclose(sa.nested_cfg_combine(stacked, jnp.array([2.0, 0.5])), [[4.5, 1.5]])
  np.testing.assert_allclose(sa.nested_cfg_combine(stacked, jnp.array([2.0, 2.0])), sa.cfg_combine(full, null, 2.0))
  np.testing.assert_allclose(sa.nested_cfg_combine(stacked[::2], 2.0), sa.cfg_combine(full, null, 2.0))


def test_repetition_penalty_hand_example():
  logits = jnp.array([[2.0, -2.0, 1.0, -1.0]])
  seen = jnp.array([[True, True, False, False]])
  np.testing.assert_allclose(sa.apply_repetition_penalty(logits, seen, 2.0), [[1.0, -4.0, 1.0, -1.0]])


def test_top_k_mask_equals_sort_threshold():
  """The bisection threshold is the exact k-th largest: ties, negatives, -inf and per-row k."""
  rng = np.random.default_rng(0)
  x = rng.integers(-6, 7, (6, 40)).astype(np.float32) * 0.75 + 0.1  # many ties, no zeros
  x[0, :10] = -np.inf
  x[1] = rng.normal(size=40).astype(np.float32) * 1e4
  for k in (1, 2, 7, 33, 40):
    got = np.asarray(sa.top_k_mask(jnp.asarray(x), jnp.int32(k)))
    kth = -np.sort(-x, axis=1)[:, k - 1:k]
    np.testing.assert_array_equal(got, np.where(x >= kth, x, -np.inf), err_msg=f"k={k}")
  ks = np.array([1, 3, 5, 40, 12, 2])
  got = np.asarray(sa.top_k_mask(jnp.asarray(x), jnp.asarray(ks)))
  kth = np.take_along_axis(-np.sort(-x, axis=1), ks[:, None] - 1, axis=1)
  np.testing.assert_array_equal(got, np.where(x >= kth, x, -np.inf))


def test_argmax_is_jnp_argmax_first_of_ties():
  x = np.random.default_rng(1).integers(-3, 4, (50, 9)).astype(np.float32)  # many tied maxima
  x[0] = -np.inf
  np.testing.assert_array_equal(sa.argmax(jnp.asarray(x)), np.argmax(x, axis=-1))
  assert sa.argmax(jnp.asarray(x)).dtype == jnp.int32


def test_top_k_top_p_hand_examples():
  logits = jnp.log(jnp.array([[0.5, 0.05, 0.3, 0.15]]))
  kept = lambda k, p: np.isfinite(np.asarray(sa.top_k_top_p_filter(logits, jnp.int32(k), jnp.float32(p))))[0]
  np.testing.assert_array_equal(kept(0, 1.0), [1, 1, 1, 1])  # both off
  np.testing.assert_array_equal(kept(2, 1.0), [1, 0, 1, 0])
  np.testing.assert_array_equal(kept(1, 1.0), [1, 0, 0, 0])
  np.testing.assert_array_equal(kept(0, 0.8), [1, 0, 1, 0])  # 0.5 + 0.3 reaches 0.8
  np.testing.assert_array_equal(kept(0, 0.81), [1, 0, 1, 1])
  np.testing.assert_array_equal(kept(0, 0.1), [1, 0, 0, 0])  # the top token always survives
  np.testing.assert_array_equal(kept(3, 0.99), [1, 0, 1, 1])  # top-p over the top-k renormalised mass
  # after top-2 the top token holds 0.5/0.8 = 0.625 of the mass: enough for p=0.6, not for 0.65
  np.testing.assert_array_equal(kept(2, 0.6), [1, 0, 0, 0])
  np.testing.assert_array_equal(kept(2, 0.65), [1, 0, 1, 0])
  ties = jnp.array([[1.0, 3.0, 3.0, 2.0]])
  out = np.isfinite(np.asarray(sa.top_k_top_p_filter(ties, jnp.int32(1), jnp.float32(1.0))))[0]
  np.testing.assert_array_equal(out, [0, 1, 1, 0])  # ties at the k-th value are kept (transformers)


def test_sample_tokens_masks_greedy_and_temperature():
  n = 4000
  logits = jnp.tile(jnp.array([[1.0, 0.0, 2.0, -1.0]]), (n, 1))
  keys = sa.row_keys(jax.random.key(0), n)
  allowed = jnp.array([True, True, False, True])
  proc = sa.process_logits(logits, sa.SampleSettings().as_arrays(), allowed=allowed,
                           bias=jnp.array([0.0, 0.5, 0.0, 0.0]))
  drawn = np.asarray(sa.sample_tokens(proc, sa.SampleSettings(temperature=0.5).as_arrays(), keys))
  assert not np.any(drawn == 2)  # masked out
  freq = np.bincount(drawn, minlength=4) / n
  want = np.asarray(jax.nn.softmax(jnp.array([1.0, 0.5, -jnp.inf, -1.0]) / 0.5))
  np.testing.assert_allclose(freq, want, atol=0.03)
  assert np.all(np.asarray(sa.sample_tokens(proc, GREEDY.as_arrays(), keys)) == 0)
  assert np.all(np.asarray(sa.sample_tokens(proc, GREEDY.as_arrays(), keys, greedy=True)) == 0)
  assert np.all(np.asarray(sa.sample_tokens(proc, sa.SampleSettings(top_k=1).as_arrays(), keys)) == 0)
  # inverse CDF at the edges: only the first / only the last token possible (token 2 underflows to 0)
  edge = jnp.full((n, 6), -jnp.inf).at[: n // 2, 0].set(0.0).at[n // 2:, 5].set(0.0).at[:, 2].set(-200.0)
  drawn = np.asarray(sa.draw(keys, edge))
  assert np.all(drawn[: n // 2] == 0) and np.all(drawn[n // 2:] == 5)


# ----------------------------------------------------------------------------- the loop


def test_greedy_equals_full_recompute_and_compiles_once_per_mode(lm):
  model, params = lm
  toks, mask = _prompts(1)
  start = sa.trace_count()
  got = sa.generate(model, params, sa.Prompt(toks, mask), jax.random.key(0), T, settings=GREEDY)
  assert got.shape == (B, T) and got.dtype == jnp.int32
  assert sa.trace_count() == start + 1
  full = _full(model)
  ref = _greedy_reference(lambda t, v, i: full(params, t, None, v, None)[:, i], toks, mask, T)
  np.testing.assert_array_equal(got, ref)

  # eos: a row that emits it keeps emitting it (still the same compilation)
  eos = int(got[0, 2])
  stopped = np.asarray(sa.generate(model, params, sa.Prompt(toks, mask), jax.random.key(0), T,
                                   settings=sa.SampleSettings(temperature=0.0, eos_id=eos)))
  first = np.argmax(np.asarray(got) == eos, axis=1)
  for r in range(B):
    if np.any(np.asarray(got[r]) == eos):
      np.testing.assert_array_equal(stopped[r, :first[r] + 1], got[r, :first[r] + 1])
      assert np.all(stopped[r, first[r]:] == eos)
    else:
      np.testing.assert_array_equal(stopped[r], got[r])

  # greedy with other prompts, seeds, penalties: no retrace
  toks2, mask2 = _prompts(9)
  sa.generate(model, params, sa.Prompt(toks2, mask2), jax.random.key(3), T,
              settings=sa.SampleSettings(temperature=-1.0, repetition_penalty=1.5))
  assert sa.trace_count() == start + 1
  # sampling compiles its own loop once; then new prompts, seeds and every setting value (top-k /
  # top-p on or off included) reuse it
  for seed, settings in enumerate([sa.SampleSettings(1.0, 5, 0.9, 1.3), sa.SampleSettings(0.7, 0, 1.0, 1.0, 2.0),
                                   sa.SampleSettings(temperature=1, top_p=1, top_k=2, repetition_penalty=50)]):
    toks2, mask2 = _prompts(10 + seed)
    sa.generate(model, params, sa.Prompt(toks2, mask2), jax.random.key(seed), T, settings=settings)
  assert sa.trace_count() == start + 2


def test_greedy_loop_has_no_sampling_ops(lm):
  """Greedy compiles a loop without the sort (top-p) or the RNG (the old loop ran both every
  step and chose with a where); the sampling loop has them, the sort behind a cond."""
  model, params = lm
  toks, mask = _prompts(1)
  lower = lambda s: sa.lower_generate(model, params, sa.Prompt(toks, mask), jax.random.key(0), T, settings=s).as_text()
  greedy, sampling = lower(GREEDY), lower(sa.SampleSettings(temperature=1.0, top_k=5, top_p=0.9))
  ops = lambda text, name: len(re.findall(rf"stablehlo\.{name}\b", text))
  assert ops(sampling, "sort") == 1 and ops(sampling, "case") >= 2 and "threefry" in sampling  # the probe works
  assert ops(greedy, "sort") == 0 and ops(greedy, "case") == 0 and "threefry" not in greedy


def test_rows_do_not_depend_on_batch_composition(lm):
  model, params = lm
  settings = sa.SampleSettings(temperature=1.0, top_k=10)
  toks, mask = _prompts(2)
  other, other_mask = _prompts(3)
  rng = jax.random.key(7)
  a = np.asarray(sa.generate(model, params, sa.Prompt(toks, mask), rng, T, settings=settings))
  mixed_toks, mixed_mask = other.copy(), other_mask.copy()
  mixed_toks[1], mixed_mask[1] = toks[1], mask[1]
  b = np.asarray(sa.generate(model, params, sa.Prompt(mixed_toks, mixed_mask), rng, T, settings=settings))
  np.testing.assert_array_equal(a[1], b[1])  # row 1 keeps fold_in(rng, 1) whatever its neighbours
  assert not np.array_equal(a[0], b[0])
  # explicit per-row keys travel with their rows
  perm = np.array([2, 0, 1])
  keys = sa.row_keys(rng, B)
  c = np.asarray(sa.generate(model, params, sa.Prompt(toks[perm], mask[perm]), keys[perm], T, settings=settings))
  np.testing.assert_array_equal(c, a[perm])
  d = np.asarray(sa.generate(model, params, sa.Prompt(toks, mask), jax.random.key(8), T, settings=settings))
  assert not np.array_equal(a, d)


def test_cfg_with_dropped_text_prefix_matches_hand_combination():
  model = ar.DecoderLM(**TINY, text_dim=5)
  toks = np.asarray(jnp.asarray(np.random.default_rng(4).integers(0, V, (2, 4)), jnp.int32))
  text = np.asarray(jnp.asarray(np.random.default_rng(5).normal(size=(2, 3, 5)), jnp.float32))
  params = random_params(model, jnp.asarray(toks), prefix_embeds=jnp.asarray(text))
  scale = 2.5
  settings = sa.SampleSettings(temperature=0.0, cfg_scale=scale)
  cond = sa.Prompt(toks, prefix_embeds=text)
  # StyleAR-style unconditional context: the same tokens with the text prefix dropped
  got = sa.generate(model, params, cond, jax.random.key(0), T, settings=settings,
                    uncond=cond._replace(prefix_mask=np.zeros((2, 3), bool)))
  # the same thing expressed as "no prefix at all" (the sampler pads it to one batch)
  got2 = sa.generate(model, params, cond, jax.random.key(0), T, settings=settings, uncond=sa.Prompt(toks))
  np.testing.assert_array_equal(got, got2)

  full = _full(model)
  def step_logits(t, v, i):  # two separate full recomputations, combined by hand
    c = full(params, t, None, jnp.concatenate([jnp.ones((2, 3), bool), v], 1), jnp.asarray(text))[:, 3 + i]
    u = full(params, t, None, v, None)[:, i]
    return u + scale * (c - u)
  ref = _greedy_reference(step_logits, toks, np.ones_like(toks, bool), T)
  np.testing.assert_array_equal(got, ref)

  # two-scale guidance over [cond; text-dropped; no prefix]: with both unconditional streams the same
  # context it is CFG at the first scale; with 2 scales it matches the hand combination of three streams
  dropped = cond._replace(prefix_mask=np.zeros((2, 3), bool))
  two = sa.SampleSettings(temperature=0.0, cfg_scale=(scale, 7.0))
  np.testing.assert_array_equal(sa.generate(model, params, cond, jax.random.key(0), T, settings=two,
                                            uncond=[dropped, sa.Prompt(toks)]), got)
  half = cond._replace(prefix_mask=np.asarray([[True, False, False]] * 2))  # a partly dropped prefix
  nested = sa.generate(model, params, cond, jax.random.key(0), T, settings=two, uncond=(half, sa.Prompt(toks)))

  def nested_logits(t, v, i):
    c = full(params, t, None, jnp.concatenate([jnp.ones((2, 3), bool), v], 1), jnp.asarray(text))[:, 3 + i]
    h = full(params, t, None, jnp.concatenate([jnp.asarray(half.prefix_mask), v], 1), jnp.asarray(text))[:, 3 + i]
    u = full(params, t, None, v, None)[:, i]
    return u + 7.0 * (h - u) + scale * (c - h)
  np.testing.assert_array_equal(nested, _greedy_reference(nested_logits, toks, np.ones_like(toks, bool), T))
  with pytest.raises(ValueError, match="one per unconditional stream"):
    sa.generate(model, params, cond, jax.random.key(0), T, settings=two, uncond=dropped)


def test_vocab_masks_bias_and_repetition_penalty_in_loop(lm):
  model, params = lm
  toks, mask = _prompts(6)
  allowed = np.zeros(V, bool)
  allowed[10:40] = True
  step_mask = np.ones((T, V), bool)
  step_mask[3] = False
  step_mask[3, 21] = True  # force token 21 at step 3 (e.g. an end-of-row token)
  bias = np.linspace(-1.0, 1.0, V).astype(np.float32)
  settings = sa.SampleSettings(temperature=0.0, repetition_penalty=3.0)
  got = np.asarray(sa.generate(model, params, sa.Prompt(toks, mask), jax.random.key(0), T, settings=settings,
                               vocab_mask=allowed, step_vocab_mask=step_mask, logit_bias=bias))
  assert np.all(allowed[got]) and np.all(got[:, 3] == 21)

  def process(logits, step, seq):
    seen = np.zeros_like(logits, bool)
    for r in range(B):
      seen[r, seq[r][np.r_[mask[r], np.ones(seq.shape[1] - L, bool)]]] = True
    logits = np.where(seen, np.where(logits < 0, logits * 3.0, logits / 3.0), logits) + bias
    return np.where(allowed & step_mask[step], logits, -np.inf)
  full = _full(model)
  ref = _greedy_reference(lambda t, v, i: full(params, t, None, v, None)[:, i], toks, mask, T, process)
  np.testing.assert_array_equal(got, ref)
  with pytest.raises(ValueError, match="step_vocab_mask"):
    sa.generate(model, params, sa.Prompt(toks, mask), jax.random.key(0), T, step_vocab_mask=step_mask[:2])


def test_2d_rope_class_conditional_cfg_matches_full_recompute():
  grid = (2, 3)
  n = grid[0] * grid[1]
  model = ar.DecoderLM(**TINY, rope="2d", grid=grid)
  params = random_params(model, jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2, 2), jnp.int32))
  cls = np.array([[50], [51]])
  null = np.full((2, 1), 52)  # LlamaGen: a learned null class token as the unconditional context
  scale = 3.0
  got = sa.generate(model, params, sa.Prompt(cls), jax.random.key(0), n,
                    settings=sa.SampleSettings(temperature=0.0, cfg_scale=scale), uncond=sa.Prompt(null))
  pos = jnp.asarray(rope.grid_positions(1, grid))[None].repeat(2, 0)  # [2, 1 + n, 2]
  full = _full(model)
  def step_logits(t, v, i):
    c = full(params, t, pos, v, None)[:, i]
    u = full(params, t.at[:, :1].set(jnp.asarray(null)), pos, v, None)[:, i]
    return u + scale * (c - u)
  ref = _greedy_reference(step_logits, cls, np.ones((2, 1), bool), n)
  np.testing.assert_array_equal(got, ref)
