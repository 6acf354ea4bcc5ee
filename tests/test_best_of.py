"""Best of N by CLIP (stylejax/sample/best_of.py): which candidate is kept, and the order of the outputs."""
import numpy as np
import pytest

from stylejax.sample import best_of

from _testutil import BrightnessClip


def _images(values):
  return np.asarray(values, np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)


def test_select_keeps_each_groups_brightest_and_embeds_each_text_once():
  clip = BrightnessClip()
  images = _images([10, 200, 30, 90, 80, 70])  # two groups of three
  np.testing.assert_array_equal(best_of.select(images, ["a"] * 3 + ["b"] * 3, 3, clip), [1, 3])
  assert clip.texts == [["a", "b"]]
  np.testing.assert_array_equal(best_of.select(images, ["a"] * 6, 1, None), np.arange(6))  # n = 1: no CLIP


def test_generate_draws_n_per_image_and_returns_the_picks_prompt_major():
  calls = []

  def draw(prompts, k):  # candidate value: 100 * prompt + index within the prompt's k rows
    calls.append((list(prompts), k))
    return _images([100 * p + j for p in range(len(prompts)) for j in range(k)])
  # per prompt, 2 images x 3 candidates; the brightest of each consecutive 3 is the last one
  out = best_of.generate(draw, ["x", "y"], num=2, n=3, clip=BrightnessClip())
  assert calls == [(["x", "y"], 6)]
  np.testing.assert_array_equal(out[:, 0, 0, 0], [2, 5, 102, 105])
  np.testing.assert_array_equal(best_of.generate(draw, ["x"], num=2, n=1, clip=None)[:, 0, 0, 0], [0, 1])


def _no_sampling(prompts, k):
  raise AssertionError("sampled")


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_bad_candidate_counts_fail_before_any_sampling(bad):
  with pytest.raises(best_of.BestOfError, match="whole number >= 1"):
    best_of.generate(_no_sampling, ["x"], 1, bad, BrightnessClip())


def test_class_id_prompts_and_a_run_without_a_clip_fail_before_any_sampling():
  with pytest.raises(best_of.BestOfError, match="class-id prompts"):
    best_of.generate(_no_sampling, [17], 1, 2, BrightnessClip())
  with pytest.raises(best_of.BestOfError, match="pass best_of_clip"):
    best_of.generate(_no_sampling, ["x"], 1, 2, None)


def test_best_per_group_skips_groups_without_a_finite_score():
  score = np.asarray([0.1, 0.5, -np.inf, -np.inf, 0.3])
  assert best_of.best_per_group(np.asarray([0, 0, 1, 1, 2]), score) == [1, 4]
