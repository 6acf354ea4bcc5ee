"""MaskGIT/aMUSEd parallel decoding: schedule adherence, known tokens, compile-once, per-row rng."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stylejax.sample import parallel_decode as pd

V = 8  # vocab incl. [MASK]
MASK = V - 1
L = 16


def _target_logits(args, ids, step):
  """Strongly prefers args['target'] [B, L] (scaled by args['scale'])."""
  del step
  return args["scale"] * jax.nn.one_hot(args["target"], V) + 0.0 * ids[..., None]


def _row_local_logits(args, ids, step):
  """Random-looking logits that depend only on the row's own ids, position and step (gathers only,
  so results are bit-identical whatever the batch size)."""
  return args["table"][ids] + args["pos"][None] + 0.1 * step


def _random_args(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"table": jax.random.normal(k1, (V, V)), "pos": jax.random.normal(k2, (L, V))}


def _expected_counts(n0, num_steps, base=None):
  """numpy re-derivation of #masked after each step (cosine): clip(floor(N*s), 1, prev-1), 0 last."""
  base = n0 if base is None else base
  counts, prev = [], n0
  for t in range(num_steps):
    if t == num_steps - 1:
      n = 0
    else:
      n = max(0, min(max(math.floor(base * math.cos(math.pi / 2 * (t + 1) / num_steps)), 1), prev - 1))
    counts.append(n)
    prev = n
  return counts


def _partly_known_ids():
  """Rows with 16, 10, 5, 1 and 0 masked positions; known tokens are random non-mask ids."""
  rng = np.random.default_rng(0)
  ids = rng.integers(0, MASK, size=(5, L))
  for row, n in enumerate([16, 10, 5, 1, 0]):
    ids[row, rng.permutation(L)[:n]] = MASK
  return jnp.asarray(ids, jnp.int32)


def test_mask_counts_follow_schedule_and_all_filled_in_T_steps():
  ids = _partly_known_ids()
  config = pd.DecodeConfig(mask_id=MASK, num_steps=5)
  out, hist = pd.decode_with_history(_row_local_logits, _random_args(), ids, jax.random.key(0), config)
  hist = np.asarray(hist)
  assert hist.shape == (5, 5, L)  # one entry per step: exactly T model calls
  counts = (hist == MASK).sum(-1)  # [T, B]
  for row, n0 in enumerate([16, 10, 5, 1, 0]):
    assert list(counts[:, row]) == _expected_counts(n0, 5), f"row {row}"
  np.testing.assert_array_equal(np.asarray(out), hist[-1])
  assert not np.any(np.asarray(out) == MASK)
  assert out.dtype == jnp.int32 and out.shape == ids.shape


def test_seq_len_base_amused():
  ids = _partly_known_ids()
  config = pd.DecodeConfig(mask_id=MASK, num_steps=5, mask_len_base="seq_len", choice_temperature=2.0,
                           temperature_schedule="amused_linspace")
  _, hist = pd.decode_with_history(_row_local_logits, _random_args(), ids, jax.random.key(1), config)
  counts = (np.asarray(hist) == MASK).sum(-1)
  for row, n0 in enumerate([16, 10, 5, 1, 0]):
    assert list(counts[:, row]) == _expected_counts(n0, 5, base=L), f"row {row}"
  # Row with 10 unknown: floor(16 cos(pi/10)) = 15 is clipped to 10 - 1 = 9 at the first step.
  assert counts[0, 1] == 9


def test_known_tokens_never_change_and_unmasked_tokens_stay():
  ids = _partly_known_ids()
  config = pd.DecodeConfig(mask_id=MASK, num_steps=6)
  out, hist = pd.decode_with_history(_row_local_logits, _random_args(3), ids, jax.random.key(3), config)
  ids, out, hist = np.asarray(ids), np.asarray(out), np.asarray(hist)
  known = ids != MASK
  np.testing.assert_array_equal(out[known], ids[known])
  for t in range(hist.shape[0]):
    np.testing.assert_array_equal(hist[t][known], ids[known])
    if t:  # once unmasked, a token is final
      done = hist[t - 1] != MASK
      np.testing.assert_array_equal(hist[t][done], hist[t - 1][done])
  np.testing.assert_array_equal(out[4], ids[4])  # fully known row passes through


@pytest.mark.parametrize("sampling, schedule", [("categorical", "maskgit_linear"),
                                                ("gumbel_argmax", "amused_linspace")])
def test_recovers_preferred_sequence(sampling, schedule):
  target = jax.random.randint(jax.random.key(5), (3, L), 0, MASK)
  ids = jnp.full((3, L), MASK, jnp.int32)
  config = pd.DecodeConfig(mask_id=MASK, num_steps=8, sampling=sampling, temperature_schedule=schedule)
  out = pd.decode(_target_logits, {"target": target, "scale": 30.0}, ids, jax.random.key(0), config)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(target))


def test_compiles_once_for_new_prompts_scales_and_seeds():
  traces = []

  def logits_fn(args, ids, step):
    traces.append(1)  # runs only while tracing
    return _target_logits(args, ids, step)

  config = pd.DecodeConfig(mask_id=MASK, num_steps=8)
  ids = jnp.full((2, L), MASK, jnp.int32)
  outs = []
  for seed in range(3):
    prompt = jax.random.randint(jax.random.key(10 + seed), (2, L), 0, MASK)
    out = pd.decode(logits_fn, {"target": prompt, "scale": 20.0 + seed}, ids, jax.random.key(seed), config)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(prompt))  # the new prompt is used
    outs.append(np.asarray(out))
  assert len(traces) == 1, "decode retraced (or unrolled the step loop)"
  assert not np.array_equal(outs[0], outs[1])
  # An equal (not identical) config object hits the same cache entry.
  pd.decode(logits_fn, {"target": prompt, "scale": 1.0}, ids, jax.random.key(9),
            pd.DecodeConfig(mask_id=MASK, num_steps=8))
  assert len(traces) == 1


def test_loop_is_a_single_while_not_unrolled():
  config = pd.DecodeConfig(mask_id=MASK, num_steps=12)
  ids = jnp.full((2, L), MASK, jnp.int32)
  jaxpr = jax.make_jaxpr(pd.decode_fn, static_argnums=(0, 4))(
      _row_local_logits, _random_args(), ids, jax.random.key(0), config)
  loops = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("scan", "while")]
  assert len(loops) == 1  # fori_loop with static bounds lowers to one scan over the steps
  if loops[0].primitive.name == "scan":
    assert loops[0].params["length"] == 12


def test_per_sample_reproducible_independent_of_batch():
  args = _random_args(7)
  config = pd.DecodeConfig(mask_id=MASK, num_steps=6)
  ids = jnp.full((4, L), MASK, jnp.int32).at[:, :3].set(jnp.array([1, 2, 3]))
  key = jax.random.key(42)
  full = np.asarray(pd.decode(_row_local_logits, args, ids, key, config))
  assert len({row.tobytes() for row in full}) == 4  # rows get different noise
  # Row 2 decoded alone (batch of 1), given its own key fold_in(key, 2), matches.
  alone = pd.decode(_row_local_logits, args, ids[2:3], jax.random.fold_in(key, 2)[None], config)
  np.testing.assert_array_equal(np.asarray(alone), full[2:3])
  # Moving rows around together with their keys moves the results.
  keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(4))
  perm = np.array([3, 1, 0, 2])
  permuted = pd.decode(_row_local_logits, args, ids[perm], keys[perm], config)
  np.testing.assert_array_equal(np.asarray(permuted), full[perm])
  # Same seed, same result; a different seed differs.
  np.testing.assert_array_equal(np.asarray(pd.decode(_row_local_logits, args, ids, key, config)), full)
  other = np.asarray(pd.decode(_row_local_logits, args, ids, jax.random.key(43), config))
  assert not np.array_equal(other, full)


def test_raw_uint32_key_works():
  config = pd.DecodeConfig(mask_id=MASK, num_steps=4)
  ids = jnp.full((2, L), MASK, jnp.int32)
  out = pd.decode(_row_local_logits, _random_args(), ids, jax.random.PRNGKey(0), config)
  assert not np.any(np.asarray(out) == MASK)


def test_choice_temperature_schedules():
  m = pd.DecodeConfig(mask_id=0, num_steps=5, choice_temperature=4.5)
  np.testing.assert_allclose([pd.choice_temperature(t, m) for t in range(5)],
                             4.5 * (1 - (np.arange(5) + 1) / 5), rtol=1e-6, atol=1e-6)
  a = pd.DecodeConfig(mask_id=0, num_steps=5, choice_temperature=2.0, temperature_schedule="amused_linspace")
  np.testing.assert_allclose([pd.choice_temperature(t, a) for t in range(5)], np.linspace(2, 0, 5), atol=1e-6)
  one = pd.DecodeConfig(mask_id=0, num_steps=1, choice_temperature=2.0, temperature_schedule="amused_linspace")
  assert float(pd.choice_temperature(0, one)) == 2.0  # torch.linspace(2, 0, 1) == [2]


def _ranked_logits(args, ids, step):
  """Position i predicts token i % 7 with confidence growing with i."""
  del args, step
  strength = jnp.arange(L, dtype=jnp.float32) / 4.0
  logits = strength[:, None] * jax.nn.one_hot(jnp.arange(L) % MASK, V)
  return jnp.broadcast_to(logits, ids.shape + (V,))


def test_confidence_order_and_choice_noise():
  ids = jnp.full((8, L), MASK, jnp.int32)
  greedy = pd.DecodeConfig(mask_id=MASK, num_steps=4, temperature=0.0, choice_temperature=0.0)
  _, hist = pd.decode_with_history(_ranked_logits, None, ids, jax.random.key(0), greedy)
  hist = np.asarray(hist)
  # cos(pi/8) * 16 = 14.8 -> 14 stay masked: exactly the 14 least confident (lowest) positions.
  expected = np.where(np.arange(L) >= 14, np.arange(L) % MASK, MASK)
  np.testing.assert_array_equal(hist[0], np.broadcast_to(expected, (8, L)))
  # With a large choice temperature the order is noisy: rows differ from the greedy order.
  noisy = pd.DecodeConfig(mask_id=MASK, num_steps=4, temperature=0.0, choice_temperature=50.0,
                          temperature_schedule="amused_linspace")
  _, hist = pd.decode_with_history(_ranked_logits, None, ids, jax.random.key(0), noisy)
  first = np.asarray(hist)[0] != MASK
  assert (first.sum(-1) == 2).all()
  assert not (first == (np.arange(L) >= 14)).all()


def _two_pos_logits(args, ids, step):
  """Position 0: two tied tokens with logit 5 (p=.5); position 1: one token with logit 1 (p~1)."""
  del args, step
  neg = -30.0
  row = jnp.array([[5.0, 5.0, neg, neg], [neg, neg, 1.0, neg]])
  return jnp.broadcast_to(row, ids.shape + (4,))


@pytest.mark.parametrize("confidence, remasked", [("log_prob", 0), ("logits", 1)])
def test_confidence_modes(confidence, remasked):
  config = pd.DecodeConfig(mask_id=3, num_steps=2, temperature=0.0, choice_temperature=0.0, confidence=confidence)
  ids = jnp.full((1, 2), 3, jnp.int32)
  _, hist = pd.decode_with_history(_two_pos_logits, None, ids, jax.random.key(0), config)
  assert int(np.asarray(hist)[0, 0, remasked]) == 3
  assert int(np.asarray(hist)[0, 0, 1 - remasked]) != 3


@pytest.mark.parametrize("sampling, temperature", [("categorical", 0.5), ("gumbel_argmax", 2.0)])
def test_sampling_modes_match_softmax(sampling, temperature):
  base = jnp.array([0.0, 1.0, 2.0, 5.0])  # last entry is [MASK]: forbidden

  def logits_fn(args, ids, step):
    return jnp.broadcast_to(args, ids.shape + (4,))

  config = pd.DecodeConfig(mask_id=3, num_steps=1, sampling=sampling, temperature=temperature)
  ids = jnp.full((32, 128), 3, jnp.int32)
  out = np.asarray(pd.decode(logits_fn, base, ids, jax.random.key(1), config))
  freq = np.bincount(out.ravel(), minlength=4) / out.size
  expected = np.exp(np.array([0, 1, 2]) / temperature)
  expected /= expected.sum()
  np.testing.assert_allclose(freq[:3], expected, atol=0.03)
  assert freq[3] == 0


def test_inverse_cdf_never_returns_dead_tokens():
  logits = jnp.array([[0.0, 1.0, -jnp.inf], [-jnp.inf, 3.0, -jnp.inf], [2.0, -jnp.inf, 0.0]])
  top = jnp.ones(3)  # u * total == total: the guard must still land on a live token
  np.testing.assert_array_equal(pd._categorical_inverse_cdf(top, logits), [1, 1, 2])
  np.testing.assert_array_equal(pd._categorical_inverse_cdf(jnp.zeros(3), logits), [0, 1, 0])


def test_each_step_draws_fresh_noise():
  """With flat logits, tokens revealed at step 0 match a 1-step decode with the same key; tokens
  revealed later must come from new noise (a key reused across steps would repeat them)."""
  def flat(args, ids, step):
    return jnp.zeros(ids.shape + (V,))

  ids = jnp.full((4, L), MASK, jnp.int32)
  one = np.asarray(pd.decode(flat, None, ids, jax.random.key(0), pd.DecodeConfig(mask_id=MASK, num_steps=1)))
  out, hist = pd.decode_with_history(flat, None, ids, jax.random.key(0), pd.DecodeConfig(mask_id=MASK, num_steps=4))
  first = np.asarray(hist)[0] != MASK
  np.testing.assert_array_equal(np.asarray(out)[first], one[first])
  assert np.mean(np.asarray(out)[~first] != one[~first]) > 0.5  # 6/7 expected


def test_zero_temperature_is_greedy():
  def logits_fn(args, ids, step):
    return jnp.broadcast_to(args, ids.shape + (4,))

  config = pd.DecodeConfig(mask_id=3, num_steps=3, temperature=0.0)
  out = pd.decode(logits_fn, jnp.array([0.0, 1.0, 0.5, 9.0]), jnp.full((2, L), 3), jax.random.key(0), config)
  np.testing.assert_array_equal(np.asarray(out), 1)


def test_mask_token_forbidden_by_default():
  def logits_fn(args, ids, step):
    return args * jax.nn.one_hot(jnp.full(ids.shape, MASK), V)

  ids = jnp.full((2, L), MASK, jnp.int32)
  out = pd.decode(logits_fn, 50.0, ids, jax.random.key(0), pd.DecodeConfig(mask_id=MASK, num_steps=3))
  assert not np.any(np.asarray(out) == MASK)
  allowed = pd.DecodeConfig(mask_id=MASK, num_steps=3, forbid_mask_token=False)
  out = pd.decode(logits_fn, 50.0, ids, jax.random.key(0), allowed)
  assert np.all(np.asarray(out) == MASK)


def test_steps_passed_in_order_and_start_step():
  def logits_fn(args, ids, step):  # prefers token == step at every position
    return 40.0 * jax.nn.one_hot(jnp.full(ids.shape, step), V)

  ids = jnp.full((2, L), MASK, jnp.int32)
  config = pd.DecodeConfig(mask_id=MASK, num_steps=6, start_step=2)
  out, hist = pd.decode_with_history(logits_fn, None, ids, jax.random.key(0), config)
  hist = np.asarray(hist)
  assert hist.shape == (4, 2, L)  # steps 2..5
  for i in range(4):  # tokens revealed at loop index i carry the step number 2 + i
    newly = (hist[i] != MASK) & ((hist[i - 1] == MASK) if i else True)
    assert newly.any()
    assert np.all(hist[i][newly] == 2 + i)
  # Counts follow the schedule from step 2 on: N0 = 16 at start.
  ratios = (np.arange(2, 6) + 1) / 6
  expected = [min(math.floor(16 * math.cos(math.pi / 2 * r)), 16) for r in ratios[:-1]] + [0]
  assert list((hist[:, 0] == MASK).sum(-1)) == expected
  assert not np.any(np.asarray(out) == MASK)


def test_config_is_hashable_and_validated():
  a = pd.DecodeConfig(mask_id=3)
  assert hash(a) == hash(pd.DecodeConfig(mask_id=3)) and a == pd.DecodeConfig(mask_id=3)
  for bad in [dict(schedule="square"), dict(sampling="topk"), dict(confidence="prob"),
              dict(temperature_schedule="cosine"), dict(mask_len_base="all"), dict(num_steps=0),
              dict(start_step=12), dict(temperature=-1.0)]:
    with pytest.raises(ValueError):
      pd.DecodeConfig(mask_id=3, **bad)


def test_key_batch_size_mismatch_raises():
  config = pd.DecodeConfig(mask_id=MASK, num_steps=2)
  keys = jax.random.split(jax.random.key(0), 3)
  with pytest.raises(ValueError, match="3 keys for a batch of 2"):
    pd.decode(_row_local_logits, _random_args(), jnp.full((2, L), MASK), keys, config)
