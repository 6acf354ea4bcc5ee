"""Config strings, typed overrides, locking and clear errors."""
import os

import ml_collections
import pytest

from configs import common
from stylejax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_arg_types_and_positional():
  arg = common.parse_arg("big,runlocal,steps=7,lr=0.5", variant="", runlocal=False, steps=1, lr=0.1)
  assert arg.variant == "big" and arg.runlocal is True and arg.steps == 7 and arg.lr == 0.5
  with pytest.raises(ValueError, match="unknown config argument 'nope'"):
    common.parse_arg("nope=1", steps=1)
  with pytest.raises(ValueError, match="must be a int"):
    common.parse_arg("steps=abc", steps=1)


def test_load_config_overrides_are_typed_and_locked():
  cfg = config_lib.load_config("configs/toy.py:runlocal", {"optimizer.lr": "2", "mesh.fsdp": "2",
                                                           "optimizer.freeze": "['a', 'b']", "progress": "false"})
  assert cfg.optimizer.lr == 2.0 and isinstance(cfg.optimizer.lr, float)
  assert cfg.mesh.fsdp == 2 and cfg.optimizer.freeze == ["a", "b"] and cfg.progress is False
  assert cfg.total_steps == 4  # runlocal
  with pytest.raises(AttributeError):
    cfg.new_field = 1  # locked


@pytest.mark.parametrize("key,value,match", [
    ("optimizer.lrr", "1", "unknown config key 'optimizer.lrr'"),
    ("nosuch.lr", "1", "unknown config key 'nosuch'"),
    ("total_steps", "1.5", "must be a int"),
    ("progress", "maybe", "true or false"),
])
def test_bad_overrides_name_the_problem(key, value, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.load_config("configs/toy.py", {key: value})


def test_missing_config_file():
  with pytest.raises(config_lib.ConfigError, match="not found"):
    config_lib.load_config("configs/nope.py")


def test_json_roundtrip():
  cfg = config_lib.load_config("configs/toy.py:runlocal")
  again = config_lib.from_json(config_lib.to_json(cfg))
  assert again.to_dict() == cfg.to_dict()


def test_key_value_flag_splits_at_the_first_equals():
  import argparse
  assert config_lib.key_value("styledrop.descriptor=a=b") == ("styledrop.descriptor", "a=b")
  for bad in ("x", "=3"):
    with pytest.raises(argparse.ArgumentTypeError, match="not KEY=VALUE"):
      config_lib.key_value(bad)


def test_apply_override_takes_python_values_typed_by_the_field():
  import numpy as np
  c = ml_collections.ConfigDict(dict(lr=1e-3, steps=10, flag=False, name="a", widths=(1, 2)))
  for key, value in (("lr", np.float32(0.5)), ("steps", 3), ("flag", True), ("widths", [3, 4])):
    config_lib.apply_override(c, key, value)
  assert (c.lr, c.steps, c.flag, c.widths) == (0.5, 3, True, (3, 4)) and type(c.lr) is float
  for key, value in (("steps", 1.5), ("flag", 1), ("name", 3)):
    with pytest.raises(config_lib.ConfigError, match=f"{key}"):
      config_lib.apply_override(c, key, value)
