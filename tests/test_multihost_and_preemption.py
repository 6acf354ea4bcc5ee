"""Runs from a shell: SIGTERM mid-run then resume == uninterrupted; 2 processes x 4 devices == 1 x 8."""
import os
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from stylejax import checkpoint as ckpt_lib
from stylejax import config as config_lib
from stylejax.train import trainer
from _testutil import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A toy run long enough to be killed in the middle.
LONG = ["--config.total_steps=120", "--config.checkpoint.every=25", "--config.log_every=1",
        "--config.model.hidden=128", "--config.batch_size=32", "--config.progress=false"]


def launch(workdir, *extra, devices=8):
  env = subprocess_env(devices)
  return subprocess.Popen([sys.executable, "-m", "stylejax", "train", "--config", "configs/toy.py:runlocal",
                           "--workdir", str(workdir), *extra], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def final_params(workdir, overrides):
  cfg = config_lib.load_config(os.path.join(REPO, "configs/toy.py:runlocal"), overrides)
  *_, target, _ = trainer.build(cfg, jax.devices())
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _ = ckpt.restore(target)
  ckpt.close()
  return int(state["step"]), jax.tree.map(np.asarray, jax.device_get(state["params"]))


def logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  return sum(1 for _ in open(path)) if os.path.exists(path) else 0


def as_overrides(flags):
  return dict(f[len("--config."):].split("=", 1) for f in flags)


def test_sigterm_then_resume_matches_uninterrupted_run_bitwise(tmp_path):
  straight = launch(tmp_path / "straight", *LONG)
  out, err = straight.communicate(timeout=600)
  assert straight.returncode == 0, err
  kill_at = random.Random(os.getpid()).randint(5, 60)
  proc = launch(tmp_path / "killed", *LONG)
  while logged_steps(tmp_path / "killed") < kill_at and proc.poll() is None:
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err
  assert "stopped by signal" in out, (out, err)
  resumed = launch(tmp_path / "killed", *LONG)
  out, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err
  overrides = as_overrides(LONG)
  step_a, params_a = final_params(tmp_path / "straight", overrides)
  step_b, params_b = final_params(tmp_path / "killed", overrides)
  assert step_a == step_b == 120
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_of_four_devices_match_one_of_eight(tmp_path):
  flags = ["--config.total_steps=6", "--config.checkpoint.every=3", "--config.mesh.fsdp=2",
           "--config.progress=false"]
  single = launch(tmp_path / "one", *flags)
  port = free_port()
  procs = [launch(tmp_path / "two", *flags, f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}", devices=4) for i in range(2)]
  for p in [single, *procs]:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  overrides = as_overrides(flags)
  step_a, params_a = final_params(tmp_path / "one", overrides)
  step_b, params_b = final_params(tmp_path / "two", overrides)
  assert step_a == step_b == 6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params_a, params_b)
