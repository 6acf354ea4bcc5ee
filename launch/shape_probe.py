"""Does a ShapeStyle generator know *which* shape to draw? A teacher-forced probe on true images.

  python launch/shape_probe.py shapestyle:base shapestyle:ar          # shipped bases, ~2 min on a 2-core CPU
  python launch/shape_probe.py /tmp/ss_base --steps all               # every checkpoint of a run: a learning curve

For test images of ShapeStyle prompts, every token that touches no shape pixel is kept true and the
model predicts the tokens under the shapes (the caption is given):
  * Muse (masked): the shape tokens are masked and filled in one pass (argmax); `infill` also runs
    the run's own decode (steps, CFG) from that start.
  * AR: teacher-forced next-token argmax at the shape-token positions (all earlier tokens true).
Reported per style set (n images each, 95% CIs): `token_acc` (argmax = the tokenizer's code at shape
tokens), `fill_shape` (content classifier's shape accuracy on the images decoded with the predicted
shape tokens), `infill_shape` (Muse, sampled), and the ceilings: `recon_shape` (the same images
tokenized and decoded) and chance 1/8. A generator that has learned shape identity scores near
recon_shape on fill_shape; one that draws blobs stays near chance however good its sampler is.
Writes OUT/shape_probe.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from stylejax.data import shapestyle as ss  # noqa: E402
from stylejax.eval import metrics as M  # noqa: E402

COLUMNS = ("token_acc", "fill_shape", "infill_shape", "recon_shape")


def load(workdir: str, step: int | None) -> tuple[str, Any]:
  """('muse' | 'ar', pipeline) for a Muse or AR text-to-image base run; the run's kind is read from its
  config first, so a wrong run fails before any weights load."""
  from stylejax.cli import _task_of
  from stylejax.models.ar_t2i import ARImagePipeline
  from stylejax.models.muse_pipeline import MusePipeline, PipelineError
  task = _task_of(workdir)
  if task.endswith(":ARImageTask"):
    return "ar", ARImagePipeline.load(workdir, step=step)
  if task.endswith(":MuseTask"):
    pipe = MusePipeline.load(workdir, step=step)
    if pipe.text_conditioned:
      return "muse", pipe
  raise PipelineError(f"{workdir} is a {task} run; the probe takes a text-to-image Muse or AR base.")


def predict_shape_tokens(kind: str, pipe: Any, ids: np.ndarray, fg: np.ndarray, captions: list[str]
                         ) -> tuple[np.ndarray, np.ndarray | None]:
  """(argmax ids [B, L] at the shape tokens, true elsewhere; sampled Muse infill [B, L] or None)."""
  if kind == "ar":
    text_emb, text_mask = pipe.task.text_encoder(captions)
    logits = pipe.task.image_logits(pipe.params, dict(text_emb=text_emb, text_mask=text_mask), ids)
    return np.where(fg, np.asarray(logits).argmax(-1), ids), None
  from stylejax.sample import masked
  cond, cmask = pipe.condition(captions)
  start = np.where(fg, pipe.model.config.mask_id, ids).astype(np.int32)
  logits, _ = pipe.model.apply({"params": pipe.params}, start, cond, cmask)
  argmax = np.where(fg, np.asarray(logits).argmax(-1), ids)
  decode, guidance, scales = pipe.settings()
  sampled = masked.sample(pipe.model, pipe.params, cond, jax.random.key(0), decode=decode, guidance=guidance,
                          scales=scales, cond_mask=cmask, ids=start)
  return argmax, np.asarray(sampled)


def probe(kind: str, pipe: Any, scorers: Any, styles: str, num: int, seed: int = 0) -> dict[str, M.Metric]:
  """The probe's metrics on `num` test images of the `styles` set."""
  tokenizer = pipe.tokenizer if kind == "muse" else pipe.task.image_tokenizer
  src = ss.ShapeStyleSource("test", tokenizer.image_size, seed, styles)
  ex = [src[i] for i in range(num)]
  images = np.stack([e["image"] for e in ex])
  shapes = np.array([int(e["shape"]) for e in ex])
  ids = np.asarray(tokenizer.encode(images))
  fg = ss.shape_token_mask(np.stack([e["mask"] for e in ex]), int(round(ids.shape[1] ** 0.5)))
  argmax, sampled = predict_shape_tokens(kind, pipe, ids, fg, [str(e["caption"]) for e in ex])
  shape_ok = lambda x: scorers.classify(tokenizer.decode(x))["shape"] == shapes
  per_image = [(argmax[i] == ids[i])[fg[i]].mean() for i in range(num) if fg[i].any()]
  out = {"token_acc": M.mean_ci(per_image), "fill_shape": M.rate_ci(shape_ok(argmax)),
         "recon_shape": M.rate_ci(shape_ok(ids)), "shape_token_fraction": M.mean_ci(fg.mean(1))}
  if sampled is not None:
    out["infill_shape"] = M.rate_ci(shape_ok(sampled))
  return out


def _steps(workdir: str, spec: str) -> list[int | None]:
  """The checkpoint steps `spec` names ("" = the latest, "all", or "N,M"), after checking `workdir` is a run."""
  from stylejax import shipped
  from stylejax.cli import _task_of
  _task_of(workdir)  # a clear error for a path that is no run, before anything reads or creates files there
  if not spec:
    return [None]
  if shipped.is_shipped(workdir):
    raise shipped.ShippedError(f"{workdir} is a shipped model with one set of weights; drop --steps for it.")
  if spec != "all":
    return [int(s) for s in spec.split(",")]
  from stylejax.checkpoint import Checkpointer
  from stylejax.train.trainer import TrainError
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  steps = list(checkpointer.all_steps())
  checkpointer.close()
  if not steps:
    raise TrainError(f"{workdir} has no checkpoint yet; train first.")
  return steps


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("workdirs", nargs="+", help="Muse or AR text-to-image runs (or shapestyle:base / shapestyle:ar)")
  ap.add_argument("--steps", default="", help="checkpoint steps, comma-separated, or 'all' (default: the latest)")
  ap.add_argument("--styles", default="plain,named", help="style sets to probe (ShapeStyleSource styles)")
  ap.add_argument("--num", type=int, default=96, help="test images per style set")
  ap.add_argument("--scorers", default="", help="content_workdir,style_workdir (default: shipped)")
  ap.add_argument("--out", default="/tmp/shape_probe")
  args = ap.parse_args()
  from stylejax.models import scorers as scorers_lib
  scorers = scorers_lib.scorers_from_workdirs(*args.scorers.split(",")) if args.scorers else \
      scorers_lib.scorers_from_workdirs()
  rows = []
  print("| run | step | styles | " + " | ".join(COLUMNS) + " |\n|---|---|---|" + "---|" * len(COLUMNS))
  for workdir in args.workdirs:
    for step in _steps(workdir, args.steps):
      kind, pipe = load(workdir, step)
      for styles in args.styles.split(","):
        m = probe(kind, pipe, scorers, styles, args.num)
        rows.append(dict(workdir=workdir, kind=kind, step=step, styles=styles, metrics=m))
        cells = [_fmt(m.get(c)) for c in COLUMNS]
        print(f"| {workdir} ({kind}) | {step or 'latest'} | {styles} | " + " | ".join(cells) + " |", flush=True)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "shape_probe.json"), "w") as f:
    json.dump(dict(args=vars(args), rows=rows), f, indent=1)


def _fmt(m: M.Metric | None) -> str:
  if m is None or m["mean"] is None:
    return "–"
  lo, hi = m["ci95"]
  return f"{m['mean']:.3f} [{lo:.2f}, {hi:.2f}]"


if __name__ == "__main__":
  from stylejax import cli
  try:
    main()
  except Exception as e:  # noqa: BLE001 - a user error is one line; anything else keeps its traceback
    if not cli._is_user_error(e):
      raise
    sys.exit(f"shape_probe: error: {cli._one_line(e)}")
