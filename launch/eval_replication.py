"""Are the evaluation's 95% CIs honest? The same models scored on two evaluation sets.

Reads two `launch/stylear_ablations.py` outputs (OUT/ablations.json) made with different `--seed`
(other held-out references, prompts and sampling seeds) and, for each variant in both whose model is
the same in both runs, asks whether the difference between the two sets' means is as small as each
set's interval claims: z = (mean_A - mean_B) / sqrt(se_A^2 + se_B^2), with the standard errors

  iid      sd / sqrt(n): every image an independent draw (what the Wilson / normal CIs assume)
  prompt   cluster bootstrap over (reference, prompt) cells: the K samples of one prompt share it
  style    cluster bootstrap over references: all images made with one reference share it

If an interval is honest, z is standard normal and its RMS over variants and metrics is ~1; well above 1
means the interval is too narrow (the set, not the model, moves the number), below 1 too wide.

  python launch/eval_replication.py OUT_SEED0 OUT_SEED1 [OUT2_SEED0 OUT2_SEED1 ...] --variants base,stylear

Several pairs of runs (e.g. ablations from two AR bases) pool into one RMS.

`stylear_dpo` is left out by default: each run builds DPO pairs from its own evaluation seed, so the
two DPO rows are different models (give them explicitly only when one run re-scored the other's model).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stylejax.eval import metrics as M  # noqa: E402

METRICS = ("text_fidelity", "style_fidelity", "content_leakage")
UNITS = ("iid", "prompt", "style")
SAME_MODEL = ("base", "steps", "runlocal", "scorers", "config_set", "num_styles", "prompts_per_style", "samples")


def _load(p: argparse.ArgumentParser, path: str) -> dict:
  path = os.path.join(path, "ablations.json") if os.path.isdir(path) else path
  if not os.path.exists(path):
    p.error(f"{path} not found; give a launch/stylear_ablations.py --out directory or its ablations.json.")
  with open(path) as f:
    return json.load(f)


def standard_error(values: np.ndarray, unit: str, prompts: int, samples: int) -> float:
  """SE of the mean of per-image scores [N] (job order: style-major, then prompt, then sample)."""
  n = values.size
  if unit == "iid":
    v = values[~np.isnan(values)]
    return float(v.std(ddof=1) / np.sqrt(v.size))
  per = samples if unit == "prompt" else prompts * samples
  return M.cluster_bootstrap_se(values, np.arange(n) // per)


def replication_rows(pairs: list[tuple[dict, dict, list[str]]]
                     ) -> tuple[list[list[str]], dict[str, dict[str, float]]]:
  """Rows (variant, metric, means, z per unit) for each (run A, run B, variants), and the RMS z over
  all of them per metric (and "all") and unit."""
  rows, zs = [], {(k, u): [] for k in METRICS + ("all",) for u in UNITS}
  for a, b, v in ((a, b, v) for a, b, variants in pairs for v in variants):
    prompts, samples = a["args"]["prompts_per_style"], a["args"]["samples"]
    for k in METRICS:
      x, y = (np.asarray(r["per_image"][v][k], np.float64) for r in (a, b))
      cells = [v, k, f"{np.nanmean(x):.3f}", f"{np.nanmean(y):.3f}"]
      for u in UNITS:
        diff, se = np.nanmean(x) - np.nanmean(y), np.hypot(*(standard_error(s, u, prompts, samples) for s in (x, y)))
        z = diff / se if se > 0 else (0.0 if diff == 0 else np.inf)  # constant scores: no spread to compare
        zs[(k, u)].append(z)
        zs[("all", u)].append(z)
        cells.append(f"{z:+.2f}")
      rows.append(cells)
  rms = {k: {u: float(np.sqrt(np.mean(np.square(zs[(k, u)])))) for u in UNITS} for k in METRICS + ("all",)}
  return rows, rms


def _pair(p: argparse.ArgumentParser, path_a: str, path_b: str, wanted: list[str]) -> tuple[dict, dict, list[str]]:
  a, b = _load(p, path_a), _load(p, path_b)
  differ = [k for k in SAME_MODEL if a["args"].get(k) != b["args"].get(k)]
  if differ:
    p.error(f"{path_a} and {path_b} differ in {differ}; a pair must score the same models the same way.")
  both = [v for v in a["per_image"] if v in b["per_image"]]
  variants = wanted or [v for v in both if v != "stylear_dpo"]
  missing = sorted(set(variants) - set(both))
  if missing:
    p.error(f"variants {missing} are not scored in both {path_a} and {path_b} (both have: {', '.join(both)}).")
  return a, b, variants


def main(argv: list[str] | None = None) -> str:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("runs", nargs="+", help="pairs of stylear_ablations --out directories (or their ablations.json): "
                                         "A B [A2 B2 ...], each B the same settings as its A at another --seed")
  p.add_argument("--variants", default="", help="comma-separated (default: every variant in both but stylear_dpo)")
  args = p.parse_args(argv)
  if len(args.runs) % 2:
    p.error(f"runs come in pairs (A B, each scored at another --seed); got {len(args.runs)} paths.")
  wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
  pairs = [_pair(p, args.runs[i], args.runs[i + 1], wanted) for i in range(0, len(args.runs), 2)]
  rows, rms = replication_rows(pairs)
  head = ["variant", "metric", "mean A", "mean B"] + [f"z ({u})" for u in UNITS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
  lines += [f"| RMS z | {k} | | | " + " | ".join(f"{rms[k][u]:.2f}" for u in UNITS) + " |" for k in rms]
  text = "\n".join(lines) + "\n"
  print(text)
  return text


if __name__ == "__main__":
  main()
