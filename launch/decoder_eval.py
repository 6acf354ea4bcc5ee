"""Muse's decoder fine-tuning, measured: the shipped tokenizer's decoder vs a fine-tuned one, paired.

  python launch/decoder_eval.py RUN [RUN ...] [--step N] [--prompts 96] [--recon 300] [--reference-root DIR]

RUN: a `stylejax train` workdir of the tokenizer part trained on the shipped tokenizer's frozen codes
(configs/shapestyle.py DECODER_STAGES), or a shipped name. Every decoder reads the *same* token ids: codes of
the same test renders, and the shipped Muse and AR bases' samples for the same held-out prompts and seeds
(generated once, decoded by each decoder), so every difference is the decoder's alone. The reference column
is the shipped tokenizer, or the one in DIR (a folder with tokenizer.json + tokenizer.safetensors). Prints one
markdown table per check (shapestyle_eval metrics, mean [95% CI] (n)), then the reconstructions paired item by
item against the reference (reconstructions: all heads and style; the bases' samples: text and shape). The
README's stop-24 vs stop-40 (GAN + perceptual) table:

  mkdir -p /tmp/ss24 && for f in json safetensors; do
    git show 0ba314f:stylejax/assets/shapestyle/tokenizer.$f > /tmp/ss24/tokenizer.$f; done
  python launch/decoder_eval.py shapestyle:tokenizer --reference-root /tmp/ss24 --prompts 384

run at commit e201c3f, whose shipped tokenizer was the stop-40 one (the stop-23 vs stop-24 one: commit 5ec45c2's
files as the reference, run at commit 0ba314f). The stop-41 table: the two runs of `DECODER_STAGES[2]` (with and
without its `random_style_fraction`) against commit e201c3f's files, `RUN_D0 RUN_D25 --reference-root DIR_40`.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HELDOUT = 0.1  # the bases' held-out prompt fraction (configs/muse.py, configs/ar.py: data.heldout_prompts)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("runs", nargs="+", help="decoder fine-tuning workdirs (or shipped names) to compare")
  ap.add_argument("--step", type=int, default=None, help="checkpoint step of the runs (default: latest)")
  ap.add_argument("--prompts", type=int, default=96, help="held-out prompts per set (plain, named)")
  ap.add_argument("--recon", type=int, default=300, help="test renders for the reconstruction check")
  ap.add_argument("--bases", default="shapestyle:base,shapestyle:ar", help="generators whose ids are decoded")
  ap.add_argument("--reference-root", default=None, help="folder holding the reference tokenizer.{json,safetensors}")
  args = ap.parse_args()

  from stylejax import shipped
  from stylejax.eval import shapestyle_eval as E
  from stylejax.models import scorers as scorers_lib
  from stylejax.models.ar_t2i import ARImagePipeline, ARImageTask
  from stylejax.models.muse_pipeline import MusePipeline
  from stylejax.models.parts import ImageTokenizer
  from stylejax.train.task import load_task

  scorers = scorers_lib.scorers_from_workdirs()
  config, params = shipped.load("shapestyle:tokenizer", args.reference_root)
  decoders = {args.reference_root or "shipped": ImageTokenizer(load_task(config), params)}
  for run in args.runs:
    decoders[run] = ImageTokenizer(*_part(run, args.step))
  items = {name: E.tokenizer_items(tok, scorers, args.recon) for name, tok in decoders.items()}
  _table("reconstructions of the same test renders", {name: E.tokenizer_metrics(v) for name, v in items.items()})
  _paired(items)

  for base in [b for b in args.bases.split(",") if b]:
    task, _ = _part(base, None)
    pipe = (ARImagePipeline if isinstance(task, ARImageTask) else MusePipeline).load(base)
    ids: dict = {}
    images: dict = {}

    def decoded(name, prompts, num, seed):
      """Decoder `name`'s images of the base's ids for (prompts, num, seed): ids drawn once for all decoders,
      each decoder's images decoded once for the table and the pairing both."""
      key = (tuple(prompts), num, seed)
      if key not in ids:
        ids[key] = pipe.generate_ids(list(prompts), num, seed)
      if (name, key) not in images:
        images[name, key] = decoders[name].decode(ids[key])
      return images[name, key]

    generate = {name: functools.partial(decoded, name) for name in decoders}
    columns = {name: E.text_to_image(generate[name], tok.image_size, HELDOUT, scorers, args.prompts)
               for name, tok in decoders.items()}
    _table(f"{base} samples (same ids, {args.prompts} held-out prompts per set)", columns)
    sets = E.heldout_prompts(HELDOUT, args.prompts)
    hits = {name: {key: E.prompt_hits(generate[name], prompts, contents, scorers)
                   for key, (prompts, contents, _) in sets.items()} for name in decoders}
    _paired_samples(base, hits)


def _part(workdir: str, step: int | None):
  """(task, numpy params) of a run or shipped name at `step`."""
  from stylejax.train import trainer
  from stylejax.train.task import load_task
  config, params = trainer.load_params(workdir, step=step)
  return load_task(config), trainer.params_to_numpy(params)


def _paired(items: dict) -> None:
  """Each run's reconstructions against the reference's, item by item: all-heads content (McNemar) and
  style_fidelity(recon) (mean per-image difference)."""
  import numpy as np
  from stylejax.eval import metrics as M
  (ref_name, ref), *runs = items.items()
  print(f"\n### reconstructions, paired with {ref_name}\n")
  print("| run | set | all heads | style_fidelity(recon) |")
  print("|---|---|---|---|")
  hits = lambda v: np.all(list(M.text_fidelity_agreement(v["pred"], v["labels"]).values()), axis=0)
  for name, per_set in runs:
    for key, v in per_set.items():
      print(f"| {name} | {key} | {M.paired_report(hits(ref[key]), hits(v))} | "
            f"{M.paired_difference(ref[key]['style'], v['style'])} |", flush=True)


def _paired_samples(base: str, hits: dict) -> None:
  """Each run's decodings of `base`'s samples against the reference's, item by item (McNemar): text, shape."""
  from stylejax.eval import metrics as M
  (ref_name, ref), *runs = hits.items()
  print(f"\n### {base} samples, paired with {ref_name}\n")
  print("| run | set | text_fidelity | shape |")
  print("|---|---|---|---|")
  for name, per_set in runs:
    for key, v in per_set.items():
      print(f"| {name} | {key} | {M.paired_report(ref[key]['all'], v['all'])} | "
            f"{M.paired_report(ref[key]['shape'], v['shape'])} |", flush=True)


def _table(title: str, columns: dict) -> None:
  names = list(columns)
  keys = list(columns[names[0]])
  print(f"\n### {title}\n")
  print("| metric | " + " | ".join(names) + " |")
  print("|---|" + "---|" * len(names))
  for k in keys:
    cells = []
    for n in names:
      m = columns[n][k]
      (lo, hi), mean = m["ci95"], m["mean"]
      cells.append(f"{mean:.3f} [{lo:.3f}, {hi:.3f}] ({m['n']})" if lo is not None else f"{mean:.3f} ({m['n']})")
    print(f"| {k} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  main()
