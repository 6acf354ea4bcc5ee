"""Paired text_fidelity of text-to-image bases (Muse or AR) on the same held-out prompts, McNemar against the first.

  python launch/base_compare.py shapestyle:ar RUN [RUN ...] [--prompts 96] [--seeds 2]
  python launch/base_compare.py shapestyle:ar shapestyle:ar@temperature=0.7,top_k=10   # sampling settings
  python launch/base_compare.py shapestyle:base shapestyle:base@best_of=4 --prompts 384 --seeds 1   # CLIP's pick of 4

A run may carry sampling overrides after `@` (comma-separated key=value, the pipeline's `generate` keywords:
AR `cfg_scale`, `temperature`, `top_k`, `top_p`; Muse `scale`, `num_steps`, `choice_temperature`, `ramp`, ...; both
`best_of`), so settings pair too.

Every base draws one image per held-out prompt (`shapestyle_eval.heldout_prompts`: plain and named sets, the
prompts `stylejax eval` uses) for each sampling seed, so n = prompts x seeds per set. Items pair by (prompt,
seed); McNemar's exact test on the items one base gets right and the other not sees differences that two
separate Wilson intervals cannot. McNemar takes the items as independent, but a prompt's seeds share its
content, so with --seeds > 1 each line also gives the difference's 95% interval under the cluster bootstrap over
prompts (`metrics.paired_report` clusters). Confirm a gain on distinct prompts (--prompts 384 --seeds 1) before
trusting it: stop 42's 96 x 4 gain (McNemar p = 0.009, clustered interval above zero) did not replicate there.
Seed 0 reproduces `stylejax eval`'s text_fidelity for the same prompts.
"""
import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_run(spec: str) -> tuple[str, dict]:
  """"RUN@k=v,k=v" -> (RUN, {k: v}); values are parsed as Python literals where they are one, else kept as text."""
  import ast
  run, _, settings = spec.partition("@")
  overrides = {}
  for item in filter(None, settings.split(",")):
    key, eq, value = item.partition("=")
    if not eq or not key:
      sys.exit(f"error: sampling override {item!r} in {spec!r} is not key=value; write RUN@temperature=0.7,top_k=10.")
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return run, overrides


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("runs", nargs="+", help="Muse or AR workdirs or shipped names, each optionally @k=v,... sampling "
                  "overrides; the first is the reference")
  ap.add_argument("--prompts", type=int, default=96, help="held-out prompts per set (plain, named)")
  ap.add_argument("--seeds", type=int, default=1, help="sampling seeds per prompt")
  args = ap.parse_args()
  import numpy as np
  from stylejax.eval import metrics as M
  from stylejax.eval import shapestyle_eval as E
  from stylejax.models import scorers as scorers_lib
  from stylejax.models.ar_t2i import PipelineError as ARPipelineError
  from stylejax.models.muse_pipeline import PipelineError as MusePipelineError
  from stylejax.sample.best_of import BestOfError
  from stylejax.shipped import ShippedError
  from stylejax.train.trainer import TrainError
  scorers = scorers_lib.scorers_from_workdirs()
  hits, shape_hits, sets, generators = {}, {}, None, {}
  for spec in args.runs:
    path, overrides = parse_run(spec)
    if path not in generators:  # one pipeline per run, however many settings it is sampled under
      try:
        generators[path] = E.text_to_image_generator(path)
      except (ShippedError, TrainError) as e:
        sys.exit(f"error: {e}")
    t2i = generators[path]
    if t2i is None:
      sys.exit(f"error: {path} is not a Muse or text-to-image AR run; pass one (or shapestyle:base / shapestyle:ar).")
    _, base_generate, _, frac = t2i
    generate = functools.partial(base_generate, **overrides)
    sets = sets or E.heldout_prompts(frac, args.prompts)
    for name, (prompts, contents, _) in sets.items():
      try:
        agree = [E.prompt_hits(generate, prompts, contents, scorers, 10_007 * s) for s in range(args.seeds)]
      except (ARPipelineError, MusePipelineError, BestOfError, TypeError) as e:
        sys.exit(f"error: {spec}: {e}")
      hits[spec, name] = np.concatenate([a["all"] for a in agree])
      shape_hits[spec, name] = np.concatenate([a["shape"] for a in agree])
      m, sh = M.rate_ci(hits[spec, name]), shape_hits[spec, name].mean()
      print(f"{spec} {name}: text_fidelity {m['mean']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] "
            f"(n = {m['n']}), shape {sh:.3f}", flush=True)
  ref = args.runs[0]
  for run in args.runs[1:]:
    for name, (prompts, _, _) in sets.items():
      clusters = np.tile(np.arange(len(prompts)), args.seeds) if args.seeds > 1 else None  # items are seed-major
      print(f"{run} vs {ref} {name}: text_fidelity {M.paired_report(hits[ref, name], hits[run, name], clusters)}; "
            f"shape {M.paired_report(shape_hits[ref, name], shape_hits[run, name], clusters)}")


if __name__ == "__main__":
  main()
