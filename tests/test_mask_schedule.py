"""Mask schedules (decode ratio) and training masking-rate sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stylejax.sample import mask_schedule as ms

METHODS = ["cosine", "linear", "uniform", "pow2", "pow3", "pow2.5", "log", "exp"]


@pytest.mark.parametrize("method", METHODS)
def test_schedule_endpoints_range_and_monotone(method):
  r = jnp.linspace(0.0, 1.0, 201)
  s = np.asarray(ms.schedule(r, method, total_unknown=256))
  assert np.all((s >= 0) & (s <= 1))
  assert np.all(np.diff(s) <= 1e-6), "schedule must be non-increasing"
  # exp starts at 1 - 1/N (MaskGIT's form); every other schedule starts fully masked.
  assert s[0] >= (1 - 1 / 256 - 1e-6 if method == "exp" else 1 - 1e-6)
  assert s[-1] <= 1e-6
  assert 0.0 < s[100] < 1.0  # strictly between at r = 0.5


def test_schedule_exact_values():
  r = jnp.array([0.25, 0.5])
  np.testing.assert_allclose(ms.schedule(r, "cosine"), np.cos(np.pi / 2 * np.array([0.25, 0.5])), rtol=1e-6)
  np.testing.assert_allclose(ms.schedule(r, "linear"), [0.75, 0.5], rtol=1e-6)
  np.testing.assert_allclose(ms.schedule(r, "pow2"), [1 - 0.0625, 0.75], rtol=1e-6)
  np.testing.assert_allclose(ms.schedule(r, "pow3"), [1 - 0.25**3, 0.875], rtol=1e-6)
  # log: -log2(r)/log2(N) with N = 16 -> log2 N = 4
  np.testing.assert_allclose(ms.schedule(r, "log", total_unknown=16), [2 / 4, 1 / 4], rtol=1e-6)
  # exp: 1 - N^-(1 - r) with N = 16
  np.testing.assert_allclose(ms.schedule(r, "exp", total_unknown=16), [1 - 16**-0.75, 1 - 16**-0.5], rtol=1e-6)


def test_schedule_per_row_total_unknown_broadcasts():
  out = ms.schedule(0.5, "log", total_unknown=jnp.array([4, 16, 256]))
  np.testing.assert_allclose(out, [0.5, 0.25, 0.125], rtol=1e-6)


def test_unknown_schedule_raises():
  with pytest.raises(ValueError, match="Unknown mask schedule"):
    ms.schedule(0.5, "square")
  with pytest.raises(ValueError):
    ms.schedule(0.5, "powx")


@pytest.mark.parametrize("method", ["cosine", "arccos", "uniform", "pow2"])
@pytest.mark.parametrize("min_rate", [0.0, 0.5])
def test_sample_mask_rate_range(method, min_rate):
  rates = np.asarray(ms.sample_mask_rate(jax.random.key(0), (4000,), method, min_rate))
  assert rates.shape == (4000,)
  assert rates.min() >= min_rate and rates.max() <= 1.0
  assert rates.max() > 0.95  # the upper end is reached
  assert len(np.unique(rates)) > 1000  # genuinely random, not a constant


def _arccos_cdf(x):
  return 1 - 2 / np.pi * np.arccos(x)


def test_arccos_is_truncated_arccos_distribution():
  m = 0.5
  rates = np.sort(np.asarray(ms.sample_mask_rate(jax.random.key(1), (4000,), "arccos", m)))
  xs = np.linspace(m, 1, 50)
  expected = (_arccos_cdf(xs) - _arccos_cdf(m)) / (1 - _arccos_cdf(m))
  empirical = np.searchsorted(rates, xs, side="right") / len(rates)
  assert np.max(np.abs(empirical - expected)) < 0.04
  assert np.mean(rates == m) < 0.01  # no point mass at the truncation


def test_cosine_rate_clips_at_min_rate_like_amused():
  # cos(pi/2 u) < 0.5 iff u > 2/3: a third of the mass sits exactly at min_rate.
  rates = np.asarray(ms.sample_mask_rate(jax.random.key(2), (6000,), "cosine", 0.5))
  assert abs(np.mean(rates == 0.5) - 1 / 3) < 0.03
  # Above the clip it follows the (untruncated) arccos CDF.
  assert abs(np.mean(rates <= 0.8) - _arccos_cdf(0.8)) < 0.03


def test_uniform_rate_mean():
  rates = np.asarray(ms.sample_mask_rate(jax.random.key(3), (4000,), "uniform", 0.5))
  assert abs(rates.mean() - 0.75) < 0.01


@pytest.mark.parametrize("rate, expected", [(0.5, 8), (0.0, 1), (1.0, 16), (0.01, 1), (0.3, 5)])
def test_random_mask_exact_count(rate, expected):
  mask = np.asarray(ms.random_mask(jax.random.key(0), (6, 16), rate))
  assert mask.dtype == bool and mask.shape == (6, 16)
  np.testing.assert_array_equal(mask.sum(-1), expected)  # round(0.3*16)=round(4.8)=5


def test_random_mask_per_row_rates_and_spatial_shape():
  rates = jnp.array([0.25, 0.5, 1.0])
  mask = np.asarray(ms.random_mask(jax.random.key(1), (3, 4, 4), rates))
  assert mask.shape == (3, 4, 4)
  np.testing.assert_array_equal(mask.reshape(3, -1).sum(-1), [4, 8, 16])


def test_random_mask_positions_are_random():
  mask = np.asarray(ms.random_mask(jax.random.key(4), (2000, 8), 0.25))
  # each position masked with probability 2/8
  np.testing.assert_allclose(mask.mean(0), 0.25, atol=0.04)
  assert len({row.tobytes() for row in mask}) > 20  # rows differ
