"""configs/shapestyle.py: every part's runlocal trains under the trainer; full parts are what they claim."""
import os

import numpy as np
import pytest

from stylejax import config as config_lib
from stylejax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(REPO, "configs", "shapestyle.py")
# `tokenizer` is the default part: test_trainer's test_every_config trains `shapestyle.py:runlocal`;
# test_clip_task trains `shapestyle.py:clip,runlocal` through the trainer on a sharded mesh.
OTHER_PARTS = ("content", "style")


def load(arg: str):
  return config_lib.load_config(f"{PATH}:{arg}")


@pytest.mark.parametrize("part", OTHER_PARTS)
def test_part_trains_two_steps_at_runlocal(tmp_path, part):
  summary = trainer.train(load(f"{part},runlocal"), str(tmp_path), max_steps=2)
  assert summary["final_step"] == 2
  assert np.isfinite(summary["last_metrics"]["loss"])


def test_parts_are_what_they_claim():
  assert load("").task == load("tokenizer").task == "stylejax.models.vqgan:VQGANTask"
  tok = load("tokenizer")
  f = 2 ** (len(tok.model.channel_multipliers) - 1)
  assert tok.data.name == "shapestyle" and tok.data.image_size == tok.model.image_size == 64
  assert tok.data.image_size // f == 8 and 256 <= tok.model.codebook_size <= 8192  # 8x8 tokens
  from configs import shapestyle
  shipped_codes = shapestyle.MERGE_CODES.get("tokenizer", tok.model.codebook_size)  # after the merge step
  assert shipped_codes <= tok.model.codebook_size
  for part in ("base", "ar"):  # the text-to-image bases must match the tokenizer and CLIP they train on
    cfg = load(part)
    assert (cfg.model.seq_len, cfg.model.codebook_size) == (64, shipped_codes), part
    assert cfg.model.text_dim == load("clip").model.hidden, part
    assert (cfg.tokenizer.workdir, cfg.text_encoder.workdir) == ("shapestyle:tokenizer", "shapestyle:clip"), part
  tasks = {p: load(p).task for p in ("clip", "content", "style")}
  assert tasks == {"clip": "stylejax.models.clip_task:CLIPTask",
                   "content": "stylejax.models.scorers:ContentClassifierTask",
                   "style": "stylejax.models.scorers:StyleEncoderTask"}
  for part in ("tokenizer", "clip") + OTHER_PARTS:
    full, small = load(part), load(f"{part},runlocal")
    assert small.data.image_size == 32 and small.total_steps <= 4 and small.batch_size <= 8, part
    assert full.data.image_size == 64 and full.total_steps >= 1000, part
  with pytest.raises(config_lib.ConfigError, match="unknown shapestyle part"):
    load("nonsense")
