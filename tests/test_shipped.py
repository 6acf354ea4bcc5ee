"""Shipped models ("shapestyle:<part>"): export -> load round trip, init_from, held-out prompts, eval."""
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from stylejax import config as config_lib
from stylejax import shipped
from stylejax.data import shapestyle as ss
from stylejax.eval import shapestyle_eval
from stylejax.models import scorers as scorers_lib
from stylejax.train import trainer
from _testutil import launch_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(spec, workdir, **overrides):
  config = config_lib.load_config(os.path.join(REPO, spec), {"progress": "false", **overrides})
  trainer.train(config, str(workdir), devices=None)
  return str(workdir)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  """Runlocal tokenizer + content scorer exported into a temporary assets folder."""
  root = tmp_path_factory.mktemp("assets")
  runs = {p: _train(f"configs/shapestyle.py:{p},runlocal", tmp_path_factory.mktemp(p)) for p in ("tokenizer", "content")}
  for part, workdir in runs.items():
    shipped.export(workdir, part, command=f"test {part}", root=str(root))
  return str(root), runs


def test_export_load_round_trip(assets, monkeypatch):
  root, runs = assets
  config, params = shipped.load("shapestyle:tokenizer", root)
  _, want = trainer.load_params(runs["tokenizer"])
  flat, flat_want = shipped.flatten_params(params), shipped.flatten_params(want)
  assert flat.keys() == flat_want.keys()
  for k in flat:
    np.testing.assert_array_equal(flat[k], flat_want[k])
  assert config.task == "stylejax.models.vqgan:VQGANTask"
  record = shipped.info("shapestyle:tokenizer", root)
  assert record["command"] == "test tokenizer" and record["num_params"] == sum(v.size for v in flat.values())
  # anywhere a workdir goes, the shipped name works
  monkeypatch.setattr(shipped, "ASSETS", root)
  assert shipped.available() == ["shapestyle:tokenizer", "shapestyle:content"]
  _, loaded = trainer.load_params("shapestyle:tokenizer")
  np.testing.assert_array_equal(shipped.flatten_params(loaded)[k], flat_want[k])
  shipped.record_metrics("shapestyle:tokenizer", {"x": 1.0})
  assert json.load(open(os.path.join(root, "tokenizer.json")))["metrics"]["x"] == 1.0


def _build_script():
  return launch_module("build_shapestyle")


def test_every_shipped_record_names_the_command_the_build_runs_now():
  """A stage added to configs/shapestyle.py STAGES without re-exporting (or the reverse) breaks reproducibility."""
  build = _build_script()
  for part in build.ORDER:
    assert shipped.info(part)["command"] == build.command(part), part


def test_snapshot_part_is_its_sources_first_stages_and_shares_their_wall_time(tmp_path):
  """shapestyle:clip_style is the CLIP chain cut after stage 3: same commands, those stages' train time."""
  build = _build_script()
  clip, snap = build.stages("clip", str(tmp_path)), build.stages("clip_style", str(tmp_path))
  assert len(clip) > 3 and snap == clip[:3]
  assert build.command("clip").startswith(build.command("clip_style") + " && ")
  assert build.wall_time("clip_style", str(tmp_path)) is None  # nothing ran under this root
  with open(tmp_path / "times.jsonl", "w") as f:
    for i, (workdir, _) in enumerate(clip):
      f.write(json.dumps({"part": "clip", "seconds": 10.0 * (i + 1), "workdir": workdir}) + "\n")
  assert build.wall_time("clip_style", str(tmp_path)) == 10 + 20 + 30
  assert build.wall_time("clip", str(tmp_path)) == sum(10.0 * (i + 1) for i in range(len(clip)))


def test_merged_tokenizer_exports_and_tokenizes(assets, tmp_path):
  """The build's codebook-merge step: a smaller codebook, same encoder/decoder, loadable as a part."""
  from stylejax.models.parts import ImageTokenizer
  from stylejax.train.task import load_task
  build = _build_script()
  _, runs = assets
  _, before = trainer.load_params(runs["tokenizer"])
  config, params = build.merge_codes(runs["tokenizer"], 4, num_images=64)
  shipped.export_params(config, params, "tokenizer", "test merge", root=str(tmp_path), merged_from=runs["tokenizer"])
  config, params = shipped.load("shapestyle:tokenizer", str(tmp_path))
  assert config.model.codebook_size == 4 and params["quantizer"]["codebook"].shape == (4, 8)
  got, want = shipped.flatten_params(params), shipped.flatten_params(before)
  for k in got:  # encoder and decoder unchanged
    if not k.startswith("quantizer"):
      np.testing.assert_array_equal(got[k], want[k])
  tok = ImageTokenizer(load_task(config), params)
  ids = tok.encode(np.zeros((2, 32, 32, 3), np.uint8))
  assert ids.shape == (2, 16) and ids.max() < 4 and tok.decode(ids).shape == (2, 32, 32, 3)
  # in slices of batch_size rows (bounded memory for best-of-N's thousands of candidates), the same result up to
  # XLA's batch-size-dependent float rounding (a pixel may land one level off)
  images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  ids = tok.encode(images)
  np.testing.assert_array_equal(tok.encode(images, batch_size=2), ids)
  np.testing.assert_allclose(tok.decode(ids, batch_size=2).astype(int), tok.decode(ids).astype(int), atol=1, rtol=0)
  assert len(set(map(tuple, ids))) > 1  # distinct rows, so a slice mix-up would show
  assert shipped.info("shapestyle:tokenizer", str(tmp_path))["merged_from"] == runs["tokenizer"]


def test_unknown_and_missing_names_are_clear_errors(tmp_path):
  with pytest.raises(shipped.ShippedError, match="unknown shipped model"):
    shipped.load("shapestyle:nope", str(tmp_path))
  with pytest.raises(shipped.ShippedError, match="build_shapestyle"):
    shipped.load("shapestyle:base", str(tmp_path))


@pytest.fixture(scope="module")
def muse_base(tmp_path_factory):
  return _train("configs/muse.py:runlocal", tmp_path_factory.mktemp("base"))


def test_init_from_copies_shared_params_and_keeps_adapters_fresh(muse_base, tmp_path):
  base = muse_base
  tuned = _train("configs/muse.py:runlocal", tmp_path / "tuned", **{
      "init_from.workdir": base, "model.adapters.kind": "styledrop", "optimizer.trainable": '["adapters"]',
      "total_steps": "2"})
  _, want = trainer.load_params(base)
  _, got = trainer.load_params(tuned)
  want, got = shipped.flatten_params(want), shipped.flatten_params(got)
  adapter_keys = [k for k in got if "adapters" in k]
  assert adapter_keys and all(k not in want for k in adapter_keys)
  for k, v in want.items():  # frozen base: exactly the init_from params after training steps
    np.testing.assert_array_equal(got[k], v)
  assert any(np.abs(got[k]).sum() > 0 for k in adapter_keys if k.endswith("up") or "1" in k)


def test_init_from_shape_mismatch_is_a_clear_error(muse_base, tmp_path):
  base = muse_base
  config = config_lib.load_config(os.path.join(REPO, "configs/muse.py:runlocal"),
                                  {"progress": "false", "init_from.workdir": base, "model.width": "48"})
  with pytest.raises(trainer.TrainError, match="configs must agree"):
    trainer.train(config, str(tmp_path / "bad"), devices=None)


def test_heldout_prompts_never_in_training_stream():
  train = ss.ShapeStyleSource("train", image_size=32, heldout_prompts=0.2, num_examples=200)
  held = ss.ShapeStyleSource("heldout_prompts", image_size=32, heldout_prompts=0.2, num_examples=50)
  for src, want in ((train, False), (held, True)):
    for i in range(0, len(src), 5):
      content, style = ss.parse_caption(str(src[i]["caption"]))
      sty = ss.get_style(style) if style else ss.PLAIN_STYLE
      assert ss.is_heldout_prompt(content, sty, 0.2) == want
  frac = np.mean([ss.is_heldout_prompt(c, s, 0.2) for c in ss.all_contents()
                  for s in list(ss.NAMED_STYLES) + [ss.PLAIN_STYLE]])
  assert 0.15 < frac < 0.25


def test_eval_prompt_sets_are_held_out_and_the_same_every_call():
  sets = shapestyle_eval.heldout_prompts(0.1, prompts_per_set=12, seed=3)
  assert sets == shapestyle_eval.heldout_prompts(0.1, prompts_per_set=12, seed=3)
  assert sets["plain"][0] != shapestyle_eval.heldout_prompts(0.1, prompts_per_set=12, seed=4)["plain"][0]
  for name, (prompts, contents, styles) in sets.items():
    assert len(prompts) == len(contents) == len(styles) == 12
    assert all(ss.is_heldout_prompt(c, s, 0.1) for c, s in zip(contents, styles))
    assert all((s == ss.PLAIN_STYLE) == (name == "plain") for s in styles)
  assert shapestyle_eval.text_to_image_generator("shapestyle:content") is None


def test_base_compare_names_a_bad_run_in_one_line(tmp_path, monkeypatch):
  main = launch_module("base_compare").main
  for bad, msg in ((str(tmp_path), "has no config.json"), ("shapestyle:nope", "unknown shipped model")):
    monkeypatch.setattr("sys.argv", ["base_compare", bad])
    with pytest.raises(SystemExit, match=f"^error: .*{msg}"):
      main()


def test_best_of_headroom_never_picks_above_the_oracle_and_agrees_at_one_candidate(tmp_path):
  main = launch_module("best_of_headroom").main
  out = main(["shapestyle:ar", "--prompts", "3", "--candidates", "4"])
  for name in ("plain", "named"):
    rows = out[name]
    assert rows["N"] == [1, 2, 4]
    assert rows["cosine"][0] == rows["contrastive"][0] == rows["oracle"][0]  # one candidate: every ranker keeps it
    assert all(a <= b for a, b in zip(rows["oracle"], rows["oracle"][1:]))  # more candidates, more chances
    assert all(max(c, k) <= o for c, k, o in zip(rows["cosine"], rows["contrastive"], rows["oracle"]))
  with pytest.raises(SystemExit, match="^error: .*has no config.json"):
    main([str(tmp_path)])


def test_base_compare_parses_sampling_overrides_per_run():
  base_compare = launch_module("base_compare")
  assert base_compare.parse_run("shapestyle:ar") == ("shapestyle:ar", {})
  assert base_compare.parse_run("/runs/x@temperature=0.7,top_k=10,guidance=cfg") == (
      "/runs/x", {"temperature": 0.7, "top_k": 10, "guidance": "cfg"})
  with pytest.raises(SystemExit, match="^error: sampling override 'top_k' .* is not key=value"):
    base_compare.parse_run("shapestyle:ar@top_k")


def test_decoder_eval_pairs_reconstructions_item_by_item(monkeypatch, capsys):
  """The shipped tokenizer against itself: the same renders and base samples, so every paired difference is zero."""
  monkeypatch.setattr("sys.argv", ["decoder_eval", "shapestyle:tokenizer", "--recon", "16", "--bases",
                                   "shapestyle:base", "--prompts", "4"])
  launch_module("decoder_eval").main()
  rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| shapestyle:tokenizer |")]
  assert [r.split(" | ")[1] for r in rows] == ["named", "heldout", "plain", "named"]  # reconstructions, samples
  assert all("(difference 0.000 [0.000, 0.000])" in r for r in rows[:2])
  assert all(r.count("(+0 / -0, McNemar p = 1)") == (1 if i < 2 else 2) for i, r in enumerate(rows))


def test_eval_dispatches_on_the_run_kind(assets, monkeypatch):
  root, runs = assets
  monkeypatch.setattr(shipped, "ASSETS", root)
  result = shapestyle_eval.evaluate("shapestyle:content", quick=True)
  assert result["kind"] == "content"
  m = result["metrics"]["heldout/all_accuracy"]
  assert m["n"] == 50 and 0.0 <= m["mean"] <= 1.0
  scorers = scorers_lib.scorers_from_workdirs(runs["content"], None)
  with pytest.raises(ValueError, match="no style encoder"):
    shapestyle_eval.evaluate("shapestyle:tokenizer", scorers=scorers, quick=True)


# Every part this package ships.
@pytest.mark.parametrize("part", ["tokenizer", "clip", "clip_style", "content", "style", "base", "ar"])
def test_shipped_part_reproduces_its_recorded_quality(part):
  """The package's own weights, measured again on a small sample, agree with what they recorded."""
  name = shipped.PREFIX + part
  assert name in shipped.available(), f"{name} is missing from the package; run launch/build_shapestyle.py"
  recorded = shipped.info(name)["metrics"]["measured"]
  got = shapestyle_eval.evaluate(name, quick=True)["metrics"]
  assert set(got) == set(recorded)
  for key, m in got.items():
    want = recorded[key]
    if want["mean"] is None:
      continue
    lo, hi = want["ci95"]
    slack = max(0.08, 2.0 * (hi - lo)) if lo is not None else 0.08
    assert abs(m["mean"] - want["mean"]) <= slack, (key, m, want)


def test_init_from_dont_load_keeps_a_resized_decoder_fresh(assets):
  """A wider decoder initialised from a tokenizer run: encoder and codebook copied, the decoder
  (`init_from.dont_load`) keeps its own init; without dont_load the shapes clash."""
  from stylejax.train.task import load_task
  _, runs = assets
  config = config_lib.load_config(os.path.join(REPO, "configs/shapestyle.py:tokenizer,runlocal"), {
      "model.decoder_channel_multipliers": "[1,2,4,4]", "model.decoder_res_blocks": "2"})
  fresh = {"params": nn.meta.unbox(jax.jit(load_task(config).init)(jax.random.key(0)))}
  got = shipped.flatten_params(trainer._init_from(fresh, runs["tokenizer"], ("^decoder/",))["params"])
  want = shipped.flatten_params(trainer.load_params(runs["tokenizer"])[1])
  init = shipped.flatten_params(fresh["params"])
  assert got.keys() == init.keys()
  for k in got:
    np.testing.assert_array_equal(got[k], init[k] if k.startswith("decoder/") else want[k])
  assert got["decoder/Conv_0/kernel"].shape != want["decoder/Conv_0/kernel"].shape
  with pytest.raises(trainer.TrainError, match="configs must agree"):
    trainer._init_from(fresh, runs["tokenizer"])


def test_decoder_stages_train_the_grown_decoder_on_frozen_codes(assets, tmp_path):
  """configs/shapestyle.py DECODER_STAGES at runlocal size, in order: encoder and codebook stay bit-identical,
  so the generators' token ids do not change; the decoder's old params train and its grown blocks exist; the
  GAN stage's discriminator trains but is not exported."""
  from configs import shapestyle
  root, runs = assets
  sizes = ("codebook_size", "total_steps", "checkpoint.every")  # the full part's sizes, not runlocal's
  previous = runs["tokenizer"]
  for i, args in enumerate(shapestyle.DECODER_STAGES["tokenizer"]):
    stage = dict(a[len("--config."):].split("=", 1) for a in args)
    stage = {k: v for k, v in stage.items() if not k.endswith(sizes)}
    stage.update({"init_from.workdir": previous, "optimizer.warmup_steps": "0"})
    tuned = _train("configs/shapestyle.py:tokenizer,runlocal", tmp_path / f"decoder{i}", **stage)
    _, want = trainer.load_params(previous)
    _, got = trainer.load_params(tuned)
    want, got = shipped.flatten_params(want), shipped.flatten_params(got)
    for k in [k for k in want if not k.startswith(("decoder/", "discriminator/"))]:
      np.testing.assert_array_equal(got[k], want[k])
    assert not np.array_equal(got["decoder/Conv_0/kernel"], want["decoder/Conv_0/kernel"])
    assert {"decoder/Extra_2_1/Conv_1/kernel", "decoder/Extra_3_3/Conv_1/kernel"} <= set(got)
    previous = tuned
  assert any(k.startswith("discriminator/") for k in got) and float(stage["model.gan_weight"]) > 0
  weights, _ = shipped.export(previous, "tokenizer", command="test", root=str(tmp_path / "exported"))
  from safetensors.numpy import load_file
  exported = load_file(weights)
  assert set(exported) == {k for k in got if not k.startswith("discriminator/")}
