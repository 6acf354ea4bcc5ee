"""StyleAR (arXiv 2505.19874; REFERENCE §4) on ShapeStyle: style tokens + LoRA on the frozen AR base.

  stylejax train --config configs/stylear.py --workdir /tmp/stylear --config.init_from.workdir=/tmp/ar
  stylejax train --config configs/stylear.py:runlocal --workdir /tmp/s          # seconds; random base
  stylejax train --config configs/stylear.py:dpo --workdir /tmp/stylear_dpo \
      --config.init_from.workdir=/tmp/stylear --config.dpo.pairs=/tmp/pairs.npz  # after build_dpo_pairs
  python launch/stylear_ablations.py --base /tmp/ar --out /tmp/ablations       # the must-show table

The model is configs/ar.py's (same decoder, vocabulary and parts, so `init_from` copies the base)
plus 16 style-token slots filled by a Perceiver resampler over the penultimate vision states of a
second tiny CLIP (shapestyle:clip_style: the CLIP after its conv-stem stage, before the fresh-style
ones), and rank-4 LoRA (no alpha) on q, k, v, o, MLP down and the LM head. Only LoRA and the
resampler train. Knobs: data.mix ("stylized:original", paper best 1:3), style.noise (sigma_train
0.1) / sample.noise (sigma_infer 0.3), sample.content_subtraction, structure.enabled,
cond.uncond (StyleAR: image-only context), cond.text_dropout + sample.style_scale (two-scale guidance
over a style-only context), dpo.* (post-training).
"""
import ml_collections

from configs import ar as ar_config
from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, variant="", runlocal=False, structure=False)
  if arg.variant not in ("", "dpo"):
    raise ValueError(f"unknown stylear variant {arg.variant!r}; use '' (training) or 'dpo'.")
  c = ar_config.get_config("runlocal" if arg.runlocal else None)
  c.task = "stylejax.methods.stylear:StyleARTask"
  c.model.lora_rank = 4
  c.style = ml_collections.ConfigDict(dict(
      num_tokens=16, feature_dim=128, feature_layer=-2,  # tiny CLIP vision width; penultimate states
      noise=0.1,  # sigma_train of the style-enhanced tokens (0 = off)
      # 0.4M params (LoRA: 39K); its output width is the decoder's hidden size
      resampler=ml_collections.ConfigDict(dict(width=128, depth=2, heads=4, head_dim=32, ff_mult=4))))
  # style tokens from the CLIP before its fresh-style stages (configs/shapestyle.py SNAPSHOTS): more style
  c.image_encoder.workdir = "shapestyle:clip_style"  # config stays "": emptying workdir falls back
  c.structure.enabled = arg.structure
  c.cond.uncond = "image_only"
  # text_dropout: rows that drop text (and structure) but keep the style tokens, which trains the style-only
  # context that two-scale guidance (sample.style_scale) reads (off: StyleAR's recipe)
  c.cond.text_dropout = 0.0
  c.data = ml_collections.ConfigDict(dict(
      name="stylear_pairs", image_size=64, seed=0, num_examples=1_000_000,
      mix="1:3",                   # stylized:original
      random_style_fraction=0.5))  # of stylized pairs: fresh random styles (the held-out family)
  c.init_from.workdir = "shapestyle:ar"  # the shipped AR base (configs/ar.py)
  c.optimizer.update(lr=1e-3, weight_decay=0.0, warmup_steps=100,
                     trainable=[r"lora_[ab]$", r"^resampler/"])  # base, VQ and CLIP frozen
  c.ema_decay = 0.0
  c.total_steps = 2000
  c.batch_size = 32
  c.checkpoint.every = 500
  c.sample.update(cfg_scale=4.0, noise=0.3, style_scale=None)  # None: StyleAR's one-stream CFG
  if arg.variant == "dpo":
    c.task = "stylejax.methods.stylear:StyleARDPOTask"
    c.init_from.workdir = ""  # the StyleAR run the pairs were sampled from
    c.dpo = ml_collections.ConfigDict(dict(
        pairs="",  # .npz from stylejax.methods.stylear.build_dpo_pairs
        beta=0.1, label_smoothing=0.0,
        # Log-probs of the CFG-guided distribution uncond + s (cond - uncond) the pairs were sampled from
        # (s = sample.cfg_scale), not of the conditional stream alone (0: the paper's plain DPO), plus the
        # RPO term (+ weight * per-token NLL of the chosen images, stylejax.train.dpo). Same 256 pairs,
        # n = 192 (launch/STYLEAR_ABLATIONS.md): text_fidelity plain 0.135, plain + RPO 0.167, guided
        # 0.214, guided + RPO 0.229, where the StyleAR run they start from scores 0.208.
        logp_cfg_scale=4.0, sft_weight=1.0,
        # pair construction (build_dpo_pairs): K samples per (prompt, reference), best vs worst by
        # text * [all heads right] + style * cosine - leakage * [reference shape shows]
        num_prompts=256, samples_per_prompt=4,
        min_gap=0.0,  # keep a pair only if best - worst > min_gap
        score_weights=ml_collections.ConfigDict(dict(text=1.0, style=1.0, leakage=1.0))))
    c.optimizer.update(lr=1e-4, warmup_steps=20)
    c.total_steps = 300
    c.checkpoint.every = 100
  if arg.runlocal:
    c.style.update(num_tokens=4, feature_dim=32)
    c.style.resampler.update(width=32, depth=1, heads=2, head_dim=16)
    c.data.update(image_size=32, num_examples=256)
    c.init_from.workdir = ""  # random base
    c.image_encoder.workdir = ""  # the (random) text encoder's CLIP
    if arg.variant == "dpo":
      c.dpo.update(num_prompts=4, samples_per_prompt=2)
    common.use_runlocal_schedule(c)
  return c
