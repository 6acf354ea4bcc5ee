"""transformers parity: tiny random Qwen2 / Llama / Qwen3 (tied and untied, single-file and sharded)
saved with save_pretrained load into DecoderLM with matching logits and greedy tokens; the
logit processors match transformers' warpers; a bad checkpoint gives one error listing all."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from stylejax.sample import autoregressive as sa
from stylejax.weights import hf_causal_lm as hf

V = 97
COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
              rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
              bos_token_id=None, eos_token_id=None, pad_token_id=None)


def _save(tmp_path, cls, config_cls, tied, shard=False, **extra):
  torch.manual_seed(0)
  model = cls(config_cls(**COMMON, tie_word_embeddings=tied, **extra)).eval()
  with torch.no_grad():  # random everything (norm weights too) with a spread that makes argmax robust
    for name, p in model.named_parameters():
      p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0.0, 0.3)
  path = str(tmp_path / "ckpt")
  model.save_pretrained(path, max_shard_size="20KB" if shard else "5GB")
  return model, path


CASES = {
    "qwen2-untied": (Qwen2ForCausalLM, Qwen2Config, False, False, {}),
    "qwen2-tied-sharded": (Qwen2ForCausalLM, Qwen2Config, True, True, {}),
    "llama-untied-biases": (LlamaForCausalLM, LlamaConfig, False, False,
                            dict(head_dim=16, attention_bias=True, mlp_bias=True)),
    "llama-tied-sharded": (LlamaForCausalLM, LlamaConfig, True, True, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_generation_match_transformers(tmp_path, case):
  cls, config_cls, tied, shard, extra = CASES[case]
  ref, path = _save(tmp_path, cls, config_cls, tied, shard, **extra)
  assert os.path.exists(os.path.join(path, "model.safetensors.index.json")) == shard
  model, params = hf.load_hf_causal_lm(path)
  assert model.tie_embeddings == tied and model.rope_theta == 5000.0 and model.rms_eps == 1e-5
  assert ("lm_head" in params) != tied

  ids = np.random.default_rng(0).integers(0, V, (2, 7))
  ours, _ = jax.jit(model.apply)({"params": params}, jnp.asarray(ids))
  with torch.no_grad():
    want = ref(torch.tensor(ids)).logits.numpy()
  assert np.abs(np.asarray(ours) - want).max() <= 1e-4

  # greedy, with a left-padded row, through our KV-cache sampler vs transformers' generate
  mask = np.ones_like(ids, bool)
  mask[1, :3] = False
  steps = 8
  with torch.no_grad():
    hf_tokens = ref.generate(torch.tensor(ids), attention_mask=torch.tensor(mask, dtype=torch.long),
                             do_sample=False, max_new_tokens=steps, pad_token_id=0)[:, ids.shape[1]:].numpy()
  got = sa.generate(model, params, sa.Prompt(ids, mask), jax.random.key(0), steps,
                    settings=sa.SampleSettings(temperature=0.0))
  np.testing.assert_array_equal(np.asarray(got), hf_tokens)


def test_qwen3_qk_norm_and_scanned_load_match_transformers(tmp_path):
  ref, path = _save(tmp_path, Qwen3ForCausalLM, Qwen3Config, False, head_dim=8)
  model, params = hf.load_hf_causal_lm(path, scan_layers=True)
  assert model.qk_norm == "rms" and params["layers"]["attn"]["q_norm"]["scale"].shape == (2, 8)
  ids = np.random.default_rng(1).integers(0, V, (2, 6))
  ours, _ = jax.jit(model.apply)({"params": params}, jnp.asarray(ids))
  with torch.no_grad():
    want = ref(torch.tensor(ids)).logits.numpy()
  assert np.abs(np.asarray(ours) - want).max() <= 1e-4


def test_bad_checkpoint_lists_every_problem(tmp_path):
  _, path = _save(tmp_path, Qwen2ForCausalLM, Qwen2Config, False)
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  del tensors["model.norm.weight"]
  tensors["model.extra_adapter.weight"] = np.zeros((3,), np.float32)
  tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((65, 32), np.float32)
  save_file(tensors, file)
  with pytest.raises(hf.WeightLoadError) as err:
    hf.load_hf_causal_lm(path)
  msg = str(err.value)
  for needle in ("missing 1", "model.norm.weight", "unexpected 1", "model.extra_adapter.weight",
                 "shape mismatch 1", "model.layers.1.mlp.up_proj.weight"):
    assert needle in msg, (needle, msg)


def test_refuses_pickles_and_unreachable_hub(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(hf.WeightLoadError, match="safetensors"):
    hf.safetensors_files(str(tmp_path))
  with pytest.raises(hf.WeightLoadError, match="not a local directory"):
    hf.resolve_checkpoint_dir(str(tmp_path / "no-such-dir"))


def test_unsupported_configs_are_refused():
  with pytest.raises(hf.WeightLoadError, match="rope_type"):
    hf.config_from_hf(LlamaConfig(**{**COMMON, "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                                   "rope_theta": 1e4}}))
  with pytest.raises(hf.WeightLoadError, match="hidden_act"):
    hf.config_from_hf(LlamaConfig(**COMMON, hidden_act="gelu"))


def test_logit_processors_match_transformers():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 50)).astype(np.float32) * 2
  ids = rng.integers(0, 50, (4, 9))
  seen = np.zeros_like(logits, bool)
  np.put_along_axis(seen, ids, True, axis=1)
  ours = sa.apply_repetition_penalty(jnp.asarray(logits), jnp.asarray(seen), 50.0)
  want = RepetitionPenaltyLogitsProcessor(50.0)(torch.tensor(ids), torch.tensor(logits)).numpy()
  np.testing.assert_allclose(ours, want, rtol=1e-6)

  for k, p in ((200, 0.95), (7, 1.0), (0, 0.5), (12, 0.8)):
    t = torch.tensor(logits)
    if k:
      t = TopKLogitsWarper(k)(None, t)
    if p < 1.0:
      t = TopPLogitsWarper(p)(None, t)
    ours = np.asarray(sa.top_k_top_p_filter(jnp.asarray(logits), jnp.int32(k), jnp.float32(p)))
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(t.numpy()), err_msg=f"k={k} p={p}")
