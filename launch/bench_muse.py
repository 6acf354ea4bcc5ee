"""Masked-token (Muse) decode speed: stylejax's jitted guided sampler vs diffusers' AmusedPipeline.

Timed call = one generation of `--steps` (12) decode steps of a 16x16 token grid from all-[MASK],
text-conditioned, random weights, token ids out (no text encoder, no VQ decode on either side):
  stylejax:  `stylejax.sample.masked.sample` (one jitted lax.fori_loop) on a "muse"-layout
             `MaskedTransformer` with StyleDrop adapters (rank 8), aMUSEd-style decode settings
             (cosine schedule on seq_len, choice temperature linspace(2, 0), CFG "diffusers" form,
             scale 10). Modes:
               none       l(c)                                      1 call of batch B per step
               cfg        [l(c); l(∅)] on the tuned model           1 call of 2B
               styledrop  l(c, θs) tuned + [l(c, θ0); l(∅, θ0)] base  calls of B and 2B
  reference: diffusers `AmusedPipeline.__call__` (12 steps, CFG 10: one UVit2DModel forward of
             batch 2B per step + `AmusedScheduler.step`) with precomputed random prompt and
             negative-prompt embeddings and `output_type="latent"`, so its VQ decoder, CLIP text
             encoder and tokenizer are not built (passed as None). The UVit2D is sized like the
             row's Muse config (hidden, layers, heads, FF, codebook, text width / length).
Each repeat runs every mode (and the reference) once, in an order rotated per repeat; the table
reports medians over repeats (ms/image = call time / batch) and the medians of the per-repeat
ratios. "compile s" = seconds jax spent tracing, lowering and XLA-compiling during the first cfg
call (from `jax.monitoring` events; the log also shows first call minus median call, which on a
loaded machine is noisier than the compile itself). Each mode compiles once per batch size.
"ms/step" = median cfg call / steps (one guided decode step of the whole batch).

  python launch/bench_muse.py [--repeats 5] [--quick] [--configs tiny,small] [--out FILE.md]

Runs on CPU by default (JAX_PLATFORMS=cpu unless set). Torch threads: `--threads N`, or `auto`
(default): per config and batch, the faster of 1 and all cores in a short probe (on a shared
machine torch's OpenMP with all cores can be several times slower than one thread). XLA keeps
its default thread pool.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings
from typing import Any, Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_util  # noqa: E402
from bench_util import timed  # noqa: E402
from stylejax.models import muse  # noqa: E402
from stylejax.nn.adapters import AdapterConfig  # noqa: E402
from stylejax.sample import masked  # noqa: E402
from stylejax.sample.parallel_decode import DecodeConfig  # noqa: E402

# Muse layout (pre-LN, self + cross attention, GELU MLP, untied head); text = [text_len, text_dim].
# "tiny" and "small" match REFERENCE.md §9's aMUSEd configs (hidden 64 / 2 layers and hidden 512 /
# 8 layers / 8 heads / 256 conv channels, 16x16 tokens); codebook 1024 for both (the UVit2D then
# has ~59M params at small, as in §9; aMUSEd's 8192 would add a larger head and sampling cost).
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=64, depth=2, heads=4, mlp_dim=256, codebook_size=1024, seq_len=256, text_dim=64,
                 text_len=16, ref_channels=64),
    "small": dict(width=512, depth=8, heads=8, mlp_dim=2048, codebook_size=1024, seq_len=256, text_dim=512,
                  text_len=16, ref_channels=256),
    "minuscule": dict(width=16, depth=1, heads=2, mlp_dim=32, codebook_size=32, seq_len=16, text_dim=8,
                      text_len=4, ref_channels=16),  # for the smoke test only
}
MODES = ("none", "cfg", "styledrop")
ADAPTER_RANK = 8
CFG_SCALE = 10.0  # AmusedPipeline default
SCALES = dict(scale=CFG_SCALE, lambda_a=2.0, lambda_b=CFG_SCALE)  # StyleDrop λB = the CFG term


def muse_config(name: str) -> muse.MuseConfig:
  c = {k: v for k, v in CONFIGS[name].items() if not k.startswith("ref_")}
  return muse.MuseConfig(layout="muse", dropout=0.0, adapters=AdapterConfig(kind="styledrop", rank=ADAPTER_RANK), **c)


def random_params(model: nn.Module, *args) -> dict:
  """Random params from numpy at eval_shape's shapes (jitting init would compile threefry).

  Adapters get random (non-zero) up-projections too, so the tuned model differs from the base.
  """
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args)["params"])
  rng = np.random.default_rng(0)

  def fill(path, s):
    x = rng.normal(size=s.shape).astype(np.float32) * 0.02
    return jnp.asarray(x + 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else x)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def decode_config(c: muse.MuseConfig, steps: int) -> DecodeConfig:
  """aMUSEd's scheduler: mask_len from seq_len, cosine, choice temperature linspace(2, 0, T)."""
  return DecodeConfig(mask_id=c.mask_id, num_steps=steps, schedule="cosine", mask_len_base="seq_len",
                      choice_temperature=2.0, temperature_schedule="amused_linspace")


def build_reference(name: str):
  """AmusedPipeline around a random UVit2DModel shaped like config `name` (no VQ / CLIP / tokenizer)."""
  from diffusers import AmusedPipeline, AmusedScheduler, UVit2DModel
  spec = CONFIGS[name]
  side = int(round(spec["seq_len"] ** 0.5))
  torch.manual_seed(0)
  model = UVit2DModel(hidden_size=spec["width"], use_bias=False, cond_embed_dim=spec["text_dim"],
                      micro_cond_encode_dim=16, micro_cond_embed_dim=5 * 16, encoder_hidden_size=spec["text_dim"],
                      vocab_size=spec["codebook_size"] + 1, codebook_size=spec["codebook_size"],
                      in_channels=spec["ref_channels"], block_out_channels=spec["ref_channels"], num_res_blocks=1,
                      block_num_heads=spec["heads"], num_hidden_layers=spec["depth"],
                      num_attention_heads=spec["heads"], intermediate_size=spec["mlp_dim"], sample_size=side).eval()
  scheduler = AmusedScheduler(mask_token_id=spec["codebook_size"], masking_schedule="cosine")
  from diffusers.utils import logging as dlogging
  dlogging.set_verbosity_error()  # the pipeline's deprecation notice
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pipe = AmusedPipeline(vqvae=None, tokenizer=None, text_encoder=None, transformer=model, scheduler=scheduler)
  pipe.set_progress_bar_config(disable=True)
  return pipe, sum(p.numel() for p in model.parameters())


def run_reference(pipe, name: str, batch: int, steps: int, seed: int) -> np.ndarray:
  """Token ids [B, side, side] from the pipeline, with random prompt / negative-prompt embeddings."""
  spec = CONFIGS[name]
  g = torch.Generator().manual_seed(seed)
  emb = lambda *s: torch.randn(*s, generator=g)
  px = pipe.transformer.config.sample_size * pipe.vae_scale_factor  # pixels; the pipeline divides by the VQ factor
  text = (batch, spec["text_len"], spec["text_dim"])
  with torch.inference_mode():
    out = pipe(prompt_embeds=emb(batch, spec["text_dim"]), encoder_hidden_states=emb(*text),
               negative_prompt_embeds=emb(batch, spec["text_dim"]), negative_encoder_hidden_states=emb(*text),
               height=px, width=px, num_inference_steps=steps, guidance_scale=CFG_SCALE,
               output_type="latent", generator=g)
  return out.images.numpy()


COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_COMPILE_SECS = [0.0]


def _on_duration(event: str, secs: float, **_) -> None:
  if event in COMPILE_EVENTS:
    _COMPILE_SECS[0] += secs


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def timed_compile(fn: Callable[[], Any]) -> tuple[float, float, Any]:
  """(wall seconds, seconds jax spent tracing, lowering and XLA-compiling during the call, output)."""
  before = _COMPILE_SECS[0]
  wall, out = timed(fn)
  return wall, _COMPILE_SECS[0] - before, out


def bench(configs: list[str], batches: list[int], steps: int, repeats: int, threads: list[int],
          reference: set[str], log=print) -> list[dict[str, Any]]:
  rows = []
  for name in configs:
    c = muse_config(name)
    model = muse.MaskedTransformer(c)
    params = random_params(model, *muse.dummy_inputs(c))
    n_adapt = sum(x.size for x in jax.tree.leaves(params["adapters"]))
    n_base = sum(x.size for x in jax.tree.leaves(params)) - n_adapt
    pipe, n_ref = build_reference(name) if name in reference else (None, 0)
    log(f"[{name}] {n_base / 1e6:.2f}M base params + {n_adapt / 1e3:.0f}k adapter params"
        + (f"; reference UVit2D {n_ref / 1e6:.2f}M" if pipe else ""))
    dcfg = decode_config(c, steps)
    for batch in batches:
      text = jax.random.normal(jax.random.key(batch), (batch, c.text_len, c.text_dim), jnp.float32)

      def ours(mode: str, seed: int) -> np.ndarray:
        out = masked.sample(model, params, text, jax.random.key(seed), decode=dcfg,
                            guidance=masked.Guidance(mode=mode, form="diffusers"), scales=SCALES)
        return np.asarray(jax.block_until_ready(out))

      first, compile_s = {}, {}
      for mode in MODES:  # compile every mode before timing
        first[mode], compile_s[mode], out = timed_compile(lambda: ours(mode, 0))
        if out.shape != (batch, c.seq_len) or out.min() < 0 or out.max() >= c.codebook_size:
          raise SystemExit(f"{name} {mode}: bad sample shape {out.shape} / range [{out.min()}, {out.max()}].")
      th = None
      if pipe is not None:
        ref_call = lambda: run_reference(pipe, name, batch, steps, 0)
        th = bench_util.pick_threads(ref_call, threads) if len(threads) > 1 else threads[0]
        torch.set_num_threads(th)
      impls = list(MODES) + (["ref"] if pipe is not None else [])
      times = {k: [] for k in impls}
      for r in range(repeats):
        for impl in impls[r % len(impls):] + impls[:r % len(impls)]:
          fn = (lambda: run_reference(pipe, name, batch, steps, r + 1)) if impl == "ref" else (lambda: ours(impl, r + 1))
          times[impl].append(timed(fn)[0])
      med = {k: statistics.median(v) for k, v in times.items()}
      row = dict(config=name, params_m=n_base / 1e6, adapters_k=n_adapt / 1e3, batch=batch,
                 compile_s=compile_s["cfg"], first_minus_median_s=first["cfg"] - med["cfg"], ms_step=1e3 * med["cfg"] / steps,
                 **{f"ms_{m}": 1e3 * med[m] / batch for m in MODES},
                 sd_ratio=statistics.median(s / f for s, f in zip(times["styledrop"], times["cfg"])),
                 ref_ms=1e3 * med["ref"] / batch if pipe else None, ref_m=n_ref / 1e6, threads=th,
                 speedup=statistics.median(t / f for f, t in zip(times["cfg"], times["ref"])) if pipe else None)
      log(f"  batch {batch}: cfg {row['ms_cfg']:.0f} ms/image, none {row['ms_none']:.0f}, styledrop "
          f"{row['ms_styledrop']:.0f} (x{row['sd_ratio']:.2f} cfg), compile {row['compile_s']:.1f}s "
          f"(first call - median {row['first_minus_median_s']:.1f}s)"
          + (f"; reference {row['ref_ms']:.0f} ms/image ({th} threads), speedup x{row['speedup']:.2f}" if pipe else ""))
      rows.append(row)
  return rows


def markdown(rows: list[dict[str, Any]], header: str) -> str:
  lines = [header, "",
           "| config | params M | batch | compile s | ms/step | ms/image none | ms/image cfg | ms/image styledrop | "
           "styledrop / cfg | reference ms/image (UVit2D M params, torch threads) | speedup vs reference |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    ref = f"{r['ref_ms']:.1f} ({r['ref_m']:.3g}M, {r['threads']})" if r["ref_ms"] is not None else "not run"
    speed = f"{r['speedup']:.2f}x" if r["speedup"] is not None else "-"
    lines.append(f"| {r['config']} | {r['params_m']:.3g} + {r['adapters_k']:.3g}k adapters | {r['batch']} | "
                 f"{r['compile_s']:.1f} | {r['ms_step']:.1f} | {r['ms_none']:.1f} | {r['ms_cfg']:.1f} | "
                 f"{r['ms_styledrop']:.1f} | {r['sd_ratio']:.2f}x | {ref} | {speed} |")
  return "\n".join(lines) + "\n"


def matmul_gflops(n: int = 2048) -> float:
  """fp32 n x n matmul throughput of jax (best of 5): the machine's roofline at the time of the run."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  return 2 * n ** 3 / min(timed(lambda: f(a).block_until_ready())[0] for _ in range(5)) / 1e9


def machine() -> str:
  import diffusers
  return (f"{bench_util.cpu_and_load()}, jax 2048^2 fp32 matmul {matmul_gflops():.0f} GFLOP/s), "
          f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}")


def main(argv: list[str] | None = None) -> str:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--repeats", type=int, default=5, help="rotated timed runs per row (median reported)")
  p.add_argument("--quick", action="store_true", help="tiny config, batch 1, 2 repeats")
  p.add_argument("--configs", default=None, help=f"comma list of {sorted(CONFIGS)} (default tiny,small)")
  p.add_argument("--batches", default=None, help="comma list of batch sizes (default 1,8)")
  p.add_argument("--steps", type=int, default=12, help="decode steps per image (aMUSEd: 12)")
  p.add_argument("--reference", default=None,
                 help="comma list of configs that also time the diffusers reference, or 'none' "
                      "(default: tiny and minuscule; small costs ~5-10 s/image on 2 cores)")
  p.add_argument("--threads", default="auto", help="torch intra-op threads: N, or auto (faster of 1 and all cores)")
  p.add_argument("--out", default=None, help="also write the markdown table here")
  a = p.parse_args(argv)
  if a.repeats < 1 or a.steps < 1:
    p.error("--repeats and --steps must be >= 1")
  configs = (a.configs or ("tiny" if a.quick else "tiny,small")).split(",")
  ref_arg = a.reference if a.reference is not None else "tiny,minuscule"
  reference = set() if ref_arg == "none" else set(ref_arg.split(","))
  unknown = [c for c in configs + sorted(reference) if c not in CONFIGS]
  if unknown:
    p.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
  batches = [int(b) for b in (a.batches or ("1" if a.quick else "1,8")).split(",")]
  repeats = min(a.repeats, 2) if a.quick else a.repeats
  threads = bench_util.thread_candidates(p, a.threads)
  log = lambda s: print(s, file=sys.stderr, flush=True)
  desc = machine()
  log(desc)
  rows = bench(configs, batches, a.steps, repeats, threads, reference, log)
  header = (f"Muse decode, {a.steps} steps, all-[MASK] token grid (tiny/small: 16x16), text-conditioned, "
            f"CFG scale {CFG_SCALE:g}, StyleDrop λA={SCALES['lambda_a']:g} λB={SCALES['lambda_b']:g}; median of "
            f"{repeats} rotated runs (ratios: medians of per-repeat ratios; speedup = reference / stylejax cfg). "
            f"Machine: {desc}; 1-min load at end {os.getloadavg()[0]:.1f}.")
  return bench_util.emit(markdown(rows, header), a.out)


if __name__ == "__main__":
  main()
