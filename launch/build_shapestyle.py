"""Rebuilds every shipped ShapeStyle model (package data) from scratch and measures it.

  python launch/build_shapestyle.py                   # all parts, ~7.5 h of training on a 2-core CPU
  python launch/build_shapestyle.py --parts base      # retrain one part, re-measure everything
  python launch/build_shapestyle.py --eval --quick    # only re-measure the shipped parts

Per part, in dependency order (the generators train on the *shipped* tokenizer and CLIP):
  1. `stylejax train --config configs/shapestyle.py:<part> --workdir ROOT/<part>` (resumes if killed);
     the tokenizer, base and AR base are chains of such commands (configs/shapestyle.py STAGES)
  2. export the final workdir -> stylejax/assets/shapestyle/<part>.{safetensors,json} (the tokenizer:
     its codebook merged first, then its decoder fine-tuned from that export: MERGE_CODES, DECODER_STAGES)
Then every exported part is measured with `stylejax.eval.shapestyle_eval` and its metrics go into its
JSON record and launch/BUILD_SHAPESTYLE.md, with each part's training wall time (summed over resumed
runs) and the machine it ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ORDER = ("tokenizer", "clip", "clip_style", "base", "content", "style", "ar")
# The generators (2.5M / 1.8M params, the largest parts after CLIP) and the second CLIP ship as float16
# so all parts fit the 30 MB package budget; they load back as float32 and are measured from the exported files.
SHIP_DTYPE = {"base": "float16", "ar": "float16", "clip_style": "float16"}


def stages(part: str, root: str) -> list[tuple[str, list[str]]]:
  """[(workdir, `stylejax train` args)] for a part: one command, or a chain where each stage starts
  `init_from` the previous one (configs/shapestyle.py STAGES); a snapshot part, the first stages of its
  source part's chain (SNAPSHOTS)."""
  from configs import shapestyle
  if part in shapestyle.SNAPSHOTS:
    source, num_stages = shapestyle.SNAPSHOTS[part]
    return stages(source, root)[:num_stages]
  overrides = shapestyle.STAGES.get(part, ((),))
  workdirs = ([os.path.join(root, part)] if len(overrides) == 1 else
              [os.path.join(root, f"{part}_stage{i + 1}") for i in range(len(overrides))])
  out = []
  for i, (workdir, extra) in enumerate(zip(workdirs, overrides)):
    init = [f"--config.init_from.workdir={workdirs[i - 1]}"] if i else []
    out.append((workdir, [f"--config=configs/shapestyle.py:{part}", *extra, *init, f"--workdir={workdir}"]))
  return out


def decoder_stages(part: str, root: str) -> list[tuple[str, list[str]]]:
  """[(workdir, args)] of the part's decoder fine-tuning after its merge (configs/shapestyle.py
  DECODER_STAGES), the first `init_from` the merged export, each later one from the one before; [] for
  other parts."""
  from configs import shapestyle
  out = []
  for i, extra in enumerate(shapestyle.DECODER_STAGES.get(part, ())):
    workdir = os.path.join(root, f"{part}_decoder" + (f"{i + 1}" if i else ""))
    init = out[-1][0] if out else f"shapestyle:{part}"
    out.append((workdir, [f"--config=configs/shapestyle.py:{part}", *extra, f"--config.init_from.workdir={init}",
                          f"--workdir={workdir}"]))
  return out


def train(part: str, root: str, extra: list[str], chain=stages) -> str:
  """Runs the part's training command(s), logging each one's wall seconds; returns the final workdir."""
  for workdir, args in chain(part, root):
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "stylejax", "train", *args, *extra], cwd=ROOT, check=True)
    with open(os.path.join(root, "times.jsonl"), "a") as f:
      f.write(json.dumps({"part": part, "seconds": time.time() - t0, "args": extra,
                          "workdir": workdir}) + "\n")
  return workdir


def command(part: str) -> str:
  """The recorded shell command that reproduces a part (stages joined with &&)."""
  from configs import shapestyle
  chain = " && ".join("stylejax train " + shlex.join(args) for _, args in stages(part, "/tmp/ss"))
  if part in shapestyle.MERGE_CODES:
    chain += f"  # then its codebook merged to {shapestyle.MERGE_CODES[part]} codes (build_shapestyle.merge_codes)"
  decoder = " && ".join("stylejax train " + shlex.join(args) for _, args in decoder_stages(part, "/tmp/ss"))
  if decoder:
    chain += f", exported, and its decoder fine-tuned: {decoder}"
  return chain


def merge_codes(workdir: str, num_codes: int, num_images: int = 2048):
  """(config, params) of the tokenizer in `workdir` with its codebook k-means-merged to `num_codes`
  (`vqgan.merge_codebook`) over the ids of its first `num_images` training images."""
  import jax
  import numpy as np
  from stylejax.data.shapestyle import ShapeStyleSource
  from stylejax.models import vqgan
  from stylejax.models.parts import ImageTokenizer
  from stylejax.train import trainer
  from stylejax.train.task import load_task
  config, params = trainer.load_params(workdir, devices=jax.devices()[:1])
  tokenizer = ImageTokenizer(load_task(config), trainer.params_to_numpy(params))
  source = ShapeStyleSource("train", int(config.data.image_size), int(config.data.seed), config.data.styles)
  batches = [range(i, min(i + 256, num_images)) for i in range(0, num_images, 256)]
  ids = np.concatenate([tokenizer.encode(np.stack([source[j]["image"] for j in b])) for b in batches])
  params = dict(tokenizer.params)
  params["quantizer"] = {"codebook": vqgan.merge_codebook(params["quantizer"]["codebook"], ids, num_codes)}
  config = config.copy_and_resolve_references()
  config.unlock()
  config.model.codebook_size = num_codes
  return config, params


def wall_time(part: str, root: str) -> float | None:
  """Seconds of `stylejax train` behind a part (its chain's workdirs, summed over resumed runs); None if
  none of them ran under `root`. A snapshot part counts the stages it shares with its source."""
  workdirs = {w for w, _ in stages(part, root) + decoder_stages(part, root)}
  path = os.path.join(root, "times.jsonl")
  runs = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
  seconds = [r["seconds"] for r in runs if r["workdir"] in workdirs]
  return sum(seconds) if seconds else None


def fmt(m: dict) -> str:
  lo, hi = m["ci95"]
  if m["mean"] is None:
    return "n/a"
  ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
  return f"{m['mean']:.3f}{ci} (n={m['n']})"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--root", default="/tmp/shapestyle_build", help="workdirs of the training runs")
  ap.add_argument("--parts", default=",".join(ORDER), help="comma list of parts to (re)train and export")
  ap.add_argument("--eval", action="store_true", help="only measure the exported parts (no training)")
  ap.add_argument("--quick", action="store_true", help="measure on ~4x fewer images")
  ap.add_argument("--no-eval", dest="no_eval", action="store_true", help="train and export only")
  args, extra = ap.parse_known_args()
  from configs import shapestyle
  from stylejax import shipped
  from stylejax.eval import shapestyle_eval

  os.makedirs(args.root, exist_ok=True)
  parts = [p for p in ORDER if p in args.parts.split(",")]
  if not args.eval:
    for part in parts:
      print(f"== {part}: training", flush=True)
      source = shapestyle.SNAPSHOTS.get(part, (None,))[0]  # a snapshot of a part trained above: no re-runs
      workdir = stages(part, args.root)[-1][0] if source in parts else train(part, args.root, extra)
      dtype = SHIP_DTYPE.get(part, "float32")
      if part in shapestyle.MERGE_CODES:
        config, params = merge_codes(workdir, shapestyle.MERGE_CODES[part])
        shipped.export_params(config, params, part, command(part), dtype=dtype, merged_from=workdir)
      else:
        shipped.export(workdir, part, command=command(part), dtype=dtype)
      if decoder_stages(part, args.root):  # starts from the export above and replaces it
        shipped.export(train(part, args.root, extra, chain=decoder_stages), part, command=command(part), dtype=dtype)

  if args.no_eval:
    return
  import jax
  from stylejax.models import scorers as scorers_lib
  scorers = scorers_lib.scorers_from_workdirs()
  lines = ["# ShapeStyle shipped models: build times and measured quality", "",
           f"Built by `python launch/build_shapestyle.py` on {jax.devices()[0].device_kind} "
           f"({os.cpu_count()} cores); wall time is the part's `stylejax train` time (summed if resumed).", ""]
  total_mb = 0.0
  for part in ORDER:
    name = shipped.PREFIX + part
    if name not in shipped.available():
      continue
    print(f"== {part}: measuring", flush=True)
    result = shapestyle_eval.evaluate(name, scorers=scorers, quick=args.quick)
    record = shipped.info(name)
    # a part not trained under this root keeps the wall time its record already has (re-measuring elsewhere)
    train_s = wall_time(part, args.root) or (record.get("metrics") or {}).get("train_wall_s")
    shipped.record_metrics(name, {"measured": result["metrics"], "train_wall_s": train_s})
    mb = os.path.getsize(os.path.join(shipped.ASSETS, part + ".safetensors")) / 2 ** 20
    total_mb += mb
    wall = f"{train_s / 60:.1f} min" if train_s is not None else "n/a"
    lines += [f"## {name} — {shipped.PARTS[part]}", "",
              f"`{record['command']}` · {record['num_params']:,} params · {mb:.1f} MB · train wall time {wall}", "",
              "| metric | mean [95% CI] (n) |", "|---|---|"]
    lines += [f"| {k} | {fmt(m)} |" for k, m in result["metrics"].items()]
    lines.append("")
  lines.append(f"Total package data: {total_mb:.1f} MB.")
  with open(os.path.join(ROOT, "launch", "BUILD_SHAPESTYLE.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
