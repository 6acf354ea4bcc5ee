"""DPO: hand-computed values, direction of the gradient, beta scaling, masking, pair building."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stylejax.train import dpo


def test_sequence_logprobs_by_hand():
  # V = 2, logits (0, ln 3) -> p = (1/4, 3/4)
  logits = jnp.broadcast_to(jnp.asarray([0.0, math.log(3.0)]), (2, 3, 2))
  targets = jnp.asarray([[1, 1, 0], [0, 0, 0]])
  weights = jnp.asarray([[1, 1, 1], [0, 1, 1]])
  got = dpo.sequence_logprobs(logits, targets, weights)
  np.testing.assert_allclose(got, [2 * math.log(0.75) + math.log(0.25), 2 * math.log(0.25)], rtol=1e-6)
  np.testing.assert_allclose(dpo.sequence_logprobs(logits, targets)[1], 3 * math.log(0.25), rtol=1e-6)
  with pytest.raises(ValueError, match="agree"):
    dpo.sequence_logprobs(logits, targets[:, :2])


def test_dpo_loss_by_hand():
  loss, m = dpo.dpo_loss(jnp.asarray([-1.0, -4.0]), jnp.asarray([-3.0, -2.0]), jnp.asarray([-2.0, -2.0]),
                         jnp.asarray([-2.0, -2.0]), beta=0.5)
  # pair 0: h = (-1+2) - (-3+2) = 2, beta h = 1; pair 1: h = (-4+2) - 0 = -2, beta h = -1
  want = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  np.testing.assert_allclose(m["reward_accuracy"], 0.5)
  np.testing.assert_allclose(m["reward_margin"], 0.0, atol=1e-7)
  np.testing.assert_allclose(m["chosen_reward"], (0.5 - 1.0) / 2)
  np.testing.assert_allclose(m["rejected_reward"], (-0.5 + 0.0) / 2)
  # masking pair 1 leaves pair 0 alone
  loss0, m0 = dpo.dpo_loss(jnp.asarray([-1.0, -4.0]), jnp.asarray([-3.0, -2.0]), jnp.asarray([-2.0, -2.0]),
                           jnp.asarray([-2.0, -2.0]), beta=0.5, pair_weights=jnp.asarray([True, False]))
  np.testing.assert_allclose(loss0, math.log1p(math.exp(-1.0)), rtol=1e-6)
  assert float(m0["reward_accuracy"]) == 1.0
  # cDPO: (1 - eps) softplus(-1) + eps softplus(1)
  ls, _ = dpo.dpo_loss(jnp.asarray([-1.0]), jnp.asarray([-3.0]), jnp.asarray([-2.0]), jnp.asarray([-2.0]),
                       beta=0.5, label_smoothing=0.1)
  np.testing.assert_allclose(ls, 0.9 * math.log1p(math.exp(-1.0)) + 0.1 * math.log1p(math.exp(1.0)), rtol=1e-6)
  # RPO: + alpha * mean(-chosen logp / tokens) = 0.5 * ((1 + 4) / 2) / 2 over the two pairs
  rpo, mr = dpo.dpo_loss(jnp.asarray([-1.0, -4.0]), jnp.asarray([-3.0, -2.0]), jnp.asarray([-2.0, -2.0]),
                         jnp.asarray([-2.0, -2.0]), beta=0.5, sft_weight=0.5, chosen_tokens=2.0)
  np.testing.assert_allclose(mr["chosen_nll"], 1.25, rtol=1e-6)
  np.testing.assert_allclose(rpo, want + 0.5 * 1.25, rtol=1e-6)
  with pytest.raises(ValueError, match="beta"):
    dpo.dpo_loss(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), beta=0.0)


def test_loss_falls_as_chosen_rises_and_rejected_falls_and_ref_gets_no_gradient():
  args = [jnp.asarray([-5.0, -2.0]), jnp.asarray([-4.0, -3.0]), jnp.asarray([-4.5, -2.5]), jnp.asarray([-4.0, -2.0])]
  f = lambda *a: dpo.dpo_loss(*a, beta=0.3)[0]
  g = jax.grad(f, argnums=(0, 1, 2, 3))(*args)
  assert np.all(np.asarray(g[0]) < 0) and np.all(np.asarray(g[1]) > 0)
  assert np.all(np.asarray(g[2]) == 0) and np.all(np.asarray(g[3]) == 0)
  up = [args[0] + 0.5] + args[1:]
  assert float(f(*up)) < float(f(*args))

  # end to end from logits: one gradient step on the policy logits raises the chosen sequence's
  # log-prob relative to the rejected one and lowers the loss
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(4, 5, 7)).astype(np.float32))
  ref = logits + jnp.asarray(rng.normal(size=(4, 5, 7)).astype(np.float32)) * 0.1
  targets = jnp.asarray(rng.integers(0, 7, (4, 5)))
  weights = jnp.asarray(rng.random((4, 5)) > 0.3)
  loss_fn = lambda lg: dpo.dpo_loss_from_logits(lg, ref, targets, weights, beta=0.2)
  (loss, m), grad = jax.value_and_grad(loss_fn, has_aux=True)(logits)
  loss2, m2 = loss_fn(logits - 1.0 * grad)
  assert float(loss2) < float(loss)
  assert float(m2["reward_margin"]) > float(m["reward_margin"])
  assert float(m2["chosen_logp"]) > float(m["chosen_logp"])
  np.testing.assert_array_equal(np.asarray(grad)[~np.asarray(weights)], 0.0)  # masked positions: no gradient
  with pytest.raises(ValueError, match="2B"):
    dpo.dpo_loss_from_logits(logits[:3], ref[:3], targets[:3])


def test_beta_scales_rewards_and_sharpens_the_loss():
  c, r, rc, rr = jnp.asarray([-1.0]), jnp.asarray([-2.5]), jnp.asarray([-1.5]), jnp.asarray([-2.0])
  h = (-1.0 + 1.5) - (-2.5 + 2.0)  # 1.0
  for beta in (0.05, 0.5, 2.0):
    loss, m = dpo.dpo_loss(c, r, rc, rr, beta=beta)
    np.testing.assert_allclose(loss, math.log1p(math.exp(-beta * h)), rtol=1e-6)
    np.testing.assert_allclose(m["chosen_reward"], beta * 0.5, rtol=1e-6)
    np.testing.assert_allclose(m["reward_margin"], beta * h, rtol=1e-6)
  # no preference signal yet (policy == reference): log 2 whatever beta
  for beta in (0.1, 5.0):
    np.testing.assert_allclose(dpo.dpo_loss(c, r, c, r, beta=beta)[0], math.log(2.0), rtol=1e-6)


def test_preference_pairs_best_vs_worst_skipping_ties():
  scores = np.array([
      [0.2, 0.9, 0.5],  # best 1, worst 0
      [0.4, 0.4, 0.4],  # all tied: no pair
      [0.7, 0.1, 0.7],  # tied best: first (k=0); worst 1
      [0.3, 0.31, 0.3],  # gap 0.01
  ])
  chosen, rejected = dpo.preference_pairs(scores)
  np.testing.assert_array_equal(chosen, [1, 6, 10])
  np.testing.assert_array_equal(rejected, [0, 7, 9])
  np.testing.assert_array_equal(chosen // 3, rejected // 3)  # same prompt
  chosen, rejected = dpo.preference_pairs(scores, min_gap=0.05)
  np.testing.assert_array_equal(chosen, [1, 6])
  np.testing.assert_array_equal(rejected, [0, 7])
  with pytest.raises(ValueError, match="K >= 2"):
    dpo.preference_pairs(np.zeros((3, 1)))
  with pytest.raises(ValueError, match="NaN"):
    dpo.preference_pairs(np.array([[0.0, np.nan]]))
