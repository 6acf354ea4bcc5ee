"""The trainer: sharding equivalence, freezing, accumulation, checkpoints across meshes, NaN stops."""
import glob
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stylejax import checkpoint as ckpt_lib
from stylejax import config as config_lib
from stylejax import parallel
from stylejax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_config(**overrides):
  return config_lib.load_config(os.path.join(REPO, "configs/toy.py:runlocal"), overrides)


def run(config, workdir, devices=None, max_steps=None):
  return trainer.train(config, str(workdir), devices=devices, max_steps=max_steps)


def losses(workdir):
  import json
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


def host_params(summary):
  return jax.tree.map(np.asarray, jax.device_get(summary["state"]["params"]))


def test_sharding_equivalence_and_real_sharding(tmp_path):
  assert jax.device_count() == 8
  base = {"total_steps": "5", "checkpoint.every": "100", "log_every": "1"}
  results = {}
  for mesh in [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2)]:
    cfg = toy_config(**base, **{"mesh.data": str(mesh[0]), "mesh.fsdp": str(mesh[1]), "mesh.tensor": str(mesh[2])})
    devices = jax.devices()[:int(np.prod(mesh))]
    summary = run(cfg, tmp_path / "x".join(map(str, mesh)), devices=devices)
    results[mesh] = (losses(tmp_path / "x".join(map(str, mesh))), host_params(summary), summary)
  ref_loss, ref_params, _ = results[(1, 1, 1)]
  assert len(ref_loss) == 5
  for mesh, (loss, params, _) in results.items():
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=str(mesh))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, ref_params)
  # (2,2,2): an MLP kernel ('embed','mlp') is split over fsdp x tensor, not silently replicated.
  state = results[(2, 2, 2)][2]["state"]
  kernel = state["params"]["block0_in"]["kernel"]
  assert kernel.sharding.spec == jax.P("fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 2, kernel.shape[1] // 2)
  # Adam moments follow their params' sharding.
  mu = jax.tree.leaves(state["opt_state"], is_leaf=lambda x: hasattr(x, "mu"))
  mu_kernels = [x for x in jax.tree.leaves(state["opt_state"]) if x.shape == kernel.shape]
  assert mu_kernels and all(x.sharding.spec == kernel.sharding.spec for x in mu_kernels), mu


def test_freeze_regex_keeps_params_and_drops_optimizer_state(tmp_path):
  cfg = toy_config(**{"optimizer.freeze": "['^block', 'embed']", "total_steps": "3"})
  mesh, task, tx, mask, schedule, state0, _ = trainer.build(cfg, jax.devices()[:1])
  before = host_params({"state": state0})
  summary = run(cfg, tmp_path, devices=jax.devices()[:1])
  after = host_params(summary)
  for name in after:
    changed = not np.array_equal(after[name]["kernel"], before[name]["kernel"])
    assert changed == (name == "head"), name
  # Only the head's kernel and bias have Adam moments: 2 mu + 2 nu leaves (+ count scalars).
  shaped = [x for x in jax.tree.leaves(summary["state"]["opt_state"]) if x.ndim > 0]
  assert len(shaped) == 4


def test_grad_accumulation_matches_full_batch(tmp_path):
  a = run(toy_config(total_steps="3", **{"optimizer.grad_clip_norm": "0.0"}), tmp_path / "a", jax.devices()[:1])
  b = run(toy_config(total_steps="3", grad_accum_steps="2", **{"optimizer.grad_clip_norm": "0.0"}),
          tmp_path / "b", jax.devices()[:1])
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), host_params(a), host_params(b))


def test_ema_tracks_params(tmp_path):
  summary = run(toy_config(ema_decay="0.5", total_steps="3"), tmp_path, jax.devices()[:1])
  ema, params = summary["state"]["ema"], summary["state"]["params"]
  diff = jax.tree.map(lambda e, p: float(jnp.abs(e - p).max()), ema, params)
  assert max(jax.tree.leaves(diff)) > 0  # lags behind the params


def test_checkpoint_saved_on_8_devices_restores_on_1_and_back(tmp_path):
  cfg = toy_config(**{"mesh.fsdp": "2", "mesh.tensor": "2", "total_steps": "2"})
  summary = run(cfg, tmp_path, devices=jax.devices())
  saved = host_params(summary)
  for devices, mesh in [(jax.devices()[:1], (1, 1, 1)), (jax.devices(), (1, 4, 2))]:
    cfg_r = toy_config(**{"mesh.data": str(mesh[0]), "mesh.fsdp": str(mesh[1]), "mesh.tensor": str(mesh[2])})
    *_, target, _ = trainer.build(cfg_r, devices)
    ckpt = ckpt_lib.Checkpointer(os.path.join(tmp_path, "checkpoints"))
    restored, data_state = ckpt.restore(target)
    ckpt.close()
    assert int(restored["step"]) == 2 and data_state is not None
    kernel = restored["params"]["block0_in"]["kernel"]
    assert len(kernel.sharding.device_set) == len(devices)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, restored["params"]), saved)


def test_resume_sees_the_same_batches_and_rerun_is_noop(tmp_path):
  full = run(toy_config(total_steps="6", **{"checkpoint.every": "2"}), tmp_path / "full", jax.devices()[:1])
  cfg = toy_config(total_steps="6", **{"checkpoint.every": "2"})
  part = run(cfg, tmp_path / "part", jax.devices()[:1], max_steps=4)
  assert part["final_step"] == 4
  resumed = run(cfg, tmp_path / "part", jax.devices()[:1])
  assert resumed["start_step"] == 4
  jax.tree.map(np.testing.assert_array_equal, host_params(full), host_params(resumed))
  again = run(cfg, tmp_path / "part", jax.devices()[:1])
  assert again["status"] == "already_done"


def test_abstract_state_mirrors_the_initialised_one_and_loading_initialises_nothing(tmp_path, monkeypatch):
  cfg = toy_config(**{"mesh.fsdp": "2", "mesh.tensor": "2", "ema_decay": "0.5", "total_steps": "2"})
  *_, state, shardings = trainer.build(cfg, jax.devices())
  *_, abstract, abstract_shardings = trainer.build(cfg, jax.devices(), abstract=True)
  assert jax.tree.structure(abstract) == jax.tree.structure(state) and abstract_shardings == shardings
  for a, x in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
    assert isinstance(a, jax.ShapeDtypeStruct) and (a.shape, a.dtype, a.sharding) == (x.shape, x.dtype, x.sharding)
  summary = run(cfg, tmp_path, jax.devices())

  def no_init(*args, **kw):
    raise AssertionError("a checkpoint load initialised params")
  monkeypatch.setattr(parallel, "init_sharded", no_init)
  for use_ema, name in [(True, "ema"), (False, "params")]:
    _, params = trainer.load_params(str(tmp_path), use_ema=use_ema)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params),
                 jax.tree.map(np.asarray, jax.device_get(summary["state"][name])))
  ckpt = ckpt_lib.Checkpointer(os.path.join(tmp_path, "checkpoints"))
  assert set(ckpt.restore_entries({"params": abstract["params"]})) == {"params"}  # nothing else is read
  ckpt.close()
  assert run(cfg, tmp_path, jax.devices())["status"] == "already_done"  # a resume restores the same way

  bad = toy_config(**{"mesh.data": "3"})  # fails in build, before any state exists: no checkpoints folder appears
  with pytest.raises(parallel.ParallelError):
    run(bad, tmp_path / "bad", jax.devices())
  assert os.listdir(tmp_path / "bad") == []  # nor a config.json: only a config that ran is recorded
  with pytest.raises(trainer.TrainError, match="has no config.json"):
    trainer.load_params(str(tmp_path / "bad"))
  shutil.copy(tmp_path / "config.json", tmp_path / "bad")  # a run stopped before its first checkpoint
  with pytest.raises(trainer.TrainError, match="no checkpoint yet"):  # loading it creates nothing either
    trainer.load_params(str(tmp_path / "bad"))
  assert os.listdir(tmp_path / "bad") == ["config.json"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  cfg = toy_config(total_steps="40", **{"checkpoint.every": "2", "optimizer.lr": "1e30",
                                        "optimizer.grad_clip_norm": "0.0", "optimizer.warmup_steps": "0",
                                        "optimizer.schedule": "constant"})
  with pytest.raises(trainer.TrainError, match=r"non-finite loss or gradients at step \d+ .* enable grad clipping"):
    run(cfg, tmp_path, jax.devices()[:1])
  steps = ckpt_lib.Checkpointer(os.path.join(tmp_path, "checkpoints")).all_steps()
  cfg_ok = toy_config()
  *_, target, _ = trainer.build(cfg_ok, jax.devices()[:1])
  if steps:
    ckpt = ckpt_lib.Checkpointer(os.path.join(tmp_path, "checkpoints"))
    restored, _ = ckpt.restore(target)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored["params"]))


def test_mesh_and_batch_validation():
  with pytest.raises(parallel.ParallelError, match="does not divide"):
    parallel.make_mesh({"data": 3, "fsdp": 1, "tensor": 1})
  with pytest.raises(parallel.ParallelError, match="uses 4 of 8"):
    parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 1})
  mesh = parallel.make_mesh({"data": -1, "fsdp": 2, "tensor": 1})
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  with pytest.raises(parallel.ParallelError, match="multiple of 8"):
    parallel.check_batch(12, mesh)
  with pytest.raises(parallel.ParallelError, match="grad_accum_steps"):
    parallel.check_batch(16, mesh, grad_accum_steps=3)


# Configs whose `runlocal` variant another test already trains under the trainer (compiling each costs
# ~30 s of the suite's budget): config file -> that test file.
TRAINED_ELSEWHERE = {"muse.py": "test_muse_pipeline.py", "maskgit.py": "test_muse_pipeline.py",
                     "ar.py": "test_ar_t2i.py", "shapestyle.py": "test_shapestyle_configs.py"}


def test_every_config_trains_two_steps_at_runlocal(tmp_path):
  configs = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                   if os.path.basename(p) not in ("common.py", "__init__.py"))
  assert configs
  for name, test_file in TRAINED_ELSEWHERE.items():
    assert os.path.exists(os.path.join(REPO, "configs", name)), name
    assert f"configs/{name.removesuffix('.py')}.py" in open(os.path.join(REPO, "tests", test_file)).read()
  for path in configs:
    if os.path.basename(path) in TRAINED_ELSEWHERE:
      continue
    cfg = config_lib.load_config(path + ":runlocal")
    if cfg.get("method"):  # a multi-training recipe (StyleDrop's rounds): run end to end in its own test
      continue
    summary = run(cfg, tmp_path / os.path.basename(path), max_steps=2)
    assert summary["final_step"] == 2, path
    assert np.isfinite(summary["last_metrics"]["loss"]), path
