"""AR decode throughput: stylejax's jitted KV-cache loop vs transformers `generate` (PyTorch).

Both run the SAME weights: a random Qwen2-style model is built in transformers, saved with
`save_pretrained`, and loaded into `DecoderLM` through `stylejax.weights.hf_causal_lm`.
Before timing, greedy outputs of the two are checked token for token (a mismatch aborts).

Timed call = one end-to-end generation of `--new-tokens` tokens after a `--prompt-len` prompt
(prefill included), for the greedy and the temperature/top-k settings:
  stylejax:     `stylejax.sample.autoregressive.generate` (prefill + one jitted lax.fori_loop)
  transformers: `model.generate(..., cache_implementation="static")`, eager PyTorch (transformers
                only auto-compiles on accelerators), eos disabled so every row runs to the end.
Each repeat times both implementations back to back, alternating which goes first; the table
reports medians over repeats (tok/s = batch * new tokens / seconds) and the median of the
per-repeat ratios. "compile s" = stylejax's first call minus its median call (trace + XLA
compile; greedy and sampling compile separately, so each row has its own).

  python launch/bench_ar.py [--repeats 5] [--quick] [--out FILE.md]
  python launch/bench_ar.py --profile --configs tiny --batches 8    # where stylejax's decode time goes

Runs on CPU by default (JAX_PLATFORMS=cpu unless set). Torch threads: `--threads N`, or
`auto` (default): per config and batch, the faster of 1 and all cores in a short probe. On a
shared machine, torch's OpenMP with all cores can be several times slower than one thread
(threads wait at barriers while another process holds a core); auto keeps that from being
counted against transformers. XLA keeps its default thread pool.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_util  # noqa: E402
from bench_util import timed  # noqa: E402
from stylejax.sample import autoregressive as sa  # noqa: E402
from stylejax.weights import hf_causal_lm  # noqa: E402

# Qwen2-style configs (q/k/v bias, GQA, SwiGLU, untied head).
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=704, vocab_size=4096),
    "small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=1408, vocab_size=8192),
    "100m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                 intermediate_size=2048, vocab_size=16384),  # the issue's ~100M-parameter point
    "minuscule": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, vocab_size=64),  # for the smoke test only
}
SETTINGS = {  # name -> (stylejax settings, transformers generate kwargs)
    "greedy": (sa.SampleSettings(temperature=0.0), dict(do_sample=False)),
    "top-k 50, T=1": (sa.SampleSettings(temperature=1.0, top_k=50),
                      dict(do_sample=True, temperature=1.0, top_k=50, top_p=1.0)),
}


def build_models(name: str, max_len: int, tmp: str) -> tuple[Any, Any, dict, int]:
  """A random transformers Qwen2 (weights spread enough that greedy argmax is robust to fp32
  rounding) and the same weights as a DecoderLM. Returns (torch model, DecoderLM, params, #params)."""
  from transformers import Qwen2Config, Qwen2ForCausalLM
  cfg = Qwen2Config(**CONFIGS[name], max_position_embeddings=max_len, rms_norm_eps=1e-6,
                    tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=0)
  torch.manual_seed(0)
  ref = Qwen2ForCausalLM(cfg).eval()
  with torch.no_grad():
    for pname, p in ref.named_parameters():
      if "norm" in pname:
        p.uniform_(0.8, 1.2)
      else:
        p.normal_(0.0, 1.0 / np.sqrt(p.shape[-1]) if p.ndim == 2 else 0.1)
  path = os.path.join(tmp, name)
  ref.save_pretrained(path)
  model, params = hf_causal_lm.load_hf_causal_lm(path, max_len=max_len)
  return ref, model, params, sum(p.numel() for p in ref.parameters())


def prompt_ids(vocab: int, batch: int, prompt_len: int) -> np.ndarray:
  """The benchmark's prompts: [batch, prompt_len] int64 token ids, fixed per batch size."""
  return np.random.default_rng(batch).integers(1, vocab, (batch, prompt_len)).astype(np.int64)


def run_stylejax(model, params, ids: np.ndarray, steps: int, settings: sa.SampleSettings, seed: int) -> np.ndarray:
  out = sa.generate(model, params, sa.Prompt(ids), jax.random.key(seed), steps, settings=settings)
  return np.asarray(jax.block_until_ready(out))


def run_transformers(ref, ids: np.ndarray, steps: int, kwargs: dict, seed: int) -> np.ndarray:
  torch.manual_seed(seed)
  with torch.inference_mode():
    out = ref.generate(torch.from_numpy(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                       max_new_tokens=steps, min_new_tokens=steps, cache_implementation="static",
                       pad_token_id=0, eos_token_id=None, **kwargs)
  return out[:, ids.shape[1]:].numpy()


def pick_threads(ref, ids: np.ndarray, steps: int, candidates: list[int]) -> int:
  """The torch thread count with the fastest short greedy generation."""
  return bench_util.pick_threads(lambda: run_transformers(ref, ids, steps, dict(do_sample=False), 0), candidates)


def bench(configs: list[str], batches: list[int], prompt_len: int, steps: int, repeats: int,
          threads: list[int], log=print) -> list[dict[str, Any]]:
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in configs:
      ref, model, params, n_params = build_models(name, prompt_len + steps, tmp)
      log(f"[{name}] {n_params / 1e6:.1f}M params")
      for batch in batches:
        ids = prompt_ids(model.vocab_size, batch, prompt_len)
        th = pick_threads(ref, ids, max(steps // 4, 4), threads) if len(threads) > 1 else threads[0]
        torch.set_num_threads(th)
        for sname, (sj_settings, tf_kwargs) in SETTINGS.items():
          first, sj_out = timed(lambda: run_stylejax(model, params, ids, steps, sj_settings, 0))
          _, tf_out = timed(lambda: run_transformers(ref, ids, steps, tf_kwargs, 0))  # warmup
          if sname == "greedy" and not np.array_equal(sj_out, tf_out):
            bad = np.argwhere(sj_out != tf_out)[0]
            raise SystemExit(f"greedy outputs differ ({name}, batch {batch}) first at row {bad[0]} step {bad[1]}; "
                             "not timing a different computation.")
          sj_t, tf_t = [], []
          for r in range(repeats):
            order = ("sj", "tf") if r % 2 == 0 else ("tf", "sj")
            for impl in order:
              if impl == "sj":
                sj_t.append(timed(lambda: run_stylejax(model, params, ids, steps, sj_settings, r + 1))[0])
              else:
                tf_t.append(timed(lambda: run_transformers(ref, ids, steps, tf_kwargs, r + 1))[0])
          sj_med, tf_med = statistics.median(sj_t), statistics.median(tf_t)
          compile_s = max(first - sj_med, 0.0)
          row = dict(config=name, params_m=n_params / 1e6, batch=batch, setting=sname, threads=th,
                     sj_tok_s=batch * steps / sj_med, tf_tok_s=batch * steps / tf_med,
                     ratio=statistics.median(t / s for s, t in zip(sj_t, tf_t)),
                     compile_s=compile_s)
          log(f"  batch {batch} {sname}: stylejax {row['sj_tok_s']:.0f} tok/s, transformers {row['tf_tok_s']:.0f} "
              f"tok/s ({th} threads), x{row['ratio']:.2f}" + (f", compile {compile_s:.1f}s" if row["compile_s"] is not None else ""))
          rows.append(row)
  return rows


def profile(configs: list[str], batches: list[int], prompt_len: int, steps: int, top: int = 12) -> str:
  """Markdown: per config, batch and setting, stylejax's `top` ops by time per decode step."""
  out = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in configs:
      _, model, params, _ = build_models(name, prompt_len + steps, tmp)
      for batch in batches:
        ids = prompt_ids(model.vocab_size, batch, prompt_len)
        for sname, (settings, _) in SETTINGS.items():
          run = lambda: run_stylejax(model, params, ids, steps, settings, 0)
          run()
          hlo = sa.lower_generate(model, params, sa.Prompt(ids), jax.random.key(0), steps,
                                  settings=settings).compile().as_text()
          ops = bench_util.op_profile(run, hlo)
          total = sum(s for _, s in ops)
          out += [f"stylejax {name}, batch {batch}, {sname}: {total / steps * 1e3:.3f} ms of ops per decode step "
                  f"(prefill included; profiler on)", "", "| op | ms / step | share |", "|---|---|---|"]
          out += [f"| `{op}` | {s / steps * 1e3:.3f} | {s / total:.0%} |" for op, s in ops[:top]]
          out.append("")
  return "\n".join(out)


def markdown(rows: list[dict[str, Any]], header: str) -> str:
  lines = [header, "",
           "| config | batch | sampling | stylejax tok/s | transformers tok/s (torch threads) | ratio | "
           "stylejax compile s |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    comp = f"{r['compile_s']:.1f}"
    lines.append(f"| {r['config']} ({r['params_m']:.1f}M) | {r['batch']} | {r['setting']} | {r['sj_tok_s']:.0f} | "
                 f"{r['tf_tok_s']:.0f} ({r['threads']}) | {r['ratio']:.2f}x | {comp} |")
  return "\n".join(lines) + "\n"


def machine() -> str:
  import transformers
  return (f"{bench_util.cpu_and_load()}), jax {jax.__version__} ({jax.devices()[0].platform}), "
          f"torch {torch.__version__}, transformers {transformers.__version__}")


def main(argv: list[str] | None = None) -> str:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--repeats", type=int, default=5, help="paired timed runs per row (median reported)")
  p.add_argument("--quick", action="store_true", help="tiny config, batch 1, 32 new tokens, 2 repeats")
  p.add_argument("--configs", default=None, help=f"comma list of {sorted(CONFIGS)} (default tiny,small,100m)")
  p.add_argument("--batches", default=None, help="comma list of batch sizes (default 1,8)")
  p.add_argument("--prompt-len", type=int, default=16)
  p.add_argument("--new-tokens", type=int, default=None, help="default 128 (32 with --quick)")
  p.add_argument("--threads", default="auto", help="torch intra-op threads: N, or auto (faster of 1 and all cores)")
  p.add_argument("--out", default=None, help="also write the markdown table here")
  p.add_argument("--profile", action="store_true",
                 help="instead of timing against transformers, list stylejax's costliest ops per decode step")
  p.add_argument("--profile-top", type=int, default=12, help="with --profile: how many ops to list per setting")
  a = p.parse_args(argv)
  if a.repeats < 1:
    p.error("--repeats must be >= 1")
  configs = (a.configs or ("tiny" if a.quick else "tiny,small,100m")).split(",")
  unknown = [c for c in configs if c not in CONFIGS]
  if unknown:
    p.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
  batches = [int(b) for b in (a.batches or ("1" if a.quick else "1,8")).split(",")]
  steps = a.new_tokens or (32 if a.quick else 128)
  repeats = min(a.repeats, 2) if a.quick else a.repeats
  threads = bench_util.thread_candidates(p, a.threads)
  if a.profile:
    return bench_util.emit(profile(configs, batches, a.prompt_len, steps, a.profile_top), a.out)
  log = lambda s: print(s, file=sys.stderr, flush=True)
  desc = machine()
  log(desc)
  rows = bench(configs, batches, a.prompt_len, steps, repeats, threads, log)
  header = (f"AR decode, prompt {a.prompt_len} + {steps} new tokens, median of {repeats} paired runs "
            f"(ratio = stylejax / transformers). Machine: {desc}.")
  return bench_util.emit(markdown(rows, header), a.out)


if __name__ == "__main__":
  main()
