"""ShapeStyle -> frozen tokenizer/text encoder -> Muse/MaskGIT training -> `stylejax sample` PNGs."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from stylejax import config as config_lib
from stylejax.models.muse_pipeline import MusePipeline, PipelineError
from stylejax.train import trainer
from stylejax.train.task import load_task
from _testutil import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = {}
  for name in ("maskgit", "muse"):
    workdir = str(tmp_path_factory.mktemp(name))
    config = config_lib.load_config(os.path.join(REPO, f"configs/{name}.py:runlocal"),
                                    {"progress": "false"})
    summary = trainer.train(config, workdir, devices=None)
    assert summary["final_step"] == 4
    out[name] = workdir
  return out


def test_prepare_batch_tokenizes_images_and_embeds_captions():
  config = config_lib.load_config(os.path.join(REPO, "configs/muse.py:runlocal"))
  task = load_task(config)
  source = task.source("train")
  batch = {k: np.stack([source[i][k] for i in range(3)]) for k in source[0]}
  assert set(batch) == {"image", "label", "caption_ids", "caption_mask", "mask"}
  out = task.prepare_batch(batch)
  assert set(out) == {"ids", "label", "foreground", "text_emb", "text_mask"}
  np.testing.assert_array_equal(out["ids"], task.image_tokenizer.encode(batch["image"]))
  assert out["ids"].shape == (3, task.model_config.seq_len) and out["ids"].max() < task.model_config.codebook_size
  assert out["text_emb"].shape == (3, config.model.text_len, config.model.text_dim)
  assert out["text_mask"].dtype == bool and out["text_mask"].sum(1).min() >= 3  # BOS, a word, EOS
  # Class ids index shapestyle.all_contents().
  from stylejax.data import shapestyle as ss
  ex = source[0]
  assert ss.all_contents()[int(ex["label"])] == ss.Content(int(source.source[0]["shape"]),
                                                            int(source.source[0]["color"]),
                                                            int(source.source[0]["count"]))


def test_pipeline_generates_reproducible_images(runs):
  for name, workdir in runs.items():
    pipe = MusePipeline.load(workdir)
    prompt = "two red stars" if name == "maskgit" else "two red stars in neon outline style"
    a = pipe.generate([prompt, "one blue circle"], num=2, seed=3)
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, pipe.generate([prompt, "one blue circle"], num=2, seed=3))
    ids = pipe.generate_ids([prompt, prompt], num=2, seed=4)  # same batch size: no new compile
    assert ids.shape == (4, pipe.model.config.seq_len) and ids.max() < pipe.model.config.codebook_size
    assert not np.array_equal(ids[0], ids[1])  # per-row randomness
    one = pipe.generate(prompt, seed=3)  # a bare string is one prompt, not a list of characters
    assert one.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(one, pipe.generate([prompt], seed=3))
  with pytest.raises(PipelineError, match="no prompts"):
    pipe.generate([])
  maskgit = MusePipeline.load(runs["maskgit"])
  assert maskgit._class_id("two red stars") == maskgit._class_id(str(maskgit._class_id("two red stars")))
  for bad in ("", "purple nonsense words", "999"):
    with pytest.raises(PipelineError):
      maskgit.condition([bad])
  with pytest.raises(PipelineError, match="mode"):
    maskgit.generate(["one red star"], mode="bogus")
  with pytest.raises(PipelineError, match="guidance scales must be numbers.*'strong'"):
    maskgit.generate(["one red star"], scale="strong")


def _cli(*args):
  env = subprocess_env(1)
  return subprocess.run([sys.executable, "-m", "stylejax", "sample", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_sample_command_writes_png_and_rejects_bad_input(runs, tmp_path):
  out_png = tmp_path / "grid.png"
  r = _cli("--workdir", runs["muse"], "--prompt", "three green hearts", "--num", "4", "--seed", "1",
           "--negative_prompt", "plain", "--steps", "3", "--guidance_scale", "2", "--out", str(out_png))
  assert r.returncode == 0, r.stderr
  image = np.asarray(Image.open(out_png))
  assert image.ndim == 3 and image.shape[0] > 32 and image.shape[1] > 32  # a 2x2 grid of 32x32 images
  for args, needle in [(["--prompt", ""], "prompt is empty"),
                       (["--prompt", "x", "--guidance", "bogus"], "guidance mode"),
                       (["--prompt", "x", "--style_image", "a.png"], "style_image")]:
    r = _cli("--workdir", runs["muse"], *args, "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "x.png")


def test_tokenizer_shape_mismatch_is_a_clear_error():
  config = config_lib.load_config(os.path.join(REPO, "configs/maskgit.py:runlocal"), {"model.seq_len": "64"})
  task = load_task(config)
  with pytest.raises(ValueError, match="model.seq_len=16"):
    task.image_tokenizer


def test_best_of_keeps_the_clip_pick_among_the_candidates_the_pipeline_draws(runs):
  from stylejax.sample import best_of
  from _testutil import BrightnessClip
  pipe = MusePipeline.load(runs["muse"])
  prompts = ["two red stars in neon outline style", "one blue circle"]
  candidates = pipe.generate(prompts, num=2 * 3, seed=5)  # what best_of=3 draws for num=2
  picked = pipe.generate(prompts, num=2, seed=5, best_of=3, best_of_clip=BrightnessClip())
  brightest = candidates.reshape(4, 3, -1).astype(np.float64).mean(-1).argmax(-1) + 3 * np.arange(4)
  np.testing.assert_array_equal(picked, candidates[brightest])
  with pytest.raises(best_of.BestOfError, match="class-id"):
    MusePipeline.load(runs["maskgit"]).generate([17], best_of=2, best_of_clip=BrightnessClip())
