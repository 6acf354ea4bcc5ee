"""A small MLP classifier on Gaussian clusters: the trainer's smoke test and test fixture.

  stylejax train --config configs/toy.py:runlocal --workdir /tmp/toy
"""
import ml_collections

from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  c = common.base_config(arg.runlocal)
  c.task = "stylejax.train.toy:ToyTask"
  c.model = ml_collections.ConfigDict(dict(input_dim=16, hidden=64, depth=2, num_classes=8))
  c.data = ml_collections.ConfigDict(dict(num_examples=4096, seed=0))
  c.total_steps = 200
  c.batch_size = 64
  c.optimizer.lr = 3e-3
  c.optimizer.warmup_steps = 10
  c.checkpoint.every = 50
  if arg.runlocal:
    c.total_steps = 4
    c.batch_size = 16
    c.data.num_examples = 256
    c.checkpoint.every = 2
  return c
