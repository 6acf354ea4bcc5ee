"""How much best-of-N can gain on a base: each ranking's pick against the oracle, on one set of candidates.

  python launch/best_of_headroom.py shapestyle:ar --prompts 384 --candidates 16

Each held-out prompt (`shapestyle_eval.heldout_prompts`, plain and named sets) gets `--candidates` samples once;
for N = 1, 2, 4, ... and --candidates the first N of them are ranked by CLIP cosine and by the contrastive ranking
(`sample/best_of.py`), and text_fidelity of the pick is printed beside the oracle's: the rate at which at least one
of the N candidates is right (the content classifiers' verdict; a perfect ranker's score). Candidates are drawn as
`best_of=N` draws them (prompt-major, seed 0), so the pick at N = --candidates is `@best_of=N`'s in
`launch/base_compare.py`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("run", help="a Muse or AR text-to-image workdir or shipped name")
  ap.add_argument("--prompts", type=int, default=96, help="held-out prompts per set (plain, named)")
  ap.add_argument("--candidates", type=int, default=16)
  args = ap.parse_args(argv)
  import numpy as np
  from stylejax.eval import metrics as M
  from stylejax.eval import shapestyle_eval as E
  from stylejax.models import scorers as scorers_lib
  from stylejax.models.parts import load_clip_embedder
  from stylejax.sample import best_of
  from stylejax.shipped import ShippedError
  from stylejax.train import trainer
  from stylejax.train.trainer import TrainError
  try:
    t2i = E.text_to_image_generator(args.run)
  except (ShippedError, TrainError) as e:
    sys.exit(f"error: {e}")
  if t2i is None:
    sys.exit(f"error: {args.run} is not a Muse or text-to-image AR run.")
  _, generate, _, frac = t2i
  clip = load_clip_embedder(trainer.load_config(args.run).get("text_encoder"))
  scorers = scorers_lib.scorers_from_workdirs()
  k, out = args.candidates, {}
  for name, (prompts, contents, _) in E.heldout_prompts(frac, args.prompts).items():
    images = E.generate_all(lambda p, n, s: generate(p, n * k, s), prompts)  # [P * k], prompt-major
    texts = [p for p in prompts for _ in range(k)]
    labels = {h: np.repeat(v, k) for h, v in E.content_labels(contents).items()}
    right = np.logical_and.reduce(list(M.text_fidelity_agreement(scorers.classify(images), labels).values()))
    right = right.reshape(-1, k)
    scores = {"cosine": best_of.clip_text_scores(clip, images, texts).reshape(-1, k),
              "contrastive": best_of.contrastive_scores(clip, images, texts).reshape(-1, k)}
    rows = np.arange(len(prompts))
    out[name] = {"N": [], "oracle": [], **{r: [] for r in scores}}
    for n in sorted({2 ** i for i in range(k.bit_length())} | {k}):  # 1, 2, 4, ..., and k itself
      out[name]["N"].append(n)
      out[name]["oracle"].append(float(right[:, :n].any(1).mean()))
      for r, s in scores.items():
        out[name][r].append(float(right[rows, s[:, :n].argmax(1)].mean()))
      print(f"{args.run} {name} N={n}: " + ", ".join(f"{r} {out[name][r][-1]:.3f}" for r in (*scores, "oracle"))
            + f" (n = {len(prompts)})", flush=True)
  return out


if __name__ == "__main__":
  main()
