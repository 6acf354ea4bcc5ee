"""Paired zero-shot shape accuracy of CLIPs on the same renders, with McNemar's exact test against the first.

  python launch/clip_compare.py shapestyle:clip RUN [RUN ...] [--num 1800]

Each CLIP scores the same num // 3 renders per style set (named, plain, held-out; as
`shapestyle_eval.clip_zero_shot`); a pair differs only on the renders one gets right and the other not, so
the exact binomial test on those discordant renders (McNemar 1947) sees differences that the two separate
Wilson intervals cannot.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("runs", nargs="+", help="CLIP workdirs or shipped names; the first is the reference")
  ap.add_argument("--num", type=int, default=1800, help="renders in all (a third per style set)")
  args = ap.parse_args()
  from stylejax.eval import metrics as M
  from stylejax.eval import shapestyle_eval as E
  from stylejax.models.parts import load_clip_embedder
  data = {name: E._examples(args.num // 3, styles, 0)[:2] for name, styles in E.style_sets().items()}
  hits = {}
  for run in args.runs:
    emb = load_clip_embedder(run)
    for name, (images, labels) in data.items():
      hits[run, name] = E.zero_shot_hits(emb, images, labels)[0]
      m = M.rate_ci(hits[run, name])
      print(f"{run} {name}: {m['mean']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] (n = {m['n']})", flush=True)
  ref = args.runs[0]
  for run in args.runs[1:]:
    for name in data:
      print(f"{run} vs {ref} {name}: {M.paired_report(hits[ref, name], hits[run, name])}")


if __name__ == "__main__":
  main()
