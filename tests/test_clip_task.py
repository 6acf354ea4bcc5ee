"""The ShapeStyle CLIP: shipped tokenizer, captioned source, multi-positive loss, learning, trainer."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stylejax import config as config_lib
from stylejax.data import shapestyle as ss
from stylejax.models import clip, clip_task
from stylejax.train import trainer
from _testutil import launch_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def clip_config(**overrides):
  return config_lib.load_config(os.path.join(REPO, "configs/shapestyle.py:clip,runlocal"), overrides)


# ------------------------------------------------------------------------------------ tokenizer
def test_shipped_tokenizer_is_the_reproducible_build(tmp_path):
  tok = clip_task.default_tokenizer()
  assert tok.vocab_size == clip_task.TOKENIZER_VOCAB_SIZE and tok.max_len == clip_task.TOKENIZER_MAX_LEN
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
  clip_task.build_tokenizer(str(tmp_path / "bpe.json"))
  with open(tmp_path / "bpe.json") as f, open(clip_task.default_tokenizer_path()) as g:
    rebuilt, shipped = json.load(f)["model"], json.load(g)["model"]
  assert rebuilt["vocab"] == shipped["vocab"] and rebuilt["merges"] == shipped["merges"]


def test_tokenizer_roundtrips_world_and_unseen_descriptors():
  tok = clip_task.default_tokenizer()
  corpus = clip_task.tokenizer_corpus()
  assert len(corpus) == len(ss.all_contents()) * (len(ss.NAMED_STYLES) + 1)
  ids, mask = tok.encode(corpus)
  assert tok.decode(ids) == corpus
  assert mask.sum(1).max() <= 11  # merges keep in-world captions short (mostly one token per word)
  heldout = [ss.caption_for(ss.all_contents()[k], ss.heldout_style(k)) for k in range(40)]
  unseen = heldout + ["two red stars in ultramarine sgraffito style", "Three BLUE rings in Ünïcode ☀ style"]
  ids, mask = tok.encode(unseen)
  assert tok.decode(ids) == [s.lower() for s in unseen]  # byte-level: nothing unknown, nothing lost
  lengths = mask.sum(1)
  assert lengths.max() < tok.max_len  # held-out descriptors fit without truncation
  np.testing.assert_array_equal(ids[np.arange(len(unseen)), lengths - 1], tok.eos_id)
  assert ids.max() < tok.vocab_size


# ------------------------------------------------------------------------------------ loss, data
def test_multi_positive_loss():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(5, 5)) * 3, jnp.float32)
  np.testing.assert_allclose(clip_task.multi_positive_clip_loss(logits, jnp.eye(5, dtype=bool)),
                             clip.clip_loss(logits), rtol=1e-6)
  # Texts 0 and 1 are the same caption: scoring both images equally is optimal (zero gradient),
  # where plain CLIP loss would push each text away from the other's image.
  same = np.eye(5, dtype=bool)
  same[0, 1] = same[1, 0] = True
  tied = jnp.asarray(np.where(same, 30.0, -30.0), jnp.float32)
  grad = jax.grad(clip_task.multi_positive_clip_loss)(tied, jnp.asarray(same))
  assert float(jnp.abs(grad).max()) < 1e-6
  assert float(jnp.abs(jax.grad(clip.clip_loss)(tied)).max()) > 0.01


def test_captioned_source():
  tok = clip_task.default_tokenizer()
  src = clip_task.CaptionedShapeStyleSource(tok, image_size=32, num_examples=400, plain_fraction=0.25,
                                            content_caption_fraction=0.5)
  images = src.images
  content_only, styled = 0, 0
  for i in range(200):
    ex, meta = src[i], images[i]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (32, 32, 3)
    assert ex["ids"].dtype == np.int32 and ex["ids"].shape == ex["mask"].shape == (tok.max_len,)
    np.testing.assert_array_equal(ex["image"], meta["image"])
    caption = tok.decode(ex["ids"][None])[0]
    content, descriptor = ss.parse_caption(caption)
    assert content == ss.Content(int(meta["shape"]), int(meta["color"]), int(meta["count"]))
    assert descriptor in ("", str(meta["style_descriptor"]))  # content-only or the true style
    if meta["style_id"] != ss.PLAIN_STYLE_ID:
      styled += 1
      content_only += descriptor == ""
  assert 0.3 < content_only / styled < 0.7
  np.testing.assert_array_equal(src[7]["ids"], clip_task.CaptionedShapeStyleSource(
      tok, image_size=32, num_examples=400, plain_fraction=0.25, content_caption_fraction=0.5)[7]["ids"])
  with pytest.raises(ValueError, match="content_caption_fraction"):
    clip_task.CaptionedShapeStyleSource(tok, content_caption_fraction=1.5)


def test_hard_negative_captions_and_loss():
  tok = clip_task.default_tokenizer()
  for n in (True, 3, len(ss.SHAPES) - 1):
    src = clip_task.CaptionedShapeStyleSource(tok, image_size=32, num_examples=50, hard_negatives=n)
    for i in range(10):
      ex = src[i]
      assert ex["negative_ids"].shape == (int(n), len(ex["ids"]))
      pos, *negs = tok.decode(np.concatenate([ex["ids"][None], ex["negative_ids"]]))
      (c_pos, d_pos) = ss.parse_caption(pos)
      parsed = [ss.parse_caption(neg) for neg in negs]
      assert len({c.shape for c, _ in parsed} | {c_pos.shape}) == int(n) + 1  # distinct other shapes
      for c_neg, d_neg in parsed:  # only the shape word differs
        assert d_pos == d_neg and (c_neg.color, c_neg.count) == (c_pos.color, c_pos.count)
  with pytest.raises(ValueError, match="hard_negatives"):
    clip_task.CaptionedShapeStyleSource(tok, hard_negatives=len(ss.SHAPES))
  # A hard negative joins the image->text softmax: scoring it above the true caption raises the loss
  # by exactly the image-side cross-entropy term, and one that equals the caption counts as positive.
  logits = jnp.asarray(np.where(np.eye(3), 5.0, 0.0), jnp.float32)
  base = clip_task.multi_positive_clip_loss(logits, jnp.eye(3, dtype=bool))
  neg = jnp.full((3, 3), 9.0)
  no = jnp.zeros((3, 3), bool)
  with_neg = clip_task.multi_positive_clip_loss(logits, jnp.eye(3, dtype=bool), neg, no)
  per_image = jnp.concatenate([logits.T, neg], 1)
  expected = 0.5 * (-jnp.mean(jax.nn.log_softmax(logits, -1).diagonal())
                    - jnp.mean(jax.nn.log_softmax(per_image, -1)[:, :3].diagonal()))
  np.testing.assert_allclose(with_neg, expected, rtol=1e-6)
  assert float(with_neg) > float(base) + 1.0
  all_pos = clip_task.multi_positive_clip_loss(logits, jnp.eye(3, dtype=bool), neg, jnp.eye(3, dtype=bool))
  assert float(all_pos) < float(with_neg)


def test_random_style_images_get_content_captions_and_never_an_eval_style():
  tok = clip_task.default_tokenizer()
  kw = dict(image_size=32, num_examples=40)
  off = clip_task.CaptionedShapeStyleSource(tok, **kw)
  for i in range(5):  # fraction 0 leaves the named/plain stream untouched
    np.testing.assert_array_equal(off[i]["image"], off.images[i]["image"])
  src = clip_task.CaptionedShapeStyleSource(tok, random_style_fraction=1.0, **kw)
  evals = {tuple(ss.heldout_style(k).vector()) for k in range(40)}
  for i in range(40):
    ex = src.example(i)
    assert int(ex["style_id"]) >= ss.HELDOUT_ID_OFFSET and tuple(ex["style_params"]) not in evals
    assert src.caption(ex, i) == str(ex["content_caption"]) != str(ex["caption"])
    assert tok.decode(src[i]["ids"][None])[0] == str(ex["content_caption"])
  np.testing.assert_array_equal(src[-1]["image"], src[39]["image"])  # deterministic, negative index
  assert len({tuple(src.example(i)["style_params"]) for i in range(40)}) == 40  # a fresh style each
  half = clip_task.CaptionedShapeStyleSource(tok, random_style_fraction=0.5, **kw)
  assert 10 < sum(int(half.example(i)["style_id"]) >= ss.HELDOUT_ID_OFFSET for i in range(40)) < 30
  with pytest.raises(ValueError, match="random_style_fraction"):
    clip_task.CaptionedShapeStyleSource(tok, random_style_fraction=1.5)


# ------------------------------------------------------------------------------------ learning
def test_contrastive_training_learns_in_batch_retrieval():
  """The runlocal CLIP memorises a fixed batch of 16 pairs: retrieval goes from chance (1/16) to most."""
  task = clip_task.CLIPTask(clip_config())
  src = task.source("train")
  batch = {k: np.stack([src[i][k] for i in range(16)]) for k in ("image", "ids", "mask")}
  assert len({tuple(r) for r in batch["ids"]}) == 16  # distinct captions: chance is exactly 1/16
  params = jax.jit(lambda r: nn.unbox(task.init(r)))(jax.random.key(0))
  steps = 80
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(optax.cosine_decay_schedule(3e-3, steps)))

  @jax.jit
  def step(params, opt_state):
    (loss, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(params, batch, jax.random.key(0))
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  opt_state = tx.init(params)
  _, _, first_loss, first = step(params, opt_state)
  for _ in range(steps):
    params, opt_state, loss, aux = step(params, opt_state)
  assert float(first["retrieval_i2t_top1"]) <= 0.25
  assert float(loss) < float(first_loss) - 1.0
  assert float(aux["retrieval_i2t_top1"]) >= 0.5 and float(aux["retrieval_t2i_top1"]) >= 0.5  # 8x chance


def test_clip_task_trains_sharded_under_the_trainer(tmp_path):
  config = clip_config(**{"mesh.data": "2", "mesh.fsdp": "2", "mesh.tensor": "2", "total_steps": "2"})
  summary = trainer.train(config, str(tmp_path))
  assert summary["final_step"] == 2
  metrics = summary["last_metrics"]
  assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["retrieval_i2t_top1"] <= 1.0
  assert metrics["tflops_per_s"] > 0  # analytic flops_per_example
  params = summary["state"]["params"]
  fc1 = params["text_model"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"]
  assert fc1.sharding.spec == jax.P("fsdp", "tensor")
  assert params["text_model"]["embeddings"]["token_embedding"]["embedding"].shape[0] % 128 == 0
  # The trained tower is usable downstream (CLIP-T, Muse text conditioning).
  model, host_params, tok = clip_task.clip_from_workdir(str(tmp_path))
  ids, mask = tok.encode(["two red stars", "two red stars in neon outline style"])
  feats = model.apply({"params": host_params}, jnp.asarray(ids), jnp.asarray(mask), method="get_text_features")
  assert feats.shape == (2, config.model.projection_dim) and np.isfinite(np.asarray(feats)).all()


def test_shape_probe_separates_what_the_features_encode():
  mod = launch_module("clip_shape_probe")
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 400)
  informative = np.eye(3)[y] * 3 + rng.normal(size=(400, 3)) * 0.3  # label in the features
  noise = rng.normal(size=(400, 3))                                    # label absent
  assert mod.probe_accuracy(informative[:300], y[:300], informative[300:], y[300:], 3, steps=200) > 0.95
  assert mod.probe_accuracy(noise[:300], y[:300], noise[300:], y[300:], 3, steps=200) < 0.55


def test_zero_shot_hits_picks_the_caption_of_the_true_shape():
  from stylejax.eval import shapestyle_eval
  images, labels, _ = shapestyle_eval._examples(12, [ss.PLAIN_STYLE], 0, image_size=32)
  eye = np.eye(len(ss.SHAPES))

  class Embedder:  # images embed as their (shifted) shape; the k-th of each image's 9 captions as shape k
    def __init__(self, shift):
      self.shift = shift

    def embed_images(self, x):
      return eye[(labels["shape"] + self.shift) % len(ss.SHAPES)]

    def embed_texts(self, captions):
      assert len(captions) == len(images) * len(ss.SHAPES)
      return eye[np.arange(len(captions)) % len(ss.SHAPES)]

  assert shapestyle_eval.zero_shot_hits(Embedder(0), images, labels)[0].all()
  assert not shapestyle_eval.zero_shot_hits(Embedder(1), images, labels)[0].any()
