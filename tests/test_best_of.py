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


class _ShapeWordClip:
  """A stand-in CLIP over ShapeStyle captions: text [star?, circle?, 1] and image vectors looked up by brightness."""
  logit_scale = 10.0
  IMAGES = {1: [1.0, 1.0, 1.0], 2: [1.0, 0.0, 0.0]}  # 1: as close to "star" as to "circle"; 2: only "star"

  def embed_images(self, images):
    v = np.asarray([self.IMAGES[int(x)] for x in np.asarray(images)[:, 0, 0, 0]])
    return v / np.linalg.norm(v, axis=-1, keepdims=True)

  def embed_texts(self, texts):
    v = np.asarray([[float("star" in t), float("circle" in t), 1.0] for t in texts])
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_contrastive_rank_prefers_the_candidate_that_tells_the_prompts_shape_from_the_others():
  clip, images, texts = _ShapeWordClip(), _images([1, 2]), ["one red star in neon outline style"] * 2
  # cosine: image 1 is nearer the prompt (2 / sqrt(6) = 0.816 vs 1 / sqrt(2) = 0.707) though just as near "circle"
  assert best_of.select(images, texts, 2, clip).tolist() == [0]
  assert best_of.select(images, texts, 2, clip, rank="contrastive").tolist() == [1]
  # by hand, image 2: the shape word's 9 captions have logits 10 / sqrt(2) for "star" and 0 for the other 8; each
  # color and count swap keeps "star", so those words' log-probabilities are -log 8 and -log 3 for any image
  star = 10 / np.sqrt(2)
  want = star - np.log(np.exp(star) + 8) - np.log(8) - np.log(3)
  np.testing.assert_allclose(best_of.contrastive_scores(clip, images[1:], texts[:1]), [want], rtol=1e-6)


def test_contrastive_rank_needs_captions_with_swappable_words_and_a_known_rank():
  with pytest.raises(best_of.BestOfError, match="has none"):
    best_of.generate(_no_sampling, ["a watercolor cat"], 1, 2, _ShapeWordClip(), rank="contrastive")
  with pytest.raises(best_of.BestOfError, match="cosine, contrastive"):
    best_of.generate(_no_sampling, ["one red star"], 1, 2, _ShapeWordClip(), rank="clip")


def test_caption_swaps_vary_one_content_word_and_keep_the_style_phrase():
  from stylejax.data import shapestyle as ss
  (shapes, s), (colors, c), (counts, n) = ss.caption_swaps("Two red stars in neon outline style")
  assert (len(shapes), len(colors), len(counts)) == (len(ss.SHAPES), len(ss.COLORS), ss.MAX_COUNT)
  assert (shapes[s], colors[c], counts[n]) == ("two red stars in neon outline style",) * 3
  assert shapes[0] == "two red circles in neon outline style" and counts[0] == "one red star in neon outline style"
  assert ss.caption_swaps("a watercolor cat") is None
