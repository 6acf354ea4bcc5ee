"""Guidance formulas against hand-computed numbers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stylejax.sample import guidance as g

COND = np.array([[1.0, 2.0, -1.0]])
UNCOND = np.array([[0.5, 3.0, 1.0]])


def test_cfg_muse_form():
  # (1 + 2) * cond - 2 * uncond = [3, 6, -3] - [1, 6, 2]
  np.testing.assert_allclose(g.cfg(COND, UNCOND, 2.0, form="muse"), [[2.0, 0.0, -5.0]])


def test_cfg_diffusers_form():
  # uncond + 3 * (cond - uncond) = [0.5, 3, 1] + 3 * [0.5, -1, -2]
  np.testing.assert_allclose(g.cfg(COND, UNCOND, 3.0, form="diffusers"), [[2.0, 0.0, -5.0]])


def test_cfg_forms_agree_with_s_equal_one_plus_t_and_identity_cases():
  rng = np.random.default_rng(0)
  c, u = rng.normal(size=(2, 4, 5))
  np.testing.assert_allclose(g.cfg(c, u, 4.0, "muse"), g.cfg(c, u, 5.0, "diffusers"), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(g.cfg(c, u, 0.0, "muse"), c, atol=1e-7)  # t = 0: no guidance
  np.testing.assert_allclose(g.cfg(c, u, 1.0, "diffusers"), c, atol=1e-7)  # s = 1: no guidance
  np.testing.assert_allclose(g.cfg(c, u, 0.0, "diffusers"), u, atol=1e-7)


def test_cfg_per_sample_scale_broadcasts():
  c = np.ones((2, 1, 3))
  u = np.zeros((2, 1, 3))
  out = g.cfg(c, u, jnp.array([1.0, 3.0])[:, None, None], "muse")
  np.testing.assert_allclose(out[:, 0, 0], [2.0, 4.0])


def test_cfg_unknown_form_raises():
  with pytest.raises(ValueError, match="guidance form"):
    g.cfg(COND, UNCOND, 1.0, form="cfg++")


def test_ramped_scale():
  steps = np.arange(4)
  np.testing.assert_allclose([g.ramped_scale(8.0, s, 4) for s in steps], [8.0] * 4)
  np.testing.assert_allclose([g.ramped_scale(8.0, s, 4, "linear") for s in steps], [2.0, 4.0, 6.0, 8.0])
  # diffusers form ramps the excess over 1: 1 + 8 * (k + 1) / 4
  np.testing.assert_allclose([g.ramped_scale(9.0, s, 4, "linear", form="diffusers") for s in steps],
                             [3.0, 5.0, 7.0, 9.0])
  # the two forms give the same guided logits at every step
  for s in steps:
    np.testing.assert_allclose(g.cfg(COND, UNCOND, g.ramped_scale(8.0, s, 4, "linear"), "muse"),
                               g.cfg(COND, UNCOND, g.ramped_scale(9.0, s, 4, "linear", "diffusers"), "diffusers"),
                               rtol=1e-6)
  with pytest.raises(ValueError):
    g.ramped_scale(1.0, 0, 4, "cosine")


def test_ramped_scale_traced_step():
  out = jax.jit(lambda s: g.ramped_scale(6.0, s, 3, "linear"))(jnp.int32(1))
  np.testing.assert_allclose(out, 4.0)


def test_styledrop():
  l_c_style = np.array([2.0, 0.0, 1.0])
  l_c_base = np.array([1.0, 1.0, 1.0])
  l_u_base = np.array([0.0, 2.0, 1.0])
  # style + 2*(style - base_c) + 5*(base_c - base_u)
  # = [2, 0, 1] + [2, -2, 0] + [5, -5, 0] = [9, -7, 1]
  np.testing.assert_allclose(g.styledrop(l_c_style, l_c_base, l_u_base, 2.0, 5.0), [9.0, -7.0, 1.0])
  # lambda_a = lambda_b = 0 leaves the style model's logits
  np.testing.assert_allclose(g.styledrop(l_c_style, l_c_base, l_u_base, 0.0, 0.0), l_c_style)


def test_mix():
  np.testing.assert_allclose(g.mix(np.array([4.0, 0.0]), np.array([0.0, 2.0]), 0.25), [1.0, 1.5])
  np.testing.assert_allclose(g.mix(np.array([4.0, 0.0]), np.array([0.0, 2.0]), 1.0), [4.0, 0.0])


def test_stack_and_split_cond_uncond_pytrees():
  cond = {"emb": np.ones((2, 3, 4)), "mask": np.ones((2, 3), bool)}
  uncond = {"emb": np.zeros((2, 3, 4)), "mask": np.zeros((2, 3), bool)}
  both = g.stack_cond_uncond(cond, uncond)
  assert both["emb"].shape == (4, 3, 4) and both["mask"].shape == (4, 3)
  np.testing.assert_array_equal(both["emb"][:2], 1.0)  # cond first
  np.testing.assert_array_equal(both["emb"][2:], 0.0)
  c, u = g.split_cond_uncond(both)
  np.testing.assert_array_equal(c["mask"], cond["mask"])
  np.testing.assert_array_equal(u["emb"], uncond["emb"])


def test_one_batched_call_serves_cfg():
  w = np.array([[1.0, -1.0], [0.5, 2.0]])

  def model(x):  # any per-row model
    return x @ w

  cond, uncond = np.array([[1.0, 2.0]]), np.array([[0.0, 1.0]])
  lc, lu = g.split_cond_uncond(model(g.stack_cond_uncond(cond, uncond)))
  np.testing.assert_allclose(g.cfg(lc, lu, 3.0, "diffusers"), g.cfg(model(cond), model(uncond), 3.0, "diffusers"))


def test_split_passes_three_and_bad_split():
  x = jnp.arange(6)[:, None]
  a, b, c = g.split_passes(x, 3)
  np.testing.assert_array_equal(np.concatenate([a, b, c]), x)
  np.testing.assert_array_equal(g.stack_passes(a, b, c), x)
  with pytest.raises(ValueError, match="does not split"):
    g.split_passes(jnp.arange(5)[:, None], 2)
