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


def test_bad_values_checkpoints_and_paths_exit_with_one_line_and_leave_the_run_alone(tmp_path, capsys):
  # Values the config validators reject (optimizer, model, schedules, counts), a tokenizer whose ids do not fit the
  # model (it only shows when the first batch is encoded), a checkpoint of another model or optimizer, and paths
  # that cannot be written. In-process where possible: an uncaught error fails the test.
  from stylejax import cli
  run = tmp_path / "run"
  assert cli.main(["train", "--config", "configs/toy.py:runlocal", "--workdir", str(run), "--config.progress=false"]) == 0
  record, checkpoints = (run / "config.json").read_bytes(), sorted(os.listdir(run / "checkpoints"))
  capsys.readouterr()
  cases = [("configs/toy.py:runlocal", run, ["--config.optimizer.name=lion"], "optimizer.name='lion'"),
           ("configs/toy.py:runlocal", run, ["--config.optimizer.schedule=step"], "optimizer.schedule='step'"),
           ("configs/muse.py:runlocal", tmp_path / "muse", ["--config.model.layout=uvit3"], "model.layout='uvit3'"),
           ("configs/muse.py:runlocal", tmp_path / "muse", ["--config.model.mask_schedule=cubic"], "cubic"),
           ("configs/toy.py:runlocal", run, ["--config.total_steps=-5"], "total_steps=-5: each must be"),
           ("configs/toy.py:runlocal", run, ["--config.log_every=0"], "log_every=0: each must be"),
           ("configs/toy.py:runlocal", run, ["--config.optimizer.lr=-0.1"], "optimizer.lr=-0.1"),
           ("configs/muse.py:runlocal", tmp_path / "muse", ["--config.model.seq_len=64"],
            "the tokenizer gives 16 ids from 32 codes; set model.seq_len=16")]
  for config, workdir, extra, needle in cases:  # the toy run is unfinished at 8 steps: it would train on
    rc = cli.main(["train", "--config", config, "--workdir", str(workdir), "--config.total_steps=8", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("stylejax train: error:") and needle in err[0], err
  for change, needle in (("--config.model.hidden=32", "params['block0_in']['bias']: shape (256,) saved, shape (128,)"),
                         ("--config.optimizer.name=sgd", "tree structures do not match")):  # another model or optimizer
    out = stylejax("train", "--config", "configs/toy.py:runlocal", "--workdir", str(run), change,
                   "--config.total_steps=8")  # a subprocess: orbax's readers must not print at exit either
    lines = [l for l in out.stderr.splitlines() if not l.startswith("WARNING")]
    assert out.returncode == 2 and len(lines) == 1 and "does not fit" in lines[0] and needle in lines[0], out.stderr
  rc = cli.main(["train", "--config", "configs/toy.py:runlocal", "--workdir", str(run / "config.json" / "sub")])
  err = capsys.readouterr().err.strip().splitlines()  # a workdir path that cannot be made: one line too
  assert rc == 2 and len(err) == 1 and "Not a directory" in err[0] and "config.json/sub" in err[0], err
  os.makedirs(f"{run}.png")  # an --out that is a folder
  for argv, needle in ((["sample", "--prompt=one red star", f"--out={run / 'config.json' / 'x.png'}"], "config.json"),
                       (["sample", "--prompt=one red star", f"--out={run}.png"], "is a folder"),
                       (["eval", f"--out={run / 'config.json' / 'm.json'}"], "config.json")):
    rc = cli.main([argv[0], f"--workdir={run}", *argv[1:]])  # checked before anything is loaded or sampled
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
  assert (run / "config.json").read_bytes() == record and sorted(os.listdir(run / "checkpoints")) == checkpoints
  assert not (tmp_path / "muse" / "config.json").exists()  # no record of a run that never started


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
