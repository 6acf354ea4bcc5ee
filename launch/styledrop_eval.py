"""StyleDrop on ShapeStyle held-out styles: the issue's must-show figures, measured with 95% CIs.

  python launch/styledrop_eval.py --styles 5                  # ~30 min on a 2-core CPU
  python launch/styledrop_eval.py --styles 1 --prompts 2 --samples 1 --config configs/styledrop.py:runlocal \
      --base RUN --scorers CONTENT_RUN,STYLE_RUN               # smoke run

Per held-out style k (never seen by the base): one reference render, 2 rounds with CLIP feedback,
then base / round 1 / round 2 scored on content prompts whose shape differs from the reference's;
λA and λB sweeps on round 2; adapters vs LoRA at round 1 (same steps); with --best-of N, base and round 2 sampled
best of N by CLIP (rerunning into an OUT that holds the tunings only samples and scores). Per-image scores are pooled
over styles; "progress" = (tuned − base) / (ceiling − base) of style_fidelity, where the ceiling is the
style encoder's score of true renders of the prompts in the reference's style, or of those renders
encoded and decoded by the base's tokenizer (the most a token generator can reach).
Writes OUT/results.json and launch/STYLEDROP_EVAL.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from stylejax import config as config_lib  # noqa: E402  (light: ml_collections only)


def fmt(m) -> str:
  if m["mean"] is None:
    return "n/a"
  lo, hi = m["ci95"]
  return f"{m['mean']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{m['mean']:.3f}"


def parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--styles", type=int, default=5)
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--samples", type=int, default=4)
  ap.add_argument("--base", default="shapestyle:base")
  ap.add_argument("--config", default="configs/styledrop.py")
  ap.add_argument("--lora_config", default="configs/styledrop.py:lora")
  ap.add_argument("--scorers", default="", help="content_workdir,style_workdir (default: shipped)")
  ap.add_argument("--lambda_a", default="0,1,2,4")
  ap.add_argument("--lambda_b", default="0,1,3,5")
  ap.add_argument("--selection", default="clip", help="round-2 feedback: clip or scorer")
  ap.add_argument("--set", dest="config_set", action="append", default=[], metavar="KEY=VALUE",
                  type=config_lib.key_value, help="override the StyleDrop config's KEY for every style, e.g. "
                  "styledrop.candidates_per_prompt=16 (repeatable)")
  ap.add_argument("--best-of", dest="best_of", type=int, default=1,
                  help="N > 1 adds rows 'base best of N' and 'round2 best of N' (CLIP picks 1 of N per image)")
  ap.add_argument("--best-of-rank", dest="best_of_rank", default="cosine", choices=("cosine", "contrastive"),
                  help="how those rows rank their candidates (sample/best_of.py)")
  ap.add_argument("--no-lora", dest="lora", action="store_false", help="skip the LoRA round-1 row")
  ap.add_argument("--out", default="/tmp/styledrop_eval")
  ap.add_argument("--md", default=os.path.join(ROOT, "launch", "STYLEDROP_EVAL.md"))
  return ap


def main() -> None:
  args = parser().parse_args()

  from stylejax.methods import styledrop as sd_lib
  from stylejax.models import scorers as scorers_lib
  from stylejax.models.muse_pipeline import MusePipeline
  from stylejax.models.parts import load_clip_embedder
  scorers = scorers_lib.scorers_from_workdirs(*args.scorers.split(",")) if args.scorers else \
      scorers_lib.scorers_from_workdirs()
  base = MusePipeline.load(args.base)
  clip = load_clip_embedder(base.config.text_encoder)
  size = base.tokenizer.image_size
  pooled: dict[str, dict[str, list]] = {}
  per_style = []
  t0 = time.time()

  for k in range(args.styles):
    style, content, reference = heldout_reference(k, size)
    print(f"== style {k}: {style.descriptor!r}, reference {content.caption!r}", flush=True)
    kw = dict(ref_shape=content.shape, scorers=scorers, clip=clip, num_prompts=args.prompts, samples=args.samples,
              seed=k, ceiling_style=style, tokenizer=base.tokenizer)
    workdir = os.path.join(args.out, f"style{k}")
    sd = sd_lib.tune(args.base, reference, style.descriptor, content.caption, rounds=2, selection=args.selection,
                     workdir=workdir, config=args.config, **dict(args.config_set))
    r1 = sd_lib.load(workdir, 1)
    rows = {"base": lambda p, n, s: base.generate(p, n, s), "round1": r1.generate, "round2": sd.generate}
    tuned = {"adapters": sd}
    if args.lora:
      tuned["lora"] = sd_lib.tune(args.base, reference, style.descriptor, content.caption, rounds=1, selection="clip",
                                  workdir=os.path.join(args.out, f"style{k}_lora"), config=args.lora_config)
      rows["round1 (LoRA)"] = tuned["lora"].generate
    if args.best_of > 1:
      pick = dict(best_of=args.best_of, best_of_rank=args.best_of_rank)
      by = f"best of {args.best_of}" + (f" ({args.best_of_rank})" if args.best_of_rank != "cosine" else "")
      rows[f"base {by}"] = lambda p, n, s: base.generate(p, n, s, **pick)
      rows[f"round2 {by}"] = lambda p, n, s: sd.generate(p, n, s, **pick)
    for la in filter(None, args.lambda_a.split(",")):
      rows[f"round2 λA={la}"] = lambda p, n, s, la=float(la): sd.generate(p, n, s, style_guidance=la)
    for lb in filter(None, args.lambda_b.split(",")):
      rows[f"round2 λB={lb}"] = lambda p, n, s, lb=float(lb): sd.generate(p, n, s, content_guidance=lb)
    count = lambda tree: sum(int(np.size(x)) for x in jax.tree.leaves(tree))
    style_result = {"style": k, "descriptor": style.descriptor, "reference": content.caption,
                    "params": {name: {"adapters": count(m.pipe.params["adapters"]), "all": count(m.pipe.params)}
                               for name, m in tuned.items()}}
    for row, gen in rows.items():
      metrics, _, per = sd_lib.evaluate(gen, reference, style.descriptor, **kw)
      add_to_pool(pooled, row, per)
      style_result[row] = metrics
    per_style.append(style_result)
    print(json.dumps({r: {m: round(v["mean"], 3) for m, v in style_result[r].items() if v["mean"] is not None}
                      for r in ("base", "round1", "round2")}), flush=True)

  table = summarize_pool(pooled)
  os.makedirs(args.out, exist_ok=True)
  results = {"pooled": table, "per_style": per_style, "seconds": time.time() - t0, "args": vars(args)}
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  write_md(results, args.md)


def heldout_reference(k: int, size: int):
  """(style, content, reference image [size, size, 3]) for held-out style k: one render of a single shape."""
  from stylejax.data import shapestyle as ss
  style = ss.heldout_style(k)
  rng = np.random.default_rng([k, 0x5D])
  content = ss.Content(int(rng.integers(len(ss.SHAPES))), int(rng.integers(len(ss.COLORS))), 1)
  return style, content, ss.render(content, style, size, rng)[0]


def add_to_pool(pooled: dict, row: str, per: dict) -> None:
  """Appends one style's per-image scores {metric: [n]} to pooled[row][metric] (concatenated at the end)."""
  for name, v in per.items():
    pooled.setdefault(row, {}).setdefault(name, []).append(np.asarray(v, np.float64))


def summarize_pool(pooled: dict) -> dict:
  """{row: styledrop.summarize(that row's scores over all styles)} of an add_to_pool pool."""
  from stylejax.methods import styledrop as sd_lib
  return {row: sd_lib.summarize({n: np.concatenate(v) for n, v in names.items()}) for row, names in pooled.items()}


def progress(base: float, tuned: float, ceiling: float) -> float | None:
  """How far `tuned` went from `base` toward `ceiling`; None where the ceiling is not clearly above the base
  (a style the tokenizer cannot render: the ratio would be noise over ~0)."""
  return (tuned - base) / (ceiling - base) if ceiling - base > 0.05 else None


def command_flags(a: dict) -> str:
  """The flags of the styledrop_eval.py run whose args are `a` (those that change its rows)."""
  default = parser().get_default
  flags = [f"--styles {a['styles']} --prompts {a['prompts']} --samples {a['samples']}"]
  if a.get("selection", default("selection")) != default("selection"):
    flags.append(f"--selection {a['selection']}")
  if not a.get("lora", True):
    flags.append("--no-lora")
  flags += [f"--{k} '{a[k]}'" for k in ("lambda_a", "lambda_b") if a.get(k, default(k)) != default(k)]
  if a.get("best_of", 1) > 1:
    flags.append(f"--best-of {a['best_of']}")
  if a.get("best_of_rank", "cosine") != "cosine":
    flags.append(f"--best-of-rank {a['best_of_rank']}")
  return " ".join(flags + [f"--set {k}={v}" for k, v in a.get("config_set", [])])


def write_md(results: dict, md: str) -> None:
  """The markdown table of a results.json (pooled rows; progress to both ceilings at round 1 and 2)."""
  a, table, per_style = results["args"], results["pooled"], results["per_style"]
  names = ["text_fidelity", "style_fidelity", "content_leakage", "clip_t", "clip_i", "style_fidelity_ceiling",
           "style_fidelity_token_ceiling"]
  lines = ["# StyleDrop on ShapeStyle held-out styles (measured)", "",
           f"`python launch/styledrop_eval.py {command_flags(a)}` "
           f"(config `{a['config']}`, base `{a['base']}`, round-2 feedback `{a.get('selection', 'clip')}`): "
           f"{a['styles']} held-out styles × {a['prompts']} content prompts × {a['samples']} samples per row, "
           f"pooled; mean [95% CI]. Wall time {results['seconds'] / 60:.1f} min on a 2-core CPU.", "",
           "| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for row, m in table.items():
    lines.append(f"| {row} | " + " | ".join(fmt(m[n]) if n in m else "" for n in names) + " |")
  for name, p in per_style[0]["params"].items():
    lines.append(f"- {name}: {p['adapters']:,} trained params = {100 * p['adapters'] / p['all']:.2f}% of {p['all']:,}")
  lines += ["", "style_fidelity progress from base toward a ceiling, (tuned − base) / (ceiling − base): pooled "
            "means; per style only where the ceiling is > 0.05 above the base.", "",
            "| model | to true renders (pooled) | per style | to the tokenizer's renders (pooled) | per style |",
            "|---|---|---|---|---|"]
  mean = lambda row, n: table[row][n]["mean"]
  cell = lambda v: "n/a" if v is None else f"{v:.2f}"
  for row in ("round1", "round2"):
    cells = []
    for ceiling in ("style_fidelity_ceiling", "style_fidelity_token_ceiling"):
      cells.append(cell(progress(mean("base", "style_fidelity"), mean(row, "style_fidelity"), mean(row, ceiling))))
      cells.append(", ".join(cell(progress(s["base"]["style_fidelity"]["mean"], s[row]["style_fidelity"]["mean"],
                                           s[row][ceiling]["mean"])) for s in per_style))
    lines.append(f"| {row} | " + " | ".join(cells) + " |")
  with open(md, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
