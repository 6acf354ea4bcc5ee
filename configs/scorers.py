"""ShapeStyle scorers: the content classifier and the style encoder behind the eval metrics.

  stylejax train --config configs/scorers.py:content --workdir /tmp/scorers_content
  stylejax train --config configs/scorers.py:style --workdir /tmp/scorers_style
  stylejax train --config configs/scorers.py:style,runlocal --workdir /tmp/s   # seconds, 32x32

Variants: `content` (default) trains `ContentClassifier`; `style` trains `StyleEncoder`. Both see a
fresh random style (held-out family) for `random_style_fraction` of examples, named/plain styles for
the rest. Export with `stylejax.models.scorers.scorers_from_workdirs` + `save_scorers`.
"""
import ml_collections

from configs import common

_TASKS = {"content": "stylejax.models.scorers:ContentClassifierTask",
          "style": "stylejax.models.scorers:StyleEncoderTask"}


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, variant="content", runlocal=False)
  if arg.variant not in _TASKS:
    raise ValueError(f"unknown scorers variant {arg.variant!r}; use one of {sorted(_TASKS)}.")
  c = common.base_config(arg.runlocal)
  c.task = _TASKS[arg.variant]
  c.model = ml_collections.ConfigDict(dict(widths=[16, 32, 64, 128], hidden=128))
  if arg.variant == "style":
    c.model.hidden = 256
    c.model.embed_dim = 64
    c.model.temperature = 0.1  # SupCon temperature (Khosla et al. 2020 use 0.1)
  c.data = ml_collections.ConfigDict(dict(
      image_size=64, seed=0,
      num_examples=1_000_000,      # generated on the fly; only sets the epoch length
      random_style_fraction=0.5,   # fresh random style per example -> unlimited styles
      include_plain=True))
  c.total_steps = 6000
  c.batch_size = 64
  c.optimizer.lr = 2e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_steps = 200
  c.checkpoint.every = 1000
  c.log_every = 50
  if arg.runlocal:
    c.model.widths = [8, 16, 32]
    c.model.hidden = 32
    if arg.variant == "style":
      c.model.embed_dim = 16
    c.data.image_size = 32
    c.data.num_examples = 256
    c.total_steps = 4
    c.batch_size = 8
    c.log_every = 1
    c.checkpoint.every = 2
    c.optimizer.warmup_steps = 1
  return c
