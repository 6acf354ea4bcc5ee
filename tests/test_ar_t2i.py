"""AR text-to-image: decoder LoRA (zero-init = base, names, freezable), the CFG contexts, the loss
on image ids, and runlocal training through the trainer to well-formed, reproducible images."""
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import LOGICAL_AXIS_RULES
from stylejax import config as config_lib
from stylejax import parallel
from stylejax.models import ar, ar_t2i
from stylejax.sample import autoregressive as ar_sample
from stylejax.train import optim, trainer
from stylejax.train.task import load_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LORA = re.compile(r"lora_[ab]$")


def load(spec: str, **overrides):
  return config_lib.load_config(os.path.join(REPO, spec), {k: str(v) for k, v in overrides.items()})


def random_task_params(task, seed: int = 0, std: float = 0.3):
  """Random params at the task's init shapes (numpy: no init compile); norm scales near 1, LoRA B zero."""
  shapes = parallel.unbox(jax.eval_shape(task.init, jax.random.key(0)))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = optim.path_str(path)
    if name.endswith("lora_b"):
      return jnp.zeros(s.shape, s.dtype)
    x = rng.normal(size=s.shape).astype(np.float32) * std
    return jnp.asarray(x + 1.0 if name.endswith("scale") else x)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_lora_zero_init_equals_base_and_only_lora_params_are_new():
  base = ar.DecoderLM(vocab_size=40, hidden=16, layers=2, heads=2, kv_heads=1, head_dim=8, mlp_dim=24)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 7)), jnp.int32)
  known = {n for n, _ in LOGICAL_AXIS_RULES}
  for scan in (False, True):  # names and logical axes (scanned: stacked under "layers")
    boxed = jax.eval_shape(base.clone(lora_rank=4, scan_layers=scan).init, jax.random.key(1), tokens)["params"]
    flat = {optim.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(boxed))}
    layer = "layers" if scan else "layers_0"
    sites = {k.rsplit("/", 1)[0] for k in flat if LORA.search(k) and k.startswith(layer + "/")}
    assert sites == {f"{layer}/attn/{s}" for s in "qkvo"} | {f"{layer}/mlp/down_lora"}
    assert {"lm_head_lora/lora_a", "lm_head_lora/lora_b"} <= flat
    base_flat = {optim.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(
        nn.meta.unbox(jax.eval_shape(base.clone(scan_layers=scan).init, jax.random.key(1), tokens)["params"]))}
    assert {k for k in flat if not LORA.search(k)} == base_flat  # the base tree, names unchanged
    for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
      assert set(leaf.names) <= known and len(leaf.names) == leaf.value.ndim
  tuned = base.clone(lora_rank=4)
  params = jax.jit(lambda r: nn.meta.unbox(tuned.init(r, tokens)["params"]))(jax.random.key(1))
  flat = {optim.path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}
  assert all(not np.any(v) for k, v in flat.items() if k.endswith("lora_b"))  # B zero-init
  assert all(np.any(v) for k, v in flat.items() if k.endswith("lora_a"))
  want, _ = jax.jit(base.apply)({"params": _drop_lora(params)}, tokens)
  run = jax.jit(tuned.apply)
  got, _ = run({"params": params}, tokens)
  np.testing.assert_allclose(got, want, atol=1e-6)
  # wired: a non-zero B changes the output
  bumped = jax.tree_util.tree_map_with_path(lambda p, v: v + 0.5 if optim.path_str(p).endswith("lora_b") else v, params)
  moved, _ = run({"params": bumped}, tokens)
  assert np.abs(np.asarray(moved) - np.asarray(got)).max() > 1e-3
  with pytest.raises(ValueError, match="lora_targets"):
    jax.eval_shape(base.clone(lora_rank=2, lora_targets=("query",)).init, jax.random.key(0), tokens)


def _drop_lora(tree):
  if not isinstance(tree, dict):
    return tree
  return {k: _drop_lora(v) for k, v in tree.items() if not (k.startswith("lora_") or k.endswith("_lora"))}


def test_image_only_uncond_row_sees_only_the_image_and_null_prefix_uses_null_text():
  task = load_task(load("configs/ar.py:runlocal"))
  params = random_task_params(task)
  b, k, l = 2, task.codebook_size, task.seq_len
  rng = np.random.default_rng(0)
  text = jnp.asarray(rng.normal(size=(b, task.text_len, task.text_dim)), jnp.float32)
  text_mask = jnp.asarray(np.arange(task.text_len) < 5)[None].repeat(b, 0)
  ids = jnp.asarray(rng.integers(0, k, (b, l)), jnp.int32)
  cond = {"text_emb": text, "text_mask": text_mask}
  logits = jax.jit(task.image_logits)(params, cond, ids, None, jnp.asarray([False, True]))
  assert logits.shape == (b, l, k)
  # the dropped row equals the decoder run on [BOI, ids[:-1]] alone: no text anywhere
  bare = jnp.concatenate([jnp.full((1, 1), k + ar_t2i.BOI), ids[1:, :-1]], 1)
  alone, _ = jax.jit(task.lm.apply)({"params": params["lm"]}, bare)
  np.testing.assert_allclose(logits[1], alone[0, :, :k], atol=1e-4)
  assert np.abs(np.asarray(logits[0] - logits[1])).max() > 1e-3  # the kept row reads its text

  # null_prefix: a dropped row equals a kept row whose text is the learned null embedding
  nt = load_task(load("configs/ar.py:runlocal,uncond=null_prefix"))
  p2 = random_task_params(nt, 1)
  assert p2["null_text"].shape == (nt.text_len, nt.text_dim)
  fn = jax.jit(nt.image_logits)
  dropped = fn(p2, cond, ids, None, jnp.asarray([True, True]))
  null = {"text_emb": jnp.broadcast_to(p2["null_text"][None], text.shape), "text_mask": jnp.ones(text_mask.shape, bool)}
  np.testing.assert_allclose(dropped, fn(p2, null, ids, None, jnp.asarray([False, False])), atol=1e-5)
  with pytest.raises(config_lib.ConfigError, match="uncond"):
    load_task(load("configs/ar.py:runlocal,uncond=nothing"))


def test_loss_is_cross_entropy_on_image_ids_over_the_codebook():
  task = load_task(load("configs/ar.py:runlocal", **{"cond.dropout": 0.0}))
  params = random_task_params(task)
  rng = np.random.default_rng(2)
  batch = {"ids": jnp.asarray(rng.integers(0, task.codebook_size, (3, task.seq_len)), jnp.int32),
           "text_emb": jnp.asarray(rng.normal(size=(3, task.text_len, task.text_dim)), jnp.float32),
           "text_mask": jnp.ones((3, task.text_len), bool)}
  loss, aux = jax.jit(task.loss)(params, batch, jax.random.key(0))
  logits = jax.jit(task.image_logits)(params, batch, batch["ids"])
  logp = jax.nn.log_softmax(logits, -1)
  want = -np.mean(np.take_along_axis(np.asarray(logp), np.asarray(batch["ids"])[..., None], -1))
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert float(aux["cond_dropped"]) == 0.0
  assert task.image_vocab_mask().sum() == task.codebook_size and task.lm.vocab_size % 8 == 0


@pytest.mark.parametrize("rope", ["1d", "2d"])
def test_greedy_kv_cache_sampling_equals_teacher_forced_argmax(rope, monkeypatch):
  """The sampler's positions are the trainer's: greedy ids from the KV-cache loop are the argmax of
  the teacher-forced logits at every step (2D: image id j at its grid cell, the context at (0, 0))."""
  task = load_task(load("configs/ar.py:runlocal", **{"model.rope": rope}))
  assert task.lm.grid == ((4, 4) if rope == "2d" else (0, 0))
  params = random_task_params(task, seed=3)
  rng = np.random.default_rng(4)
  cond = {"text_emb": jnp.asarray(rng.normal(size=(2, task.text_len, task.text_dim)), jnp.float32),
          "text_mask": jnp.asarray(np.arange(task.text_len) < np.array([[5], [9]]))}
  prompt = task.sequence_inputs(params, cond["text_emb"], cond["text_mask"])
  ids = ar_sample.generate(task.lm, params["lm"], prompt, jax.random.key(0), task.seq_len,
                           settings=ar_sample.SampleSettings(temperature=0.0), vocab_mask=task.image_vocab_mask())
  logits = jax.jit(task.image_logits)(params, cond, ids)
  np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1), np.asarray(ids))
  if rope == "2d":  # the grid positions are read: all-(0, 0) positions give other logits
    zero = jnp.zeros_like(task.teacher_positions(2))
    monkeypatch.setattr(task, "teacher_positions", lambda b: zero)
    assert np.abs(np.asarray(jax.jit(task.image_logits)(params, cond, ids)) - np.asarray(logits)).max() > 1e-3
    with pytest.raises(ValueError, match="square"):
      load_task(load("configs/ar.py:runlocal", **{"model.rope": "2d", "model.seq_len": 12}))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ar"))
  summary = trainer.train(load("configs/ar.py:runlocal", progress="false", total_steps=2), workdir,
                          devices=jax.devices()[:1])  # one device: quicker compiles
  assert summary["final_step"] == 2
  return workdir


def test_runlocal_training_and_pipeline_images(base_run):
  with open(os.path.join(base_run, "metrics.jsonl")) as f:
    losses = [json.loads(line)["loss"] for line in f]
  assert len(losses) == 2 and all(np.isfinite(losses))
  pipe = ar_t2i.ARImagePipeline.load(base_run)
  assert not pipe.has_style
  before = ar_sample.trace_count()
  a = pipe.generate(["two red stars in neon outline style", "one blue circle"], num=2, seed=3)
  assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, pipe.generate(["two red stars in neon outline style", "one blue circle"],
                                                 num=2, seed=3))
  ids = pipe.generate_ids(["three green hearts"] * 2, num=2, seed=4, cfg_scale=1.5, top_k=5)
  assert ids.shape == (4, pipe.task.seq_len) and ids.max() < pipe.task.codebook_size
  assert ar_sample.trace_count() - before == 1  # one compile across prompts, seeds and settings
  with pytest.raises(ar_t2i.PipelineError, match="no style tokens"):
    pipe.generate(["two red stars"], style_images=a[0])
  with pytest.raises(ar_t2i.PipelineError, match="empty"):
    pipe.generate(["  "])
  np.testing.assert_array_equal(pipe.generate("one blue circle", seed=3),  # a bare string is one prompt
                                pipe.generate(["one blue circle"], seed=3))
  with pytest.raises(ar_t2i.PipelineError, match="no prompts"):
    pipe.generate([])
  with pytest.raises(ar_t2i.PipelineError, match="unknown sampling"):
    pipe.generate(["two red stars"], guidance=2.0)
