"""StyleDrop round-1 guidance sweep on held-out styles: how λA / λB trade style for content (diagnostic).

  python launch/styledrop_guidance_sweep.py shapestyle:base /tmp/sweep 1e-3 200 12,16,18,23,24

Args: base, out dir, adapter lr, steps, held-out style ids. Trains round 1 per style (CLIP selection unused),
scores each guidance setting with `styledrop.evaluate` (6 prompts x 4 samples per style) and prints
per-style and pooled metrics. The figures behind configs/styledrop.py's λA = λB = 1.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np
from stylejax.data import shapestyle as ss
from stylejax.methods import styledrop as sd_lib
from stylejax.models import scorers as S
from stylejax.models.muse_pipeline import MusePipeline
base_name, out, lr, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
styles = [int(s) for s in sys.argv[5].split(",")]
grid = {"A1 B1 const": dict(style_guidance=1.0, content_guidance=1.0),
        "A1 B2 const": dict(style_guidance=1.0, content_guidance=2.0),
        "A0.5 B1 const": dict(style_guidance=0.5, content_guidance=1.0),
        "A2 B2 const": dict(style_guidance=2.0, content_guidance=2.0),
        "A1 B3 lin": dict(style_guidance=1.0, content_guidance=3.0, ramp="linear"),
        "A2 B3 lin": dict(style_guidance=2.0, content_guidance=3.0, ramp="linear"),
        "A2 B5 const": dict(style_guidance=2.0, content_guidance=5.0)}
sc = S.scorers_from_workdirs()
base = MusePipeline.load(base_name)
pooled = {}
for k in styles:
  style = ss.heldout_style(k)
  rng = np.random.default_rng([k, 0x5D])
  content = ss.Content(int(rng.integers(len(ss.SHAPES))), int(rng.integers(len(ss.COLORS))), 1)
  reference = ss.render(content, style, 64, rng)[0]
  kw = dict(ref_shape=content.shape, scorers=sc, num_prompts=6, samples=4, seed=k, ceiling_style=style,
            tokenizer=base.tokenizer)
  rows = {"base": lambda p, n, s: base.generate(p, n, s)}
  sd = sd_lib.tune(base_name, reference, style.descriptor, content.caption, rounds=1, selection="clip",
                   workdir=os.path.join(out, f"s{k}_lr{lr}_n{steps}"), steps=steps, progress=False,
                   **{"optimizer.lr": float(lr)})
  for name, g in grid.items():
    rows[name] = lambda p, n, s, g=g: sd.generate(p, n, s, **g)
  for name, gen in rows.items():
    m, _, per = sd_lib.evaluate(gen, reference, style.descriptor, **kw)
    for key, v in per.items():
      pooled.setdefault(name, {}).setdefault(key, []).append(np.asarray(v, float))
    print(json.dumps({"style": k, "run": name, **{n: round(v["mean"], 3) for n, v in m.items() if v["mean"] is not None}}), flush=True)
print("POOLED")
for name, d in pooled.items():
  m = sd_lib.summarize({key: np.concatenate(v) for key, v in d.items()})
  print(json.dumps({"run": name, **{n: (round(v["mean"], 3), [round(x, 3) for x in v["ci95"]]) for n, v in m.items() if n in ("text_fidelity", "style_fidelity", "content_leakage", "style_fidelity_token_ceiling")}}), flush=True)
