"""The `stylejax` command from a shell: metrics written, bad input -> one line, no traceback."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _testutil import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stylejax(*args, timeout=300):
  env = subprocess_env(8)
  return subprocess.run([sys.executable, "-m", "stylejax", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_help_lists_commands():
  out = stylejax("--help")
  assert out.returncode == 0
  for command in ("train", "sample", "eval", "demo", "convert"):
    assert command in out.stdout


def test_train_from_shell_writes_metrics(tmp_path):
  out = stylejax("train", "--config", "configs/toy.py:runlocal", "--workdir", str(tmp_path),
                 "--config.progress=false")
  assert out.returncode == 0, out.stderr
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert rows and all("step" in r and "loss" in r for r in rows)
  assert rows[-1]["step"] == 4
  assert os.path.exists(tmp_path / "config.json")
  assert os.listdir(tmp_path / "tensorboard")
  again = stylejax("train", "--config", "configs/toy.py:runlocal", "--workdir", str(tmp_path))
  assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.parametrize("args,needle", [
    (["--config.optimizer.nope=1"], "unknown config key"),
    (["--config.mesh.data=3"], "does not divide the 8 devices"),
    (["--config.batch_size=12"], "multiple of 8"),
    (["--config.mesh.data=2", "--config.mesh.tensor=2"], "uses 4 of 8"),
])
def test_bad_configs_exit_with_one_clear_line(tmp_path, args, needle):
  out = stylejax("train", "--config", "configs/toy.py:runlocal", "--workdir", str(tmp_path / "w"), *args)
  assert out.returncode != 0
  assert "Traceback" not in out.stderr
  lines = [l for l in out.stderr.splitlines() if l.startswith("stylejax")]
  assert len(lines) == 1 and needle in lines[0], out.stderr


def test_dpo_pairs_problems_exit_with_one_clear_line(tmp_path):
  old = str(tmp_path / "old.npz")  # a pairs file from before log-prob scales were recorded: conditional
  np.savez(old, chosen_ids=np.zeros((2, 16), np.int32), rejected_ids=np.zeros((2, 16), np.int32))
  for pairs, needle in ((str(tmp_path / "missing.npz"), "does not exist"), (old, "holds reference log-probs at 0")):
    out = stylejax("train", "--config", "configs/stylear.py:dpo,runlocal", "--workdir", str(tmp_path / "w"),
                   f"--config.dpo.pairs={pairs}")
    lines = [l for l in out.stderr.splitlines() if l.startswith("stylejax")]
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_unknown_command_and_demo_placeholder():
  out = stylejax("fly")
  assert out.returncode != 0 and "unknown command" in out.stderr and "Traceback" not in out.stderr
