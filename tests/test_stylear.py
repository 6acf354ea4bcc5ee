"""StyleAR recipe: only LoRA + resampler train, style-token noise and content subtraction, the
structure prefix, the data mix, DPO wiring, and generate / evaluate / DPO pairs on a runlocal run."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stylejax import checkpoint as ckpt_lib
from stylejax.methods import stylear
from stylejax.models import ar_t2i
from stylejax.sample import autoregressive as ar_sample
from stylejax.train import optim, trainer
from stylejax.train.task import load_task
from _testutil import launch_module
from test_ar_t2i import load, random_task_params

SPEC = "configs/stylear.py:runlocal,structure"


def _ablations():
  """launch/stylear_ablations.py as a module."""
  return launch_module("stylear_ablations")


def _random_scorers():
  return _ablations().random_scorers(32)


def _cond(task, b, seed=0, structure=False):
  rng = np.random.default_rng(seed)
  out = {"text_emb": jnp.asarray(rng.normal(size=(b, task.text_len, task.text_dim)), jnp.float32),
         "text_mask": jnp.asarray(np.arange(task.text_len) < 6)[None].repeat(b, 0),
         "style_feats": jnp.asarray(rng.normal(size=(b, 5, task.feature_dim)), jnp.float32)}
  if structure:
    out["struct_ids"] = jnp.asarray(rng.integers(0, task.codebook_size, (b, task.seq_len)), jnp.int32)
  return out


def test_structure_prefix_and_style_slots_in_the_sequence():
  task = load_task(load(SPEC))
  params = random_task_params(task)
  k, q, l = task.codebook_size, task.num_style, task.seq_len
  c = _cond(task, 2, structure=True)
  vec = jnp.ones((2, q, task.lm.hidden))
  ids = jnp.arange(2 * 3).reshape(2, 3) % k
  p = task.sequence_inputs(params, c["text_emb"], c["text_mask"], c["struct_ids"], vec, jnp.asarray([False, True]), ids)
  tok = np.asarray(p.tokens)
  assert tok.shape == (2, q + 1 + l + 1 + 3) and task.context_len == q + 1 + l + 1
  assert (tok[:, :q] == k + ar_t2i.STYLE).all() and (tok[:, q] == k + ar_t2i.STRUCT).all()
  np.testing.assert_array_equal(tok[:, q + 1:q + 1 + l], c["struct_ids"])
  assert (tok[:, q + 1 + l] == k + ar_t2i.BOI).all()
  np.testing.assert_array_equal(tok[:, -3:], ids)
  np.testing.assert_array_equal(np.asarray(p.override[0])[0], np.arange(tok.shape[1]) < q)  # style slots only
  # row 1 takes the image-only unconditional context: text, style and structure all padding
  mask = np.asarray(p.mask)
  assert mask[0].all() and not mask[1, :q + 1 + l].any() and mask[1, q + 1 + l:].all()
  np.testing.assert_array_equal(p.prefix_mask[0], c["text_mask"][0])
  assert not np.asarray(p.prefix_mask[1]).any()


def test_text_dropout_keeps_the_style_tokens_and_drops_text_and_structure():
  task = load_task(load(SPEC))
  params = random_task_params(task, std=0.2)
  q, l = task.num_style, task.seq_len
  c = _cond(task, 3, structure=True)
  vec = jnp.ones((3, q, task.lm.hidden))
  drop, keep = jnp.asarray([False, True, True]), jnp.asarray([False, False, True])
  p = task.sequence_inputs(params, c["text_emb"], c["text_mask"], c["struct_ids"], vec, drop, keep_style=keep)
  mask, prefix = np.asarray(p.mask), np.asarray(p.prefix_mask)
  assert mask[0].all() and not mask[1, :q + 1 + l].any()  # row 1: image-only, as before
  assert mask[2, :q].all() and not mask[2, q:q + 1 + l].any() and mask[2, q + 1 + l:].all()  # row 2: style only
  assert prefix[0].any() and not prefix[1:].any()

  # training: every row text-dropped -> the loss reads the style tokens but not the text
  t = load_task(load(SPEC, **{"cond.dropout": 0.0, "cond.text_dropout": 1.0, "style.noise": 0.0}))
  batch = {**c, "ids": jnp.asarray(np.random.default_rng(1).integers(0, task.codebook_size, (3, l)), jnp.int32)}
  loss = jax.jit(lambda b: t.loss(params, b, jax.random.key(0))[0])
  other_text = {**batch, "text_emb": batch["text_emb"][::-1], "struct_ids": batch["struct_ids"][::-1]}
  np.testing.assert_allclose(loss(other_text), loss(batch), rtol=1e-6)
  assert abs(float(loss({**batch, "style_feats": batch["style_feats"][::-1]})) - float(loss(batch))) > 1e-5
  t0 = load_task(load(SPEC, **{"cond.dropout": 0.0, "style.noise": 0.0}))  # text_dropout 0: the text counts
  loss0 = jax.jit(lambda b: t0.loss(params, b, jax.random.key(0))[0])
  assert abs(float(loss0(other_text)) - float(loss0(batch))) > 1e-5


def test_style_token_noise_and_content_subtraction_formula():
  task = load_task(load(SPEC))
  params = random_task_params(task)
  c = _cond(task, 3)
  f, cf = c["style_feats"], c["style_feats"][::-1]
  resample = lambda x: task.resampler.apply({"params": params["resampler"]}, x)
  fn = jax.jit(task.style_tokens)
  t = fn(params, f)
  np.testing.assert_allclose(t, resample(f), atol=1e-5)
  # REFERENCE §4: 0.2 R(f_style) + 0.8 R(f_style - 0.8 f_content)
  np.testing.assert_allclose(fn(params, f, cf), 0.2 * resample(f) + 0.8 * resample(f - 0.8 * cf), atol=1e-5)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(3))
  np.testing.assert_allclose(fn(params, f, None, keys, 0.0), t, atol=1e-6)  # sigma 0: off
  noisy = np.asarray(fn(params, f, None, keys, 0.3))
  eps = (noisy - np.asarray(t)) / 0.3
  assert abs(eps.std() - 1.0) < 0.15 and abs(eps.mean()) < 0.1
  # row b's noise depends on its key only
  np.testing.assert_allclose(fn(params, f[:1], None, keys[:1], 0.3), noisy[:1], atol=1e-5)

  # training: with no condition dropout, only the sigma_train noise makes the loss depend on the rng
  batch = {**c, "ids": jnp.zeros((3, task.seq_len), jnp.int32)}
  t2 = load_task(load("configs/stylear.py:runlocal", **{"style.noise": 0.5, "cond.dropout": 0.0}))
  assert t2.train_noise == 0.5 and load_task(load("configs/stylear.py:runlocal")).train_noise == 0.1
  loss = jax.jit(t2.loss)
  a, b_ = (float(loss(params, batch, jax.random.key(s))[0]) for s in (1, 2))
  assert abs(a - b_) > 1e-6


def test_training_mix_of_stylized_and_original_pairs():
  tokenize = lambda texts: (np.zeros((len(texts), 4), np.int32), np.ones((len(texts), 4), np.int32))
  frac = lambda mix: np.mean([stylear.StyleARPairs(tokenize, image_size=32, mix=mix, num_examples=400)[i]["stylized"]
                              for i in range(400)])
  assert 0.18 < frac("1:3") < 0.32 and frac("1:0") == 1.0 and frac("1:30") < 0.08
  src = stylear.StyleARPairs(tokenize, image_size=32, mix="1:0", random_style_fraction=1.0, structure=True)
  ex = src[5]
  assert ex["image"].shape == (32, 32, 3) and ex["shape_mask"].shape == (32, 32)
  np.testing.assert_array_equal(ex["image"], src[5]["image"])  # deterministic
  with pytest.raises(ValueError, match="mix"):
    stylear.parse_mix("3")
  with pytest.raises(ValueError, match="mix"):
    stylear.parse_mix("0:0")


def test_dpo_loss_starts_at_log2_and_decreases_on_a_hand_case():
  task = load_task(load("configs/stylear.py:dpo,runlocal", **{"dpo.sft_weight": 0.0}))  # DPO alone
  params = random_task_params(task, std=0.05)
  rng = np.random.default_rng(3)
  b = 4
  batch = {**_cond(task, b, 1), "chosen_ids": jnp.asarray(rng.integers(0, task.codebook_size, (b, task.seq_len))),
           "rejected_ids": jnp.asarray(rng.integers(0, task.codebook_size, (b, task.seq_len)))}
  assert task.logp_cfg_scale == 4.0  # the default scores the guided distribution
  logps = jax.jit(functools.partial(task.sequence_logprobs, cfg_scale=task.logp_cfg_scale))
  ref_c, ref_r = logps(params, batch, batch["chosen_ids"]), logps(params, batch, batch["rejected_ids"])
  batch.update(ref_chosen_logp=ref_c, ref_rejected_logp=ref_r)
  mask = optim.trainable_mask(params, task.config.optimizer)
  assert any(jax.tree.leaves(mask)) and not mask["lm"]["embed"]["embedding"] and mask["resampler"]["proj_in"]["kernel"]
  tx = optax.adam(1e-2)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    (loss, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(params, batch, jax.random.key(0))
    grads = jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), grads, mask)  # base frozen
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss, aux

  first = None
  for _ in range(8):
    params, opt, loss, aux = step(params, opt)
    first = float(loss) if first is None else first
  np.testing.assert_allclose(first, np.log(2.0), atol=1e-5)  # policy == reference at the start
  final, aux = jax.jit(task.loss)(params, batch, jax.random.key(0))
  assert float(final) < first - 0.1 and float(aux["reward_accuracy"]) == 1.0


@pytest.mark.parametrize("style_scale", [None, 2.0])
def test_guided_sequence_logprobs_score_the_samplers_guidance(style_scale):
  """CFG against the image-only context; with sample.style_scale, two-scale guidance over the style-only one."""
  task = load_task(load("configs/stylear.py:dpo,runlocal", **({} if style_scale is None
                                                                 else {"sample.style_scale": style_scale})))
  params = random_task_params(task, std=0.2)
  b, s = 3, 2.5
  cond = _cond(task, b, 4)
  ids = jnp.asarray(np.random.default_rng(5).integers(0, task.codebook_size, (b, task.seq_len)), jnp.int32)
  style = task.style_tokens(params, cond["style_feats"])
  logits = lambda drop, keep=False: task.image_logits(params, cond, ids, style, jnp.full((b,), drop), keep)
  c, img = logits(False), logits(True)
  if style_scale is None:
    guided = img + s * (c - img)
  else:
    st = logits(True, True)
    assert np.abs(np.asarray(st - img)).max() > 1e-3  # the style-only stream is a stream of its own
    guided = img + style_scale * (st - img) + s * (c - st)
  logp = jax.nn.log_softmax(guided, axis=-1)
  hand = jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0].sum(-1)
  np.testing.assert_allclose(task.sequence_logprobs(params, cond, ids, s), hand, rtol=1e-5)
  plain = task.sequence_logprobs(params, cond, ids)
  assert np.abs(np.asarray(hand - plain)).max() > 1e-3  # the unconditional streams matter here
  if style_scale is None:
    np.testing.assert_allclose(task.sequence_logprobs(params, cond, ids, 1.0), plain, rtol=1e-5)  # s = 1: cond


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("stylear"))
  # no warmup: step 1 moves LoRA B (A's gradient is 0 while B is 0), step 2 moves A too
  config = load(SPEC, progress="false", total_steps=2, **{"checkpoint.every": 1, "optimizer.warmup_steps": 0})
  summary = trainer.train(config, workdir, devices=jax.devices()[:1])  # one device: quicker compiles
  assert summary["final_step"] == 2
  return workdir, summary


def test_only_lora_and_resampler_change(run):
  workdir, summary = run
  after = jax.device_get(summary["state"]["params"])
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _ = ckpt.restore(summary["state"], step=1, with_data=False)
  ckpt.close()
  before = jax.device_get(state["params"])
  changed = {optim.path_str(p): bool(np.any(np.asarray(a) != np.asarray(b)))
             for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(after), jax.tree.leaves(before))}
  trained = {k for k in changed if k.startswith("resampler/") or k.endswith(("lora_a", "lora_b"))}
  assert any(k.endswith("lora_a") for k in trained) and any(k.startswith("resampler/") for k in trained)
  assert all(changed[k] for k in trained), [k for k in trained if not changed[k]]
  frozen_but_changed = [k for k in changed if k not in trained and changed[k]]
  assert not frozen_but_changed and len(changed) > len(trained)


def test_generate_evaluate_and_dpo_pairs(run, tmp_path):
  workdir, summary = run
  config = load(SPEC)
  pipe = ar_t2i.ARImagePipeline(config, load_task(config), summary["state"]["params"])  # as stylear.load(workdir)
  ref = np.random.default_rng(0).integers(0, 256, (45, 45, 3), dtype=np.uint8)  # any size
  before = ar_sample.trace_count()
  images = stylear.generate(pipe, ["two red stars", "one blue circle"], ref, num=2, seed=1)
  assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(images, stylear.generate(pipe, ["two red stars", "one blue circle"], ref / 255.0,
                                                         num=2, seed=1))
  from PIL import Image
  rgba = Image.fromarray(np.dstack([ref, np.full(ref.shape[:2], 255, np.uint8)]), "RGBA")  # as Image.open gives
  np.testing.assert_array_equal(images, stylear.generate(pipe, ["two red stars", "one blue circle"], rgba,
                                                         num=2, seed=1))
  with pytest.raises(ar_t2i.PipelineError, match="style image"):
    stylear.generate(pipe, ["two red stars"], None)
  with pytest.raises(ar_t2i.PipelineError, match="content image"):
    stylear.generate(pipe, ["two red stars"], ref, content_subtraction=True)
  for bad in ("strong", float("nan"), -1.0):  # one clear error, before any sampling
    with pytest.raises(ar_t2i.PipelineError, match="style_scale"):
      stylear.generate(pipe, ["two red stars"], ref, style_scale=bad)
  for key, bad, msg in (("cfg_scale", "strong", "cfg_scale='strong' is not a number"),
                        ("top_k", [3], "top_k=\\[3\\] is not a number"), ("temperature", -0.5, "must be finite"),
                        ("top_p", 0.0, "top_p=0.0 is outside")):
    with pytest.raises(ar_t2i.PipelineError, match=msg):
      stylear.generate(pipe, ["two red stars"], ref, **{key: bad})

  scorers = _random_scorers()
  metrics = stylear.evaluate(pipe, scorers, num_styles=2, prompts_per_style=2, samples=1, batch_size=4)
  assert set(metrics) == {"text_fidelity", "style_fidelity", "content_leakage", "clip_t", "clip_i",
                          "structure_iou", "structure_iou_chance", "structure_iou_ceiling"}  # a structure run
  assert all(m["n"] == 4 and m["mean"] is not None and len(m["ci95"]) == 2 for m in metrics.values())
  assert metrics["structure_iou_ceiling"]["mean"] > 0.5  # the estimator sees true renders' shapes
  assert 0.0 <= metrics["content_leakage"]["mean"] <= 1.0
  assert ar_sample.trace_count() - before == 1  # generate and evaluate share one compiled loop
  # two-scale guidance (one more stream: its own loop)
  two_scale = functools.partial(stylear.generate, pipe, ["two red stars", "one blue circle"], ref, num=2, seed=1)
  assert not np.array_equal(two_scale(style_scale=1.0), images)  # the style-only stream changes the samples
  np.testing.assert_array_equal(two_scale(style_scale=4.0), images)  # = cfg_scale: StyleAR's CFG, 3 streams

  path = str(tmp_path / "pairs.npz")
  info = stylear.build_dpo_pairs(pipe, scorers, path, num_prompts=2, samples_per_prompt=2, batch_size=4)
  assert info["pairs"] == 2 and os.path.exists(path)
  config = load("configs/stylear.py:dpo,runlocal,structure", **{"dpo.pairs": path})
  task = load_task(config)
  source = task.source()
  batch = task.prepare_batch({k: np.stack([source[i][k] for i in range(len(source))]) for k in source[0]})
  assert {"struct_ids", "chosen_ids", "rejected_ids", "ref_chosen_logp", "style_feats", "text_emb"} <= set(batch)
  # the stored reference log-probs are this run's (guided, the default): the DPO term at its params is log 2
  loss, aux = jax.jit(task.loss)(pipe.params, batch, jax.random.key(0))
  np.testing.assert_allclose(float(loss) - task.config.dpo.sft_weight * float(aux["chosen_nll"]), np.log(2.0), atol=1e-4)

  plain = str(tmp_path / "plain.npz")  # the paper's DPO: conditional-stream log-probs
  stylear.build_dpo_pairs(pipe, scorers, plain, num_prompts=2, samples_per_prompt=2, batch_size=4, logp_cfg_scale=0.0)
  with pytest.raises(ValueError, match="logp_cfg_scale=4 .* at 0"):
    load_task(load("configs/stylear.py:dpo,runlocal,structure", **{"dpo.pairs": plain})).source()
  task = load_task(load("configs/stylear.py:dpo,runlocal,structure", **{"dpo.pairs": plain, "dpo.logp_cfg_scale": 0.0}))
  source = task.source()
  batch = task.prepare_batch({k: np.stack([source[i][k] for i in range(len(source))]) for k in source[0]})
  loss, aux = jax.jit(task.loss)(pipe.params, batch, jax.random.key(0))
  np.testing.assert_allclose(float(loss) - task.config.dpo.sft_weight * float(aux["chosen_nll"]), np.log(2.0), atol=1e-4)


def test_cli_sample_passes_the_style_scale_to_two_scale_guidance(run, tmp_path, capsys):
  from PIL import Image
  from stylejax import cli
  workdir, _ = run
  ref = str(tmp_path / "ref.png")
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(ref)
  common = [f"--workdir={workdir}", "--prompt=two red stars", f"--style_image={ref}", "--num=2", "--seed=3"]
  outs = {}
  for name, extra in (("cfg", []), ("two_scale", ["--style_guidance=1.0"]), ("bad", ["--style_guidance=-1"]),
                      ("best_of", ["--best_of=2"]), ("bad_best_of", ["--best_of=0"]),
                      ("contrastive", ["--best_of=2", "--best_of_rank=contrastive"]),
                      ("bad_rank", ["--best_of=2", "--best_of_rank=clip"])):
    outs[name] = str(tmp_path / f"{name}.png")
    code = cli.main(["sample", *common, f"--out={outs[name]}", *extra])
    assert code == (2 if name.startswith("bad") else 0)
  err = capsys.readouterr().err
  assert "style_scale" in err and "best_of=0" in err and "best_of_rank" in err  # each bad flag: one error line
  assert not np.array_equal(np.asarray(Image.open(outs["cfg"])), np.asarray(Image.open(outs["two_scale"])))


def test_compare_script_pairs_runs_and_sampling_settings_on_the_same_items(run, monkeypatch, capsys):
  workdir, _ = run
  from stylejax.models import scorers as scorers_lib
  monkeypatch.setattr(scorers_lib, "scorers_from_workdirs", _random_scorers)
  mod = launch_module("stylear_compare")
  protocol = ["--num-styles", "2", "--prompts-per-style", "2", "--samples", "2"]
  from stylejax.sample import best_of
  ranked = []  # the contrastive setting must reach the ranking, not just be accepted
  monkeypatch.setattr(best_of, "contrastive_scores",
                      lambda clip, images, texts, *a: ranked.append(len(texts)) or np.zeros(len(texts)))
  contrastive = workdir + "@best_of=2,best_of_rank=contrastive"
  scores = stylear.sample_scores  # text: a bit of each image's pixels, so candidates differ in rightness
  monkeypatch.setattr(stylear, "sample_scores", lambda sc, images, *a: {
      **scores(sc, images, *a), "text": (images[:, 0, 0, 0] % 2 == 0).astype(np.float64)})
  per_image = mod.main([workdir, workdir + "@temperature=1.0", workdir + "@style_scale=1.0", workdir + "@best_of=2",
                        contrastive] + protocol)
  same, two_scale = per_image[workdir + "@temperature=1.0"], per_image[workdir + "@style_scale=1.0"]
  assert len(same["text_fidelity"]) == 8 and len(per_image[workdir + "@best_of=2"]["text_fidelity"]) == 8
  # best of 2 by the run's own (text encoder's) CLIP: other images on the same items
  assert not np.array_equal(per_image[workdir + "@best_of=2"]["style_fidelity"], same["style_fidelity"])
  assert len(per_image[contrastive]["text_fidelity"]) == 8 and ranked == [16]  # 8 items x 2 candidates, ranked once
  # the oracle (any candidate right) bounds the pick and the first candidate (the plain sampler's image)
  best2 = per_image[workdir + "@best_of=2"]
  oracle = best2["text_fidelity_oracle"]
  assert (oracle >= best2["text_fidelity"]).all() and (oracle >= same["text_fidelity"]).all()
  assert "text_fidelity_oracle" not in same
  for k in mod.PAIRED:  # the default, spelled out: the same items, scored the same
    np.testing.assert_array_equal(same[k], per_image[workdir][k])
  assert not np.array_equal(two_scale["style_fidelity"], same["style_fidelity"])  # an override reaches the sampler
  out = capsys.readouterr().out
  assert f"{workdir}@style_scale=1.0 vs {workdir} text_fidelity: " in out and "McNemar p" in out
  assert f"text_fidelity_oracle {oracle.mean():.3f}" in out
  assert f"{workdir}@temperature=1.0 vs {workdir} style_fidelity: " in out and "(difference 0.000" in out
  with pytest.raises(SystemExit, match="unknown sampling settings"):
    mod.main([workdir + "@bogus=1"] + protocol)
  with pytest.raises(SystemExit, match="best_of=0"):
    mod.main([workdir + "@best_of=0"] + protocol)


def test_seed_keys_keep_the_plain_keys_and_give_each_candidate_its_own():
  plain = stylear._seed_keys([3, 9])
  want = jax.vmap(jax.random.key)(jnp.asarray([3, 9]))
  np.testing.assert_array_equal(jax.random.key_data(plain), jax.random.key_data(want))
  cands = np.asarray(jax.random.key_data(stylear._seed_keys([3, 9], 3)))
  assert cands.shape[0] == 6 and len({tuple(k) for k in cands}) == 6
  np.testing.assert_array_equal(cands[4], jax.random.key_data(jax.random.fold_in(jax.random.key(9), 1)))


def test_ablation_script_passes_config_and_dpo_overrides_to_both_runs(tmp_path, capsys):
  mod = _ablations()
  with pytest.raises(SystemExit):
    mod.main(["--out", str(tmp_path / "bad"), "--set", "model.lora_rank"])
  assert "not KEY=VALUE" in capsys.readouterr().err
  out = str(tmp_path / "abl")
  text = mod.main(["--runlocal", "--out", out, "--variants", "stylear_dpo", "--set", "model.lora_rank=2",
                   "--dpo-set", "sft_weight=1", "--dpo-set", "min_gap=0.001"])
  assert "StyleAR + DPO" in text
  recipe = json.load(open(os.path.join(out, "stylear", "config.json")))
  tuned = json.load(open(os.path.join(out, "stylear_dpo", "config.json")))
  assert recipe["model"]["lora_rank"] == tuned["model"]["lora_rank"] == 2  # --set reaches the DPO run too
  assert tuned["dpo"]["sft_weight"] == 1.0 and tuned["dpo"]["min_gap"] == 0.001
  saved = json.load(open(os.path.join(out, "ablations.json")))
  assert set(saved["per_image"]) == {"stylear_dpo"}  # the recipe trained for DPO but was not asked for
  n = saved["results"]["stylear_dpo"]["text_fidelity"]["n"]
  assert len(saved["per_image"]["stylear_dpo"]["text_fidelity"]) == n
  # re-scoring a finished DPO run (e.g. at another --seed) evaluates it without rebuilding its pairs
  os.remove(os.path.join(out, "dpo_pairs.npz"))
  capsys.readouterr()
  mod.main(["--runlocal", "--out", out, "--variants", "stylear_dpo", "--set", "model.lora_rank=2",
            "--dpo-set", "sft_weight=1", "--dpo-set", "min_gap=0.001"])
  assert "already trained" in capsys.readouterr().out and not os.path.exists(os.path.join(out, "dpo_pairs.npz"))
  assert json.load(open(os.path.join(out, "ablations.json")))["per_image"] == saved["per_image"]
  # a sampling-only variant (two-scale guidance) evaluates the recipe's run: no workdir of its own
  text = mod.main(["--runlocal", "--out", out, "--variants", "two_scale", "--set", "model.lora_rank=2"])
  assert "two-scale guidance" in text and not os.path.exists(os.path.join(out, "two_scale"))
  assert set(json.load(open(os.path.join(out, "ablations.json")))["per_image"]) == {"two_scale", "stylear_dpo"}


def test_ablation_table_pairs_each_variant_with_the_recipe_item_by_item():
  nan = float("nan")
  per_image = {"stylear": {"text_fidelity": [1, 0, 0, 0, 1, 0], "content_leakage": [1, nan, 0, 1, nan, 0]},
               "stylear_dpo": {"text_fidelity": [1, 1, 1, 0, 0, 1], "content_leakage": [0, nan, 0, 0, nan, 1]}}
  per_image["stylear"]["style_fidelity"] = [0.1, 0.2, 0.3, 0.1, 0.2, 0.3]
  per_image["stylear_dpo"]["style_fidelity"] = [0.2, 0.3, 0.4, 0.2, 0.3, 0.4]  # +0.1 on every item
  rows = _ablations().paired_lines(per_image, samples=2)
  dpo = next(r for r in rows if r.startswith("| StyleAR + DPO"))
  assert "0.333 -> 0.667 (+3 / -1, McNemar p = 0.625, clustered [" in dpo  # text: items 1, 2, 5 gained, 4 lost
  assert "0.500 -> 0.250 (+1 / -2, McNemar p = 1, clustered [" in dpo  # leakage on the 4 items where it counts
  # style: the paired difference, zero spread per item and per (reference, prompt) pair of samples
  assert "0.200 -> 0.300 (difference 0.100 [0.100, 0.100], clustered [0.100, 0.100])" in dpo
  from stylejax.eval import metrics as M
  ci = M.cluster_ci(np.array([0, 1, 1, 0, -1, 1.0]), np.arange(6) // 2)["ci95"]
  assert f"clustered [{ci[0]:.3f}, {ci[1]:.3f}]" in dpo  # text differences resampled in pairs of samples
  assert _ablations().paired_lines({"stylear_dpo": per_image["stylear_dpo"]}) == []  # no recipe, no pairing


def test_full_config_reads_style_tokens_from_the_clip_style_part():
  """configs/stylear.py's style tokens come from shapestyle:clip_style's vision tower (not the text
  encoder's CLIP): the features fit style.feature_dim and differ from the shipped CLIP's."""
  from stylejax.data import shapestyle as ss
  config = load("configs/stylear.py")
  assert config.image_encoder.workdir == "shapestyle:clip_style"
  task = load_task(config)
  images = np.stack([ss.render(ss.random_content(np.random.default_rng(i)), ss.PLAIN_STYLE, 64, rng=i)[0]
                     for i in range(2)])
  feats = task.image_features(images)
  assert feats.shape == (2, task.image_features.num_tokens, config.style.feature_dim)
  config.image_encoder.workdir = ""  # the text encoder's CLIP, as before the part existed
  other = load_task(config).image_features(images)
  assert feats.shape == other.shape and np.abs(feats - other).max() > 1e-2
