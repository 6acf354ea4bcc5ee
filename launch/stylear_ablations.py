"""StyleAR must-show ablations on ShapeStyle: trains each variant from one AR base and writes a table.

Variants (each a configs/stylear.py run initialised from --base, same steps and data seed):
  stylear        style-enhanced tokens on (sigma 0.1 train / 0.3 infer), mix 1:3      (the recipe)
  no_noise       style-enhanced tokens off (sigma 0 / 0)
  stylized_only  mix 1:0
  mix_1_30       mix 1:30
  structure      `stylear` + structure control (the prompt's shape mask as a tokenized prefix image)
  two_scale      `stylear`'s run sampled with two-scale guidance over the style-only context (text dropped,
                 style tokens kept): l_img + 1 (l_style - l_img) + 4 (l_cond - l_style) (sample.style_scale;
                 not in the paper; no training of its own)
  text_dropout   `two_scale` on a run trained with 10% text-only dropout (cond.text_dropout), so the
                 style-only context is one it has seen
  stylear_dpo    `stylear` + DPO post-training on pairs from its own samples ranked by the scorers
  base           the AR base itself, untrained here (style named in the caption instead of tokens)
Each is scored with `stylear.evaluate` (held-out styles x prompts of another shape x samples):
text_fidelity, style_fidelity, content_leakage, clip_t, clip_i as mean [95% CI]; the structure
variant also gets structure adherence (IoU of the estimated foreground with the given mask, with its
chance level and the estimator's ceiling on true renders). Every variant scores the same items
(same protocol and seed), so each is also compared paired against the recipe (`stylear`): the binary
metrics by discordant counts and the exact McNemar p, style_fidelity by the mean per-image difference
[95% CI] - far more sensitive than overlapping CIs.

  python launch/stylear_ablations.py --base /tmp/ar --out /tmp/stylear_ablations --steps 2000
  python launch/stylear_ablations.py --runlocal --out /tmp/abl        # seconds: random parts and base

Writes OUT/ablations.md (the table), OUT/ablations.json (all metrics) and one workdir per variant
under OUT (re-running resumes / skips finished trainings; OUT/.jax_cache keeps compiled programs).
Invocations with the same settings and OUT add their variants to one table (`--variants` in pieces).
Runlocal takes ~1 min on 2 busy CPU cores, mostly the trainer's per-variant init + step compiles.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stylejax import config as config_lib  # noqa: E402  (light: ml_collections only)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("text_fidelity", "style_fidelity", "content_leakage", "clip_t", "clip_i")
# name -> (config overrides, evaluation overrides)
VARIANTS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "stylear": ({}, {}),
    "no_noise": ({"style.noise": "0.0"}, {"noise": 0.0}),
    "stylized_only": ({"data.mix": "1:0"}, {}),
    "mix_1_30": ({"data.mix": "1:30"}, {}),
    "structure": ({"structure.enabled": "True"}, {}),
    "two_scale": ({}, {"style_scale": 1.0}),
    "text_dropout": ({"cond.text_dropout": "0.1"}, {"style_scale": 1.0}),
}
DPO, BASE = "stylear_dpo", "base"
STRUCTURE = ("structure_iou", "structure_iou_chance", "structure_iou_ceiling")
PAIRED = ("text_fidelity", "content_leakage", "style_fidelity")  # compared item by item against RECIPE
PAIRED_RATES = ("text_fidelity", "content_leakage")  # binary: McNemar; the rest: mean difference
RECIPE = "stylear"
LABELS = {
    "stylear": "StyleAR (noise 0.1/0.3, mix 1:3)",
    "no_noise": "no style-enhanced tokens",
    "stylized_only": "stylized only (1:0)",
    "mix_1_30": "mix 1:30",
    "structure": "StyleAR + structure control",
    "two_scale": "StyleAR, two-scale guidance (style scale 1; prompt scale = the recipe's cfg_scale)",
    "text_dropout": "StyleAR + 10% text dropout, two-scale guidance",
    DPO: "StyleAR + DPO",
    BASE: "AR base (style in the caption)",
}
EXTRAS = [DPO, BASE]


def random_scorers(image_size: int = 32, seed: int = 0):
  """Untrained tiny scorers (runlocal smoke runs only): numpy-random params, no compile."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  from stylejax.models import scorers as S
  cfg = dict(widths=[8, 16], hidden=16, embed_dim=8)
  rng = np.random.default_rng(seed)

  def params(model):
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3),
                                                                                    jnp.uint8))["params"])
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.3, shapes)

  return S.Scorers(content_config=cfg, content_params=params(S.content_classifier(cfg)), style_config=cfg,
                   style_params=params(S.style_encoder(cfg)), image_size=image_size)


def fmt_metric(m: dict[str, Any] | None) -> str:
  """mean [clustered 95% CI]; results from before `ci95_clustered` existed show the per-image CI, marked †."""
  if not m or m.get("mean") is None:
    return "–"
  lo, hi = m.get("ci95_clustered", m["ci95"])
  ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
  return f"{m['mean']:.3f}{ci}" + ("" if "ci95_clustered" in m else "†")


def paired_reports(ref: dict[str, Any], other: dict[str, Any], samples: int = 1) -> list[str]:
  """One report per PAIRED metric of `other`'s per-image scores against `ref`'s on the same items (NaN items
  skipped); `samples` per prompt (job order groups them) makes the (reference, prompt) clusters of the CIs."""
  import numpy as np
  from stylejax.eval import metrics as M
  cells = []
  for k in PAIRED:
    a, b = np.asarray(ref[k], float), np.asarray(other[k], float)
    keep = ~np.isnan(a) & ~np.isnan(b)
    report = M.paired_report if k in PAIRED_RATES else M.paired_difference
    cells.append(report(a[keep], b[keep], (np.arange(a.size) // samples)[keep]))
  return cells


def paired_lines(per_image: dict[str, dict[str, list[float]]], samples: int = 1) -> list[str]:
  """Markdown rows: each variant's PAIRED metrics vs the recipe's on the same items (`paired_reports`)."""
  if RECIPE not in per_image:
    return []
  rows = []
  for name, scores in per_image.items():
    if name == RECIPE:
      continue
    cells = paired_reports(per_image[RECIPE], scores, samples)
    rows.append("| " + " | ".join([LABELS.get(name, name)] + cells) + " |")
  head = ["variant"] + [f"{k} (recipe -> variant)" for k in PAIRED]
  intro = (f"Paired against {LABELS[RECIPE]} on the same items: rates as gained / lost items and the exact "
           "McNemar p; style_fidelity as the mean per-image difference [95% CI]; each with the difference's "
           "95% CI clustered by (reference, prompt).")
  return ["", intro, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + rows if rows else []


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace,
          per_image: dict[str, dict[str, list[float]]] | None = None) -> str:
  ns = {k: next((r[k]["n"] for r in results.values() if k in r), 0) for k in METRICS}
  head = ["variant"] + [f"{k} (n={ns[k]})" for k in METRICS]
  lines = [f"StyleAR ablations on ShapeStyle: {args.steps} steps per variant from base "
           f"{args.base or '(random)'}; eval {args.num_styles} held-out styles x {args.prompts_per_style} "
           f"prompts x {args.samples} samples, seed {args.seed}. Mean [95% CI, clustered by (reference, "
           f"prompt): cluster bootstrap, `metrics.cluster_ci`]; † the per-image CI (Wilson for text_fidelity / "
           f"content_leakage, normal for cosines) of results from before clustered CIs.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in results.items():
    lines.append("| " + " | ".join([LABELS.get(name, name)] + [fmt_metric(r.get(k)) for k in METRICS]) + " |")
  lines += paired_lines(per_image or {}, args.samples)
  rows = {name: r for name, r in results.items() if "structure_iou" in r}
  if rows:
    lines += ["", "Structure adherence: IoU of the estimated foreground (`metrics.foreground_mask`) with the given mask; "
              "chance = against another prompt's mask; ceiling = the estimator on true renders of the same contents "
              "and styles.", "", "| variant | structure_iou | chance | ceiling |", "|---|---|---|---|"]
    for name, r in rows.items():
      lines.append("| " + " | ".join([LABELS.get(name, name)] + [fmt_metric(r.get(k)) for k in STRUCTURE]) + " |")
  return "\n".join(lines) + "\n"


# the settings that make two invocations' numbers comparable (same table)
COMPARABLE = ("base", "steps", "dpo_steps", "runlocal", "scorers", "num_styles", "prompts_per_style", "samples",
              "dpo_prompts", "seed", "config_set")


def earlier_results(path: str, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
  """Results (and per-image scores) an earlier invocation with the same settings left in
  OUT/ablations.json, so variants run in several invocations end up in one table (a different
  setting starts the table afresh)."""
  if not os.path.exists(path):
    return {}, {}
  with open(path) as f:
    earlier = json.load(f)
  same = all(earlier.get("args", {}).get(k) == json.loads(json.dumps(getattr(args, k))) for k in COMPARABLE)
  return (earlier.get("results", {}), earlier.get("per_image", {})) if same else ({}, {})


def _finished(workdir: str, total_steps: int) -> bool:
  """Whether `workdir` holds a checkpoint at `total_steps` or later."""
  from stylejax import checkpoint as ckpt_lib
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):  # the Checkpointer would create it
    return False
  checkpointer = ckpt_lib.Checkpointer(folder)
  latest = checkpointer.latest_step()
  checkpointer.close()
  return latest is not None and latest >= total_steps


def _train(spec: str, workdir: str, overrides: dict[str, str]):
  """Trains (or resumes / skips) one variant; returns its sampling pipeline (from the final state
  when this call trained, so nothing is rebuilt or restored)."""
  from stylejax.methods import stylear
  from stylejax.models.ar_t2i import ARImagePipeline
  from stylejax.train import trainer
  from stylejax.train.task import load_task
  config = config_lib.load_config(os.path.join(REPO, spec), {"progress": "false", **overrides})
  summary = trainer.train(config, workdir)
  if "state" not in summary:
    return stylear.load(workdir)
  state = summary["state"]
  return ARImagePipeline(config, load_task(config), state.get("ema", state["params"]))


def main(argv: list[str] | None = None) -> str:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--base", default="", help="AR base workdir (configs/ar.py run) or shipped name; '' = random")
  p.add_argument("--out", required=True, help="output directory (table, JSON, variant workdirs)")
  p.add_argument("--steps", type=int, default=None, help="training steps per variant (default: the config's)")
  p.add_argument("--dpo-steps", type=int, default=None, help="DPO steps (default: the dpo config's)")
  p.add_argument("--runlocal", action="store_true", help="tiny configs, random parts and scorers: seconds")
  p.add_argument("--scorers", default="", help="scorers .safetensors (default: the shipped scorers)")
  p.add_argument("--num-styles", dest="num_styles", type=int, default=10)
  p.add_argument("--prompts-per-style", dest="prompts_per_style", type=int, default=20)
  p.add_argument("--samples", type=int, default=4)
  p.add_argument("--dpo-prompts", dest="dpo_prompts", type=int, default=None)
  p.add_argument("--set", dest="config_set", action="append", default=[], metavar="KEY=VALUE",
                 type=config_lib.key_value,
                 help="override configs/stylear.py's KEY for every variant, e.g. model.lora_rank=16 (repeatable)")
  p.add_argument("--dpo-set", dest="dpo_set", action="append", default=[], metavar="KEY=VALUE",
                 type=config_lib.key_value,
                 help="override configs/stylear.py:dpo's dpo.KEY for pairs and training, e.g. "
                      "score_weights.style=0.25 or sft_weight=1 (repeatable)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--variants", default=",".join(list(VARIANTS) + EXTRAS),
                 help="comma-separated subset of " + ", ".join(list(VARIANTS) + EXTRAS))
  args = p.parse_args(argv)
  wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
  unknown = sorted(set(wanted) - set(VARIANTS) - set(EXTRAS))
  if unknown:
    p.error(f"unknown variants {unknown}")
  if args.runlocal:
    args.steps = args.steps or 2
    args.dpo_steps = args.dpo_steps or 2
    args.num_styles, args.prompts_per_style, args.samples = min(args.num_styles, 2), min(args.prompts_per_style, 2), 1
    args.dpo_prompts = args.dpo_prompts or 4

  from stylejax.methods import stylear
  from stylejax.models import scorers as scorers_lib
  if args.scorers:
    scorers = scorers_lib.load_scorers(args.scorers)
  elif args.runlocal:
    scorers = random_scorers()
  else:
    scorers = scorers_lib.scorers_from_workdirs()
  suffix = ":runlocal" if args.runlocal else ""
  common = {"init_from.workdir": args.base, **dict(args.config_set)}
  if args.steps:
    common["total_steps"] = str(args.steps)
  eval_kw = dict(num_styles=args.num_styles, prompts_per_style=args.prompts_per_style, samples=args.samples,
                 seed=args.seed, batch_size=8 if args.runlocal else 32)
  os.makedirs(args.out, exist_ok=True)
  results: dict[str, dict[str, Any]] = {}
  per_image: dict[str, dict[str, list[float]]] = {}

  def evaluate(name: str, pipe: Any, **overrides: Any) -> None:
    results[name], scores = stylear.evaluate(pipe, scorers, **eval_kw, **overrides, return_per_image=True)
    per_image[name] = {k: [float(x) for x in scores[k]] for k in PAIRED}

  if BASE in wanted:
    if not args.base:
      p.error("the base variant evaluates --base; name one (e.g. --base shapestyle:ar)")
    evaluate(BASE, stylear.load(args.base))
  pipes = {}
  needs_recipe = DPO in wanted and "stylear" not in wanted
  for name in [v for v in VARIANTS if v in wanted or (needs_recipe and v == "stylear")]:
    overrides, eval_overrides = VARIANTS[name]
    run = name if overrides else RECIPE  # sampling-only variants evaluate the recipe's run
    if run not in pipes:
      pipes[run] = _train("configs/stylear.py" + suffix, os.path.join(args.out, run), {**common, **overrides})
    pipes[name] = pipes[run]
    if name in wanted:
      evaluate(name, pipes[name], **eval_overrides)
      print(f"{name}: " + ", ".join(f"{k} {fmt_metric(results[name].get(k))}" for k in METRICS), flush=True)
  if DPO in wanted:
    recipe, pairs = os.path.join(args.out, "stylear"), os.path.join(args.out, "dpo_pairs.npz")
    dpo_spec = "configs/stylear.py:dpo" + (",runlocal" if args.runlocal else "")
    dpo_set = {f"dpo.{k}": v for k, v in args.dpo_set}
    dpo_config = config_lib.load_config(os.path.join(REPO, dpo_spec), dpo_set)
    if _finished(os.path.join(args.out, DPO), args.dpo_steps or dpo_config.total_steps):
      print("DPO run already trained: evaluating it (its pairs are not rebuilt)", flush=True)
      evaluate(DPO, stylear.load(os.path.join(args.out, DPO)))
    else:
      d = dpo_config.dpo
      info = stylear.build_dpo_pairs(pipes["stylear"], scorers, pairs, num_prompts=args.dpo_prompts or d.num_prompts,
                                     samples_per_prompt=d.samples_per_prompt, seed=args.seed,
                                     weights=d.score_weights.to_dict(), batch_size=eval_kw["batch_size"],
                                     min_gap=float(d.min_gap), logp_cfg_scale=float(d.logp_cfg_scale))
      print(f"DPO pairs: {info}", flush=True)
      overrides = {**dict(args.config_set), "init_from.workdir": recipe, "dpo.pairs": pairs, **dpo_set}
      if args.dpo_steps:
        overrides["total_steps"] = str(args.dpo_steps)
      evaluate(DPO, _train(dpo_spec, os.path.join(args.out, DPO), overrides))
  earlier, earlier_per_image = earlier_results(os.path.join(args.out, "ablations.json"), args)

  def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    both = {**old, **new}
    return {name: both[name] for name in [BASE, *VARIANTS, DPO] if name in both}

  results, per_image = merged(earlier, results), merged(earlier_per_image, per_image)
  text = table(results, args, per_image)
  with open(os.path.join(args.out, "ablations.md"), "w") as f:
    f.write(text)
  with open(os.path.join(args.out, "ablations.json"), "w") as f:
    json.dump({"args": vars(args), "results": results, "per_image": per_image}, f, indent=2)
  print(text)
  return text


def use_compile_cache(directory: str) -> None:
  """Variants share most programs (same shapes; the mix variants differ only in data), so a
  persistent XLA compilation cache turns their repeated compiles into hits (runlocal: ~2x faster).
  Set before the first compile of the process, so only the script entry point does it."""
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


if __name__ == "__main__":
  _out = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--out=")), None)
  if _out is None and "--out" in sys.argv[:-1]:
    _out = sys.argv[sys.argv.index("--out") + 1]
  if _out:
    use_compile_cache(os.path.join(_out, ".jax_cache"))
  main()
