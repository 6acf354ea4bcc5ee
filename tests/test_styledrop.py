"""StyleDrop end to end at runlocal size: two rounds with clip / scorer / human feedback, the selection
file, sampling, eval, the demo's outputs, resuming, and bad inputs."""
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import stylejax
from stylejax import config as config_lib
from stylejax import parallel
from stylejax.methods import styledrop
from stylejax.models import scorers as S
from stylejax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNLOCAL = "configs/styledrop.py:runlocal"
TINY = dict(widths=[8, 16], hidden=16, embed_dim=8)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("base"))
  config = config_lib.load_config(os.path.join(REPO, "configs/muse.py:runlocal"), {"progress": "false"})
  trainer.train(config, workdir, devices=None)
  return workdir


@pytest.fixture(scope="module")
def scorers():
  x = np.zeros((1, 32, 32, 3), np.float32)
  cp = parallel.unbox(jax.jit(S.content_classifier(TINY).init)(jax.random.key(0), x)["params"])
  sp = parallel.unbox(jax.jit(S.style_encoder(TINY).init)(jax.random.key(1), x)["params"])
  return S.Scorers(content_config=dict(TINY), content_params=cp, style_config=dict(TINY), style_params=sp,
                   image_size=32)


def readme_notebook_code() -> str:
  text = open(os.path.join(REPO, "README.md")).read()
  block = text.split("<!-- notebook-styledrop -->")[1].split("<!-- /notebook-styledrop -->")[0]
  return block.split("```python")[1].split("```")[0]


@pytest.fixture(scope="module")
def clip_run(base, tmp_path_factory):
  """The README's StyleDrop notebook block executed as written (two rounds, CLIP feedback) on the runlocal
  base: returns (workdir, the tuned StyleDrop, the block's namespace)."""
  cwd = tmp_path_factory.mktemp("notebook")
  shutil.copy(styledrop.bundled_reference()[0], cwd / "reference.png")  # stands in for the user's file
  tune = styledrop.tune
  namespace: dict = {}
  with pytest.MonkeyPatch.context() as mp:
    mp.chdir(cwd)
    mp.setattr(styledrop, "tune", lambda _base, *a, **k: tune(base, *a, config=RUNLOCAL, progress=False, **k))
    exec(compile(readme_notebook_code(), "README.md", "exec"), namespace)
  return str(cwd / "runs" / "sd"), namespace["style"], namespace


def _copy_round1(src: str, dst: str) -> str:
  """A workdir that finished round 1 and its candidates (so a test trains only round 2)."""
  os.makedirs(dst)
  for name in ("round1", "candidates_round1"):
    shutil.copytree(os.path.join(src, name), os.path.join(dst, name))
  manifest = json.load(open(os.path.join(src, styledrop.MANIFEST)))
  manifest.update(final_round=1, selected={})
  json.dump(manifest, open(os.path.join(dst, styledrop.MANIFEST), "w"))
  return dst


def test_two_rounds_with_clip_feedback(clip_run):
  workdir, sd, _ = clip_run
  manifest = json.load(open(os.path.join(workdir, styledrop.MANIFEST)))
  assert manifest["status"] == "done" and manifest["final_round"] == 2
  selected = manifest["selected"]["round1"]
  assert 1 <= len(selected) <= 3  # at most one per feedback prompt
  images = np.load(os.path.join(workdir, "data_round2.npz"))["images"]
  assert images.shape == (1 + len(selected), 32, 32, 3)
  cands = styledrop.Candidates.load(os.path.join(workdir, "candidates_round1", "candidates.npz"))
  for i, cid in enumerate(selected, start=1):
    np.testing.assert_array_equal(images[i], cands.images[cands.ids.index(cid)])
  # adapters only: saved separately, < 1% of the model's params
  from safetensors.numpy import load_file
  adapters = load_file(os.path.join(workdir, "round2", "adapters.safetensors"))
  n_adapter = sum(v.size for v in adapters.values())
  _, full = trainer.load_params(os.path.join(workdir, "round2"))
  n_all = sum(v.size for v in jax.tree.leaves(full))
  assert all(k.startswith("adapters/") for k in adapters) and 0 < n_adapter
  out = sd.generate(["two red stars"], num=2, seed=0, style_guidance=1.0, content_guidance=2.0)
  assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
  again = stylejax.load(workdir).generate(["two red stars"], num=2, seed=0, style_guidance=1.0, content_guidance=2.0)
  np.testing.assert_array_equal(out, again)
  assert n_adapter < n_all  # runlocal models are tiny; the real ratio is measured in the README


def test_human_selection_waits_then_uses_the_selection_file(clip_run, base, tmp_path):
  workdir = _copy_round1(clip_run[0], str(tmp_path / "sd"))
  config = config_lib.load_config(os.path.join(REPO, RUNLOCAL), {"progress": "false"})
  config.unlock()
  config.styledrop.update(base=base, selection="human")
  result = styledrop.run(config, workdir)
  assert result["status"] == "awaiting_selection" and os.path.exists(result["contact_sheet"])
  html = open(result["contact_sheet"]).read()
  assert html.count('type="checkbox"') == 6  # 3 prompts x 2 candidates
  selection = tmp_path / "selection.json"
  selection.write_text(json.dumps({"selected": ["c004", "c001"]}))
  config.styledrop.selection_file = str(selection)
  result = styledrop.run(config, workdir)
  assert result["status"] == "done" and result["selected"]["round1"] == ["c001", "c004"]
  assert np.load(os.path.join(workdir, "data_round2.npz"))["images"].shape[0] == 3


def test_warm_start_continues_round1_adapters(clip_run, base, tmp_path):
  # With lr 0, round 2's adapters are exactly where it started: round 1's (warm) or the fresh zero-init W_up.
  from safetensors.numpy import load_file
  adapters = lambda workdir, k: load_file(os.path.join(workdir, f"round{k}", "adapters.safetensors"))
  round1 = adapters(clip_run[0], 1)
  assert any(np.abs(v).max() > 0 for k, v in round1.items() if "up" in k)
  for warm in (True, False):
    workdir = _copy_round1(clip_run[0], str(tmp_path / f"sd_{warm}"))
    config = config_lib.load_config(os.path.join(REPO, RUNLOCAL), {"progress": "false"})
    config.unlock()
    config.styledrop.update(base=base, selection_file="c001,c002", warm_start=warm)
    config.optimizer.lr = 0.0
    assert styledrop.run(config, workdir)["status"] == "done"
    round2 = adapters(workdir, 2)
    assert round2.keys() == round1.keys()
    same = all(np.array_equal(round2[k], round1[k]) for k in round1)
    assert same == warm


def test_scorer_selection_keeps_only_correct_content(clip_run, scorers):
  cands = styledrop.Candidates.load(os.path.join(clip_run[0], "candidates_round1", "candidates.npz"))
  ref = cands.images[0]
  chosen = styledrop.select_scorer(cands, ref, scorers)
  pred = scorers.classify(cands.images)
  from stylejax.data import shapestyle as ss
  for i in chosen:
    want = ss.parse_caption(cands.contents[i])[0]
    assert (pred["shape"][i], pred["color"][i], pred["count"][i]) == (want.shape, want.color, want.count)
  # a hand case: the best style among correct candidates wins, an incorrect one never does
  class Fake:
    def classify(self, images):
      n = len(images)
      return {"shape": np.asarray([0, 0, 1][:n]), "color": np.zeros(n, int), "count": np.ones(n, int)}

    def style_embed(self, images):
      return np.asarray([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])[:len(images)] if len(images) == 3 else np.asarray([[0.0, 1.0]])
  fake = styledrop.Candidates(np.zeros((3, 4, 4, 3), np.uint8), ["c0", "c1", "c2"], ["one red circle"] * 3,
                              np.zeros(3, int))
  # candidate 2 is closest in style but its shape is wrong; candidate 1 is the best correct one
  assert styledrop.select_scorer(fake, np.zeros((4, 4, 3), np.uint8), Fake()) == [1]


def test_clip_selection_best_of_n_with_style_filter():
  class FakeClip:
    def embed_images(self, images):
      if len(images) == 1:  # the reference
        return np.asarray([[0.0, 1.0]])
      return np.asarray([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])

    def embed_texts(self, texts):
      return np.tile([[1.0, 0.0]], (len(texts), 1))
  cands = styledrop.Candidates(np.zeros((4, 4, 4, 3), np.uint8), ["a", "b", "c", "d"], ["x"] * 4, np.asarray([0, 0, 1, 1]))
  ref = np.zeros((4, 4, 3), np.uint8)
  # no filter: best CLIP-T per prompt -> 0 and 2
  assert styledrop.select_clip(cands, ref, FakeClip(), style_filter=False) == [0, 2]
  # style filter keeps CLIP-I >= mean (0.6): b (0.6), c (0.8), d (1.0) -> best text per prompt: 1 and 2
  assert styledrop.select_clip(cands, ref, FakeClip(), style_filter=True) == [1, 2]


def test_best_of_draws_with_the_descriptor_and_ranks_by_the_prompt_as_given():
  from _testutil import BrightnessClip
  calls = []

  class Pipe:  # candidate value = its row: the last of each 3 is the brightest
    def generate(self, prompts, num, seed, **kw):
      calls.append((list(prompts), num, seed, kw["lambda_a"]))
      return np.arange(len(prompts) * num, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
  clip = BrightnessClip()
  out = styledrop.StyleDrop(Pipe(), "sks").generate(["two red stars", "one blue circle"], 2, 7, style_guidance=2.0,
                                                    best_of=3, best_of_clip=clip)
  assert calls == [(["two red stars in sks style", "one blue circle in sks style"], 6, 7, 2.0)]
  assert clip.texts == [["one blue circle", "two red stars"]]  # unique prompts, as the user wrote them
  np.testing.assert_array_equal(out[:, 0, 0, 0], [2, 5, 8, 11])


def test_token_ceiling_scores_the_renders_after_the_tokenizer(scorers):
  from stylejax.data import shapestyle as ss
  style = ss.heldout_style(0)
  reference = ss.render(ss.Content(0, 0, 1), style, 32, np.random.default_rng(0))[0]
  gen = lambda prompts, num, seed: np.zeros((len(prompts) * num, 32, 32, 3), np.uint8)

  class Tokenizer:  # encode -> decode through `decode`
    def __init__(self, decode):
      self.decode = decode

    def encode(self, images):
      self.images = images
      return np.zeros((len(images), 4), np.int32)
  identity = Tokenizer(lambda ids: identity.images)
  gray = Tokenizer(lambda ids: np.full((len(ids), 32, 32, 3), 128, np.uint8))
  kw = dict(ref_shape=0, scorers=scorers, num_prompts=2, samples=2, ceiling_style=style)
  _, _, per = styledrop.evaluate(gen, reference, style.descriptor, tokenizer=identity, **kw)
  np.testing.assert_allclose(per["style_fidelity_token_ceiling"], per["style_fidelity_ceiling"], rtol=1e-6)
  _, _, flat = styledrop.evaluate(gen, reference, style.descriptor, tokenizer=gray, **kw)
  np.testing.assert_allclose(flat["style_fidelity_ceiling"], per["style_fidelity_ceiling"], rtol=1e-6)
  assert not np.allclose(flat["style_fidelity_token_ceiling"], per["style_fidelity_ceiling"])
  assert "style_fidelity_token_ceiling" not in styledrop.evaluate(gen, reference, style.descriptor, **kw)[2]


def test_tune_overrides_are_typed_by_the_config(tmp_path, monkeypatch):
  # launch/styledrop_eval.py --set passes strings, notebooks pass values; both land typed, unknown keys refused.
  seen = {}

  class Stop(Exception):
    pass

  def fake_run(config, workdir, **kw):
    seen["config"] = config
    raise Stop

  monkeypatch.setattr(styledrop, "run", fake_run)
  with pytest.raises(Stop):
    styledrop.tune("unused", None, "ink", workdir=str(tmp_path), config=RUNLOCAL,
                   **{"styledrop.candidates_per_prompt": "16", "optimizer.lr": 2e-3, "styledrop.style_filter": "false"})
  s = seen["config"]
  assert (s.styledrop.candidates_per_prompt, s.optimizer.lr, s.styledrop.style_filter) == (16, 2e-3, False)
  with pytest.raises(config_lib.ConfigError, match="styledrop.candidates"):
    styledrop.tune("unused", None, "ink", workdir=str(tmp_path), config=RUNLOCAL, **{"styledrop.candidates": "3"})


def test_eval_table_names_the_command_that_made_it(monkeypatch):
  # launch/styledrop_eval.py writes its command into the markdown table: parsing it back gives the same run.
  import shlex
  monkeypatch.syspath_prepend(os.path.join(REPO, "launch"))
  import styledrop_eval
  ap = styledrop_eval.parser()
  for argv in ([], ["--styles", "2", "--selection", "scorer", "--no-lora", "--lambda_a", "", "--lambda_b", "1,3",
                    "--set", "styledrop.warm_start=True", "--set", "styledrop.feedback_prompts=24"]):
    args = vars(ap.parse_args(argv))
    again = vars(ap.parse_args(shlex.split(styledrop_eval.command_flags(args))))
    assert again == args


def test_resume_skips_finished_rounds(clip_run, base):
  workdir = clip_run[0]
  stamp = os.path.getmtime(os.path.join(workdir, "round2", "adapters.safetensors"))
  config = config_lib.load_config(os.path.join(REPO, RUNLOCAL), {"progress": "false"})
  config.unlock()
  config.styledrop.base = base
  assert styledrop.run(config, workdir)["status"] == "done"
  assert os.path.getmtime(os.path.join(workdir, "round2", "adapters.safetensors")) == stamp


def test_demo_writes_grid_metrics_and_report(clip_run, base, scorers, tmp_path):
  out = tmp_path / "demo"
  shutil.copytree(clip_run[0], out / "styledrop")  # finished tuning: the demo resumes it
  result = styledrop.demo(str(out), base=base, config=RUNLOCAL, scorers=scorers, num_prompts=2, samples=2,
                          progress=False)
  grid = np.asarray(Image.open(out / "grid.png"))
  assert grid.shape[0] > 3 * 32 and grid.shape[1] > 3 * 32
  metrics = json.load(open(out / "metrics.json"))["metrics"]
  assert set(metrics) == {"base", "round1", "round2"}
  for m in metrics.values():
    for name in ("text_fidelity", "style_fidelity", "content_leakage", "clip_t", "clip_i", "style_fidelity_ceiling",
                 "style_fidelity_token_ceiling"):
      assert m[name]["n"] == 4 and len(m[name]["ci95"]) == 2
  html = open(out / "report.html").read()
  assert "text_fidelity" in html and "<svg" in html
  assert result["seconds"] > 0


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "stylejax", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_sample_eval_and_bad_inputs(clip_run, base, tmp_path):
  workdir = clip_run[0]
  png = tmp_path / "x.png"
  r = _cli("sample", f"--workdir={workdir}", "--prompt=two red stars", "--num=2", f"--out={png}",
           "--style_guidance=1.5")
  assert r.returncode == 0, r.stderr
  assert np.asarray(Image.open(png)).ndim == 3
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"not an image at all")
  cases = [
      (["--config.styledrop.style_image=" + str(tmp_path / "missing.png"), "--config.styledrop.descriptor=x"], "missing"),
      (["--config.styledrop.style_image=" + str(bad), "--config.styledrop.descriptor=x"], "bad.png"),
      (["--config.styledrop.style_image=" + str(bad.with_name("x.txt")), "--config.styledrop.descriptor=x"], "x.txt"),
      (["--config.styledrop.descriptor= "], "descriptor is empty"),
      (["--config.styledrop.steps=[0, 3]"], "must be positive"),
  ]
  bad.with_name("x.txt").write_text("hello")
  for extra, needle in cases:
    r = _cli("train", f"--config={RUNLOCAL}", f"--workdir={tmp_path / 'w'}", f"--config.styledrop.base={base}", *extra)
    assert r.returncode == 2, (extra, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
  toy = tmp_path / "toy"  # a run of another task, whose config has no image size
  toy.mkdir()
  (toy / "config.json").write_text(json.dumps({"task": "stylejax.train.toy:ToyTask", "model": {}, "data": {}}))
  r = _cli("train", f"--config={RUNLOCAL}", f"--workdir={tmp_path / 'w2'}", f"--config.styledrop.base={toy}")
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert "is not a text-to-image Muse run" in r.stderr and not (tmp_path / "w2").exists()
  demo_cases = [(["--descriptor= "], "--descriptor is empty"), (["--steps=0"], "--steps=0"),
                (["--style_image=" + str(bad)], "needs --descriptor")]  # before anything loads or is written
  for extra, needle in demo_cases:
    r = _cli("demo", f"--out={tmp_path / 'demo'}", *extra)
    assert r.returncode == 2 and not (tmp_path / "demo").exists(), (extra, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
  r = _cli("demo", f"--out={tmp_path / 'demo'}", f"--style_image={bad}", "--descriptor=x")  # unreadable: no half workdir
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "bad.png" in r.stderr, r.stderr
  assert not (tmp_path / "demo" / "styledrop").exists()


def test_readme_notebook_example_runs_as_written(clip_run):
  workdir, sd, namespace = clip_run
  assert namespace["images"].shape == (8, 32, 32, 3) and namespace["images"].dtype == np.uint8
  assert len(namespace["pictures"]) == 2 and namespace["pictures"][0].size == (32, 32)
  assert namespace["again"].workdir == sd.workdir == workdir and sd.descriptor == "watercolor"
  np.testing.assert_array_equal(namespace["again"].generate(["two red stars"], num=2, seed=0),
                                sd.generate(["two red stars"], num=2, seed=0))
  np.testing.assert_array_equal(sd.generate("two red stars", seed=0), sd.generate(["two red stars"], seed=0))


def test_tune_rejects_arrays_that_are_not_one_rgb_image(base, tmp_path):
  for bad, needle in ((np.full((32, 32, 3), 200.0), "not in [0, 1]"), (np.zeros((32, 32)), "RGB image"),  # float grayscale: uint8 [H, W] is read as an image
                      (np.zeros((2, 32, 32, 3), np.uint8), "one style image")):
    with pytest.raises(ValueError, match=re.escape(needle)):
      styledrop.tune(base, bad, "watercolor", workdir=str(tmp_path / "sd"), config=RUNLOCAL, progress=False)
    assert not (tmp_path / "sd").exists()  # rejected before anything is written
