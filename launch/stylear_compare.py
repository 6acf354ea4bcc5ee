"""Paired StyleAR evaluation of runs or sampling settings on the same items, against the first.

  python launch/stylear_compare.py RUN RUN@cfg_scale=3.0 RUN@style_scale=1.0,cfg_scale=6.0 [--seed 1]
  python launch/stylear_compare.py RUN_A RUN_B --num-styles 8 --prompts-per-style 6 --samples 4

Each spec is a StyleAR workdir (or the AR base: style named in the caption), optionally with sampling overrides
after `@` (comma-separated key=value; `ARImagePipeline.generate` keywords: cfg_scale, style_scale, noise,
temperature, top_k, top_p, best_of, ...). Every spec is scored with `stylear.evaluate` on the same protocol (held-out
styles x prompts of another shape x samples, seed), so the items pair: text_fidelity and content_leakage by
gained / lost items and McNemar's exact p, style_fidelity by the mean per-image difference; each with the
difference's 95% CI clustered by (reference, prompt), as `launch/stylear_ablations.py` reports. A best_of > 1 spec
also prints text_fidelity_oracle: the rate at which any of its N candidates is right (what a perfect ranking scores).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from base_compare import parse_run  # noqa: E402
from stylear_ablations import PAIRED, fmt_metric, paired_reports  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, dict]:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("runs", nargs="+", help="StyleAR (or AR base) workdirs, each optionally @k=v,... sampling "
                  "overrides; the first is the reference")
  ap.add_argument("--num-styles", dest="num_styles", type=int, default=8)
  ap.add_argument("--prompts-per-style", dest="prompts_per_style", type=int, default=6)
  ap.add_argument("--samples", type=int, default=4)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--scorers", default="", help="scorers .safetensors (default: the shipped scorers)")
  args = ap.parse_args(argv)
  from stylejax.methods import stylear
  from stylejax.models import ar_t2i, scorers as scorers_lib
  from stylejax.sample.best_of import BestOfError
  from stylejax.shipped import ShippedError
  from stylejax.train.trainer import TrainError
  scorers = scorers_lib.load_scorers(args.scorers) if args.scorers else scorers_lib.scorers_from_workdirs()
  protocol = dict(num_styles=args.num_styles, prompts_per_style=args.prompts_per_style, samples=args.samples,
                  seed=args.seed)
  per_image, pipes = {}, {}
  for spec in args.runs:
    path, overrides = parse_run(spec)
    try:
      pipes[path] = pipes.get(path) or stylear.load(path)
      metrics, per_image[spec] = stylear.evaluate(pipes[path], scorers, **protocol, return_per_image=True,
                                                  **overrides)
    except (ShippedError, TrainError, ar_t2i.PipelineError, BestOfError) as e:
      sys.exit(f"error: {spec}: {e}")
    oracle = metrics.get("text_fidelity_oracle")  # best_of > 1: any of the N candidates right
    print(f"{spec}: " + ", ".join(f"{k} {fmt_metric(metrics[k])}" for k in PAIRED) +
          (f", text_fidelity_oracle {fmt_metric(oracle)}" if oracle else "") +
          f" (n = {metrics['text_fidelity']['n']})", flush=True)
  ref = args.runs[0]
  for spec in args.runs[1:]:
    for k, report in zip(PAIRED, paired_reports(per_image[ref], per_image[spec], args.samples)):
      print(f"{spec} vs {ref} {k}: {report}", flush=True)
  return per_image


if __name__ == "__main__":
  main()
