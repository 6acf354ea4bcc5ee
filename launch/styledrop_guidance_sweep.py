"""StyleDrop round-1 guidance sweep on held-out styles: how λA / λB trade style for content (diagnostic).

  python launch/styledrop_guidance_sweep.py shapestyle:base /tmp/sweep 1e-3 200 12,16,18,23,24

Args: base, out dir, adapter lr, steps, held-out style ids. Trains round 1 per style (CLIP selection unused),
scores each guidance setting with `styledrop.evaluate` (6 prompts x 4 samples per style) and prints
per-style and pooled metrics. The figures behind configs/styledrop.py's λA = λB = 1.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from styledrop_eval import add_to_pool, heldout_reference, summarize_pool  # noqa: E402

GRID = {"A1 B1 const": dict(style_guidance=1.0, content_guidance=1.0),
        "A1 B2 const": dict(style_guidance=1.0, content_guidance=2.0),
        "A0.5 B1 const": dict(style_guidance=0.5, content_guidance=1.0),
        "A2 B2 const": dict(style_guidance=2.0, content_guidance=2.0),
        "A1 B3 lin": dict(style_guidance=1.0, content_guidance=3.0, ramp="linear"),
        "A2 B3 lin": dict(style_guidance=2.0, content_guidance=3.0, ramp="linear"),
        "A2 B5 const": dict(style_guidance=2.0, content_guidance=5.0)}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("base", help="Muse base workdir or shipped name (shapestyle:base)")
  ap.add_argument("out", help="directory for the round-1 workdirs")
  ap.add_argument("lr", type=float, help="adapter learning rate")
  ap.add_argument("steps", type=int, help="round-1 steps")
  ap.add_argument("styles", help="held-out style ids, comma-separated (e.g. 12,16,18,23,24)")
  args = ap.parse_args()
  try:
    styles = [int(s) for s in args.styles.split(",")]
  except ValueError:
    ap.error(f"styles must be comma-separated integers; got {args.styles!r}")

  from stylejax.methods import styledrop as sd_lib
  from stylejax.models import scorers as S
  from stylejax.models.muse_pipeline import MusePipeline
  sc = S.scorers_from_workdirs()
  base = MusePipeline.load(args.base)
  pooled: dict = {}
  for k in styles:
    style, content, reference = heldout_reference(k, base.tokenizer.image_size)
    kw = dict(ref_shape=content.shape, scorers=sc, num_prompts=6, samples=4, seed=k, ceiling_style=style,
              tokenizer=base.tokenizer)
    sd = sd_lib.tune(args.base, reference, style.descriptor, content.caption, rounds=1, selection="clip",
                     workdir=os.path.join(args.out, f"s{k}_lr{args.lr:g}_n{args.steps}"), steps=args.steps,
                     progress=False, **{"optimizer.lr": args.lr})
    rows = {"base": lambda p, n, s: base.generate(p, n, s)}
    rows.update({name: (lambda p, n, s, g=g: sd.generate(p, n, s, **g)) for name, g in GRID.items()})
    for name, gen in rows.items():
      m, _, per = sd_lib.evaluate(gen, reference, style.descriptor, **kw)
      add_to_pool(pooled, name, per)
      print(json.dumps({"style": k, "run": name, **{n: round(v["mean"], 3) for n, v in m.items()
                                                    if v["mean"] is not None}}), flush=True)
  print("POOLED")
  keep = ("text_fidelity", "style_fidelity", "content_leakage", "style_fidelity_token_ceiling")
  for name, m in summarize_pool(pooled).items():
    print(json.dumps({"run": name, **{n: (round(v["mean"], 3), [round(x, 3) for x in v["ci95"]])
                                      for n, v in m.items() if n in keep}}), flush=True)


if __name__ == "__main__":
  main()
