"""launch/shape_probe.py: the teacher-forced shape-token probe, and loading a chosen checkpoint step."""
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from stylejax import config as config_lib
from stylejax.checkpoint import Checkpointer
from stylejax.data import shapestyle as ss
from stylejax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "launch"))
import shape_probe  # noqa: E402


def test_shape_token_mask_marks_cells_touching_a_shape():
  masks = np.zeros((1, 8, 8), np.uint8)
  masks[0, 1, 1] = 1  # cell (0, 0)
  masks[0, 5, 3:6] = 1  # straddles cells (1, 0) and (1, 1)
  np.testing.assert_array_equal(ss.shape_token_mask(masks, 2), [[True, False, True, True]])


@pytest.fixture(scope="module")
def scorers():
  from stylejax.models import scorers as scorers_lib
  return scorers_lib.scorers_from_workdirs()


@pytest.mark.parametrize("name,kind", [("shapestyle:base", "muse"), ("shapestyle:ar", "ar")])
def test_probe_predicts_only_shape_tokens_and_an_oracle_scores_the_ceiling(name, kind, scorers, monkeypatch):
  got_kind, pipe = shape_probe.load(name, None)
  assert got_kind == kind
  src = ss.ShapeStyleSource("test", 64, 0, "plain")
  ex = [src[i] for i in range(6)]
  tok = pipe.tokenizer if kind == "muse" else pipe.task.image_tokenizer
  ids = np.asarray(tok.encode(np.stack([e["image"] for e in ex])))
  fg = ss.shape_token_mask(np.stack([e["mask"] for e in ex]), 8)
  argmax, sampled = shape_probe.predict_shape_tokens(kind, pipe, ids, fg, [str(e["caption"]) for e in ex])
  np.testing.assert_array_equal(argmax[~fg], ids[~fg])  # background tokens stay the true ones
  assert argmax.shape == ids.shape and argmax.max() < 128
  assert (sampled is None) == (kind == "ar")
  if sampled is not None:
    np.testing.assert_array_equal(sampled[~fg], ids[~fg])  # the decode only fills masked tokens
  m = shape_probe.probe(kind, pipe, scorers, "plain", 6)
  assert 0.0 <= m["token_acc"]["mean"] < 1.0 and m["recon_shape"]["n"] == 6
  # A model that predicts every shape token right fills in the tokenizer's own reconstruction.
  monkeypatch.setattr(shape_probe, "predict_shape_tokens", lambda k, p, ids, fg, c: (ids, ids))
  oracle = shape_probe.probe(kind, pipe, scorers, "plain", 6)
  assert oracle["token_acc"]["mean"] == 1.0
  assert oracle["fill_shape"]["mean"] == oracle["infill_shape"]["mean"] == m["recon_shape"]["mean"]


def test_load_params_restores_a_chosen_step_and_names_the_ones_there(tmp_path):
  config = config_lib.load_config(os.path.join(REPO, "configs/toy.py:runlocal"), {"progress": "false"})
  workdir = str(tmp_path / "run")
  trainer.train(config, workdir, devices=None)
  steps = Checkpointer(os.path.join(workdir, "checkpoints")).all_steps()
  assert len(steps) >= 2
  _, first = trainer.load_params(workdir, step=steps[0], use_ema=False)
  _, latest = trainer.load_params(workdir, use_ema=False)
  _, last = trainer.load_params(workdir, step=steps[-1], use_ema=False)
  leaves = lambda p: np.concatenate([np.ravel(x) for x in jax.tree.leaves(p)])
  np.testing.assert_array_equal(leaves(latest), leaves(last))
  assert not np.array_equal(leaves(first), leaves(last))
  with pytest.raises(trainer.TrainError, match=re.escape(f"no checkpoint at step 999; it has {steps}")):
    trainer.load_params(workdir, step=999)


@pytest.mark.parametrize("args,message", [
    (["/nonexistent/run"], "no config.json"),
    (["/nonexistent/run", "--steps", "all"], "no config.json"),
    (["shapestyle:base", "--steps", "5"], "drop --steps"),
    (["shapestyle:clip"], "the probe takes a text-to-image Muse or AR base"),
])
def test_bad_runs_are_one_clear_line(args, message):
  r = subprocess.run([sys.executable, os.path.join(REPO, "launch", "shape_probe.py"), *args],
                     capture_output=True, text=True, cwd=REPO)
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("shape_probe: error:") and message in r.stderr
  assert not os.path.exists("/nonexistent/run")  # nothing is created where no run is
