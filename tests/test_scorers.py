"""ShapeStyle scorers: shapes, unit-norm style embeddings, the contrastive loss, learning, shipping."""
import sys
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import shapestyle as scorers_config  # noqa: E402
from stylejax import parallel  # noqa: E402
from stylejax.data import shapestyle as ss  # noqa: E402
from stylejax.models import scorers as S  # noqa: E402

TINY = dict(widths=[8, 16], hidden=16, embed_dim=8)


def _images(n, size=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_output_shapes_and_unit_norm():
  x = _images(3)
  clf = S.content_classifier(TINY)
  p = jax.jit(clf.init)(jax.random.key(0, impl="rbg"), x)["params"]
  apply = jax.jit(lambda p, x: clf.apply({"params": p}, x))
  logits, aux = apply(p, x)
  assert aux == {}
  assert {k: v.shape for k, v in logits.items()} == {"shape": (3, 9), "color": (3, 8), "count": (3, 3)}
  # uint8 [0, 255] and float [0, 1] are the same image.
  again, _ = apply(p, x.astype(np.float32) / 255.0)
  np.testing.assert_allclose(again["shape"], logits["shape"], atol=1e-5)

  enc = S.style_encoder(TINY)
  q = jax.jit(enc.init)(jax.random.key(1, impl="rbg"), x)["params"]
  for size in (32, 64):  # fully convolutional: any size
    emb, _ = jax.jit(lambda q, x: enc.apply({"params": q}, x))(q, _images(5, size))
    assert emb.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)


def test_contrastive_loss_prefers_matching_pairs():
  a = jnp.eye(4)
  labels = jnp.arange(4)
  matched, aux = S.supervised_contrastive_loss(a, a, labels, temperature=0.1)
  shuffled, aux_s = S.supervised_contrastive_loss(a, a[jnp.array([1, 2, 3, 0])], labels, temperature=0.1)
  assert float(matched) < float(shuffled)
  assert float(aux["retrieval_top1"]) == 1.0 and float(aux_s["retrieval_top1"]) == 0.0
  # Two examples sharing a label are positives of each other: grouping them by label lowers the loss.
  z = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
  grouped, _ = S.supervised_contrastive_loss(z, z, jnp.array([0, 0, 1, 1]), 0.1)
  crossed, _ = S.supervised_contrastive_loss(z, z, jnp.array([0, 1, 0, 1]), 0.1)
  assert float(grouped) < float(crossed)


def test_sources_fields_and_pairs():
  src = S.ContentSource("train", image_size=32, num_examples=50, random_style_fraction=0.5)
  ex = src[3]
  assert set(ex) == {"image", "shape", "color", "count", "style_id"}
  assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
  assert 1 <= int(ex["count"]) <= 3
  np.testing.assert_array_equal(src[3]["image"], ex["image"])  # deterministic
  labels = [int(src[i]["style_id"]) for i in range(50)]
  assert any(l >= S.RANDOM_STYLE_LABEL_OFFSET for l in labels) and any(l < len(ss.NAMED_STYLES) for l in labels)
  test_src = S.ContentSource("test", image_size=32, num_examples=50)
  assert not np.array_equal(test_src[3]["image"], ex["image"])

  pairs = S.StylePairSource("train", image_size=32, num_examples=20, random_style_fraction=1.0)
  ids = set()
  for i in range(4):
    p = pairs[i]
    assert set(p) == {"image_a", "image_b", "style_id"}
    assert p["image_a"].shape == p["image_b"].shape == (32, 32, 3)
    assert not np.array_equal(p["image_a"], p["image_b"])
    ids.add(int(p["style_id"]))
  assert len(ids) == 4  # every fresh random style is its own class
  named = S.StylePairSource("train", image_size=32, num_examples=20, random_style_fraction=0.0)
  assert all(-1 <= int(named[i]["style_id"]) < len(ss.NAMED_STYLES) for i in range(5))


def test_content_loss_decreases_on_a_fixed_batch():
  cfg = scorers_config.get_config("content,runlocal")
  task = S.ContentClassifierTask(cfg)
  src = task.source("train")
  exs = [src[i] for i in range(16)]
  batch = {k: jnp.asarray(np.stack([e[k] for e in exs])) for k in exs[0]}
  params = parallel.unbox(jax.jit(task.init)(jax.random.key(0, impl="rbg")))
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(p, o):
    (l, aux), g = jax.value_and_grad(task.loss, has_aux=True)(p, batch, jax.random.key(0, impl="rbg"))
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, l

  losses = []
  for _ in range(40):
    params, opt, l = step(params, opt)
    losses.append(float(l))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.7 * losses[0], losses


def test_style_task_loss_runs():
  cfg = scorers_config.get_config("style,runlocal")
  task = S.StyleEncoderTask(cfg)
  src = task.source("train")
  exs = [src[i] for i in range(4)]
  batch = {k: jnp.asarray(np.stack([e[k] for e in exs])) for k in exs[0]}
  params = parallel.unbox(jax.jit(task.init)(jax.random.key(0, impl="rbg")))
  loss, aux = jax.jit(task.loss)(params, batch, jax.random.key(0, impl="rbg"))
  assert np.isfinite(float(loss)) and set(aux) == {"retrieval_top1", "pos_cos", "neg_cos"}


def test_safetensors_round_trip(tmp_path):
  x = _images(4)
  clf, enc = S.content_classifier(TINY), S.style_encoder(TINY)
  cp = parallel.unbox(jax.jit(clf.init)(jax.random.key(0, impl="rbg"), x)["params"])
  sp = parallel.unbox(jax.jit(enc.init)(jax.random.key(1, impl="rbg"), x)["params"])
  scorers = S.Scorers(content_config=dict(TINY), content_params=cp, style_config=dict(TINY), style_params=sp,
                      image_size=32)
  path = str(tmp_path / "scorers.safetensors")
  S.save_scorers(path, scorers)
  back = S.load_scorers(path)
  assert back.image_size == 32 and back.content_config["widths"] == TINY["widths"]
  for a, b in ((cp, back.content_params), (sp, back.style_params)):
    fa, fb = S.flatten_params(a), S.flatten_params(b)
    assert sorted(fa) == sorted(fb) and "trunk/stem/kernel" in fa
    for k in fa:
      np.testing.assert_array_equal(fa[k], fb[k])
  pred = back.classify(x)
  assert set(pred) == {"shape", "color", "count"} and all(1 <= c <= 3 for c in pred["count"])
  np.testing.assert_array_equal(pred["shape"], scorers.classify(x)["shape"])
  np.testing.assert_allclose(back.style_embed(x), scorers.style_embed(x), atol=1e-6)
  assert back.style_embed(_images(2, 64)).shape == (2, 8)  # other sizes are resized to 32

  only_style = S.Scorers(style_config=dict(TINY), style_params=sp, image_size=32)
  S.save_scorers(str(tmp_path / "style.safetensors"), only_style)
  loaded = S.load_scorers(str(tmp_path / "style.safetensors"))
  assert loaded.content_params is None
  with pytest.raises(ValueError, match="no content classifier"):
    loaded.classify(x)
  (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="not a readable safetensors"):
    S.load_scorers(str(tmp_path / "junk.safetensors"))


def test_config_variants():
  assert scorers_config.get_config("content,runlocal").task.endswith(":ContentClassifierTask")
  style = scorers_config.get_config("style,runlocal")
  assert style.task.endswith(":StyleEncoderTask") and style.data.image_size == 32
  assert scorers_config.get_config("style").data.image_size == 64
  with pytest.raises(ValueError, match="unknown shapestyle part"):
    scorers_config.get_config("colour")
