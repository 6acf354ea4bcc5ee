"""ShapeStyle world: determinism, labels vs captions, styles, masks; TFDS without TensorFlow; grain pipelines."""
import importlib.util
import json
import sys
from collections import deque

import numpy as np
import pytest

from stylejax.data import pipeline
from stylejax.data import shapestyle as ss


def _components(mask: np.ndarray) -> int:
  """8-connected components of a binary mask."""
  seen = np.zeros(mask.shape, bool)
  h, w = mask.shape
  count = 0
  for y0, x0 in zip(*np.nonzero(mask)):
    if seen[y0, x0]:
      continue
    count += 1
    seen[y0, x0] = True
    queue = deque([(y0, x0)])
    while queue:
      y, x = queue.popleft()
      for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
          v, u = y + dy, x + dx
          if 0 <= v < h and 0 <= u < w and mask[v, u] and not seen[v, u]:
            seen[v, u] = True
            queue.append((v, u))
  return count


def test_vocabulary_and_named_styles():
  assert len(ss.SHAPES) >= 8 and len(ss.COLORS) >= 8 and ss.COUNT_WORDS == ("one", "two", "three")
  assert len(ss.NAMED_STYLES) >= 24
  assert [s.id for s in ss.NAMED_STYLES] == list(range(len(ss.NAMED_STYLES)))
  descriptors = [s.descriptor for s in ss.NAMED_STYLES]
  assert len(set(descriptors)) == len(descriptors) and all(descriptors)
  content_words = set(ss.COLORS) | set(ss.SHAPES) | set(ss.SHAPE_PLURALS) | set(ss.COUNT_WORDS)
  assert not any(set(d.split()) & content_words for d in descriptors), "descriptors must not name content"
  assert ss.PLAIN_STYLE.id == ss.PLAIN_STYLE_ID == -1 and ss.PLAIN_STYLE.descriptor == ""
  vecs = np.stack([s.vector() for s in ss.NAMED_STYLES + (ss.PLAIN_STYLE,)])
  assert vecs.shape == (len(ss.NAMED_STYLES) + 1, ss.STYLE_PARAM_DIM) == (vecs.shape[0], len(ss.STYLE_PARAM_NAMES))
  dist = np.linalg.norm(vecs[:, None] - vecs[None], axis=-1) + np.eye(len(vecs)) * 9
  assert dist.min() > 0.3, "named styles (and plain) must differ in their parameters"
  assert ss.style_class(-1) == len(ss.NAMED_STYLES) and ss.style_class(3) == 3
  with pytest.raises(ValueError):
    ss.style_class(ss.HELDOUT_ID_OFFSET)


def test_styles_render_differently():
  content = ss.Content(shape=3, color=0, count=2)
  imgs = [ss.render(content, s, 32, rng=7)[0] for s in ss.NAMED_STYLES + (ss.PLAIN_STYLE,)]
  flat = np.stack(imgs).reshape(len(imgs), -1).astype(np.int32)
  diff = np.abs(flat[:, None] - flat[None]).mean(-1) + np.eye(len(imgs)) * 999
  assert diff.min() > 2.0, "two styles render (almost) the same image"


def test_heldout_styles_disjoint_from_named():
  named = np.stack([s.vector() for s in ss.NAMED_STYLES + (ss.PLAIN_STYLE,)])
  named_desc = {s.descriptor for s in ss.NAMED_STYLES}
  held = [ss.heldout_style(k) for k in range(24)]
  for k, h in enumerate(held):
    assert h.id == ss.HELDOUT_ID_OFFSET + k and h.name == f"heldout-{k}"
    assert h.descriptor and h.descriptor not in named_desc
    assert np.linalg.norm(named - h.vector(), axis=-1).min() >= 0.5
  assert ss.heldout_style(5) == held[5] and ss.get_style(ss.HELDOUT_ID_OFFSET + 5) == held[5]
  assert ss.get_style("heldout-5") == held[5]
  assert len({tuple(h.vector()) for h in held}) == len(held)
  assert ss.heldout_style(5, seed=1) != held[5]


def test_deterministic_by_seed_and_index():
  a = ss.ShapeStyleSource("train", image_size=32, seed=0, num_examples=100)
  b = ss.ShapeStyleSource("train", image_size=32, seed=0, num_examples=100)
  for i in (0, 1, 57, 99):
    ea, eb = a[i], b[i]
    assert ea.keys() == eb.keys()
    for k in ea:
      np.testing.assert_array_equal(ea[k], eb[k])
    assert ea["image"].tobytes() == eb["image"].tobytes()
  assert a[0]["image"].tobytes() != a[1]["image"].tobytes()
  assert a[-1]["index"] == 99
  test = ss.ShapeStyleSource("test", image_size=32, seed=0, num_examples=100)
  other_seed = ss.ShapeStyleSource("train", image_size=32, seed=1, num_examples=100)
  assert all(a[i]["image"].tobytes() != test[i]["image"].tobytes() for i in range(5))
  assert all(a[i]["image"].tobytes() != other_seed[i]["image"].tobytes() for i in range(5))
  img1, m1 = ss.render((0, 1, 2), "pencil sketch", 32, rng=3)
  img2, m2 = ss.render((0, 1, 2), "pencil sketch", 32, rng=np.random.default_rng(3))
  assert img1.tobytes() == img2.tobytes() and m1.tobytes() == m2.tobytes()
  with pytest.raises(IndexError):
    a[100]


def test_labels_match_captions():
  src = ss.ShapeStyleSource("train", image_size=32, seed=3, num_examples=1000)
  seen_plain = seen_styled = False
  for i in range(80):
    ex = src[i]
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert ex["mask"].shape == (32, 32) and ex["mask"].dtype == np.uint8
    caption, content_caption = str(ex["caption"]), str(ex["content_caption"])
    content, descriptor = ss.parse_caption(caption)
    assert (content.shape, content.color, content.count) == (ex["shape"], ex["color"], ex["count"])
    assert content_caption == content.caption
    words = content_caption.split()
    assert words[0] == ss.COUNT_WORDS[ex["count"] - 1] and words[1] == ss.COLORS[ex["color"]]
    assert words[2] == (ss.SHAPES if ex["count"] == 1 else ss.SHAPE_PLURALS)[ex["shape"]]
    style = ss.get_style(int(ex["style_id"]))
    assert descriptor == str(ex["style_descriptor"]) == style.descriptor
    np.testing.assert_array_equal(ex["style_params"], style.vector())
    if style.is_plain:
      seen_plain = True
      assert caption == content_caption
    else:
      seen_styled = True
      assert caption == f"{content_caption} in {style.descriptor} style"
  assert seen_plain and seen_styled
  for c in ss.all_contents():
    assert ss.parse_caption(c.caption) == (c, "")
  assert ss.parse_caption("seven red stars")[0] is None


def test_mask_nonempty_and_components_equal_count():
  styles = [ss.PLAIN_STYLE, ss.get_style("neon outline"), ss.get_style("crayon scribble"), ss.heldout_style(0)]
  rng = np.random.default_rng(0)
  for size in (32, 64):
    for shape in range(len(ss.SHAPES)):
      for count in (1, 2, 3):
        style = styles[(shape + count) % len(styles)]
        img, mask = ss.render(ss.Content(shape, int(rng.integers(len(ss.COLORS))), count), style, size, rng)
        assert img.shape == (size, size, 3) and set(np.unique(mask)) <= {0, 1}
        assert mask.sum() > count * 4, (ss.SHAPES[shape], count)
        assert _components(mask) == count, (ss.SHAPES[shape], count, style.name)


def test_mask_matches_plain_pixels():
  for color in range(len(ss.COLORS)):
    img, mask = ss.render(ss.Content(0, color, 1), ss.PLAIN_STYLE, 64, rng=color)
    x = img.astype(np.float32) / 255
    inside, outside = x[mask.astype(bool)], x[~mask.astype(bool)]
    assert np.abs(outside - 1).mean() < 0.02, "plain background is white"
    assert np.abs(inside - 1).mean() > 0.15, "shape pixels differ from the background"


def test_source_style_modes_and_make_example():
  plain = ss.ShapeStyleSource(styles="plain", image_size=24, num_examples=10)
  assert all(plain[i]["style_id"] == -1 and plain[i]["caption"] == plain[i]["content_caption"] for i in range(5))
  held = ss.ShapeStyleSource(styles="heldout", image_size=24, num_examples=10, num_heldout_styles=4)
  ids = {int(held[i]["style_id"]) for i in range(10)}
  assert ids <= set(range(ss.HELDOUT_ID_OFFSET, ss.HELDOUT_ID_OFFSET + 4))
  one = ss.ShapeStyleSource(styles="pixel art", image_size=24, num_examples=4, image_dtype="float32")
  ex = one[0]
  assert ex["style_id"] == ss.get_style("pixel art").id and ex["image"].dtype == np.float32
  assert 0 <= ex["image"].min() and ex["image"].max() <= 1
  mostly_plain = ss.ShapeStyleSource(image_size=24, num_examples=40, plain_fraction=1.0)
  assert all(mostly_plain[i]["style_id"] == -1 for i in range(10))
  ex = ss.make_example("two red stars", "neon outline", image_size=32, rng=0)
  assert str(ex["caption"]) == "two red stars in neon outline style"
  assert (ex["shape"], ex["color"], ex["count"]) == (ss.SHAPES.index("star"), ss.COLORS.index("red"), 2)
  assert _components(ex["mask"]) == 2
  ex2 = ss.make_example(("star", "red", 2), ss.get_style("neon outline").id, image_size=32, rng=0)
  assert ex2["image"].tobytes() == ex["image"].tobytes()
  with pytest.raises(ValueError):
    ss.ShapeStyleSource(split="validation")
  with pytest.raises(ValueError):
    ss.ShapeStyleSource(styles="no such style")
  with pytest.raises(ValueError):
    ss.make_example("two red blobs", "plain")


def test_source_mixes_fresh_training_styles():
  """random_style_fraction draws that share in fresh held-out-family styles on the consumer's own stream."""
  kw = dict(image_size=24, num_examples=200, random_style_fraction=0.5, random_style_stream=77)
  mixed, again = ss.ShapeStyleSource(**kw), ss.ShapeStyleSource(**kw)
  fresh = [i for i in range(60) if int(mixed[i]["style_id"]) >= ss.HELDOUT_ID_OFFSET]
  assert 15 < len(fresh) < 45
  assert all(mixed[i]["image"].tobytes() == again[i]["image"].tobytes() for i in range(10))
  plain = ss.ShapeStyleSource(image_size=24, num_examples=200)
  assert all(mixed[i]["image"].tobytes() == plain[i]["image"].tobytes() for i in range(60) if i not in fresh)
  eval_styles = {tuple(np.asarray(ss.heldout_style(k).vector(), np.float32)) for k in range(16)}
  assert tuple(ss.make_example("two red stars", ss.heldout_style(3), 24, rng=0)["style_params"]) in eval_styles
  params = {tuple(mixed[i]["style_params"]) for i in fresh}
  assert len(params) == len(fresh) and not params & eval_styles  # a new style each, never an eval one
  other = ss.ShapeStyleSource(**dict(kw, random_style_stream=78))
  assert other[fresh[0]]["image"].tobytes() != mixed[fresh[0]]["image"].tobytes()
  with pytest.raises(ValueError, match="random_style_stream"):
    ss.ShapeStyleSource(random_style_fraction=0.5)
  with pytest.raises(ValueError, match="random_style_fraction"):
    ss.ShapeStyleSource(random_style_fraction=1.5, random_style_stream=1)
  with pytest.raises(ValueError, match="heldout_prompts"):
    ss.ShapeStyleSource("heldout_prompts", heldout_prompts=0.1, random_style_fraction=0.5, random_style_stream=1)


def test_tfds_builder_without_tensorflow(tmp_path):
  assert importlib.util.find_spec("tensorflow") is None, "these tests check the TF-free path"
  import tensorflow_datasets as tfds
  from stylejax.data import shapestyle_tfds

  builder = shapestyle_tfds.build(str(tmp_path), "tiny", name="test_tiny", num_train=6, num_test=3)
  assert builder.info.splits["train"].num_examples == 6
  train = tfds.data_source("shape_style/test_tiny", data_dir=str(tmp_path), split="train")
  test = shapestyle_tfds.load_source(str(tmp_path), "test", builder.builder_config)
  assert len(train) == 6 and len(test) == 3
  ref = ss.ShapeStyleSource("train", image_size=32, seed=0, num_examples=6)
  for i in range(6):  # shuffling is disabled: file order is index order
    ex, want = train[i], ref[i]
    assert ex["image"].tobytes() == want["image"].tobytes() and ex["mask"].tobytes() == want["mask"].tobytes()
    assert ex["caption"].decode() == str(want["caption"]) and int(ex["count"]) == int(want["count"])
    np.testing.assert_array_equal(ex["style_params"], want["style_params"])
  batch = next(pipeline.make_pipeline(train, 4, seed=0))
  assert batch["image"].shape == (4, 32, 32, 3) and len(batch["caption"]) == 4
  assert "tensorflow" not in sys.modules


def _source(n=40):
  return ss.ShapeStyleSource("train", image_size=24, seed=0, num_examples=n)


def test_pipeline_state_restore():
  it = pipeline.make_pipeline(_source(), 4, seed=1)
  for _ in range(3):
    next(it)
  state = it.get_state()
  json.dumps(state)  # the trainer checkpoints it as JSON
  want = [next(it) for _ in range(2)]
  fresh = pipeline.make_pipeline(_source(), 4, seed=1)
  fresh.set_state(state)
  got = [next(fresh) for _ in range(2)]
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["image"], b["image"])
  other = pipeline.make_pipeline(_source(), 4, seed=2)
  assert not all(np.array_equal(next(other)["index"], w["index"]) for w in [*want, *got][:1] * 3)


def test_pipeline_per_host_shards():
  single = pipeline.make_pipeline(_source(), 8, seed=0)
  hosts = [pipeline.make_pipeline(_source(), 8, seed=0, process_index=p, process_count=4) for p in range(4)]
  for _ in range(6):  # crosses an epoch boundary (40 examples / 8 per step)
    want = next(single)["index"]
    parts = [next(h)["index"] for h in hosts]
    assert all(len(p) == 2 for p in parts)
    got = np.concatenate(parts)
    assert len(set(got.tolist())) == 8, "host shards overlap"
    assert sorted(got.tolist()) == sorted(want.tolist()), "host shards do not cover the global batch"


def test_pipeline_finite_epochs_and_options():
  seen = []
  for p in range(2):
    it = pipeline.make_pipeline(_source(24), 6, seed=0, process_index=p, process_count=2, num_epochs=1)
    seen += [int(i) for b in it for i in b["index"]]
  assert sorted(seen) == list(range(24)), "one epoch visits every example exactly once"
  it = pipeline.make_pipeline(_source(), 4, shuffle=False, numeric_only=True, num_threads=0)
  b = next(it)
  assert "caption" not in b and b["image"].shape == (4, 24, 24, 3)
  np.testing.assert_array_equal(b["index"], [0, 1, 2, 3])
  with pytest.raises(ValueError, match="multiple of 3"):
    pipeline.make_pipeline(_source(), 8, process_count=3)
  with pytest.raises(ValueError, match="one global batch"):
    pipeline.make_pipeline(_source(4), 8, num_epochs=1)
