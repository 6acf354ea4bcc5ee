"""Text-to-image AR base on ShapeStyle (LlamaGen-style decoder on VQ ids; the model StyleAR tunes).

  stylejax train --config configs/ar.py --workdir /tmp/ar                 # shipped tokenizer + CLIP parts
  stylejax train --config configs/ar.py:runlocal --workdir /tmp/a        # seconds; untrained parts
  stylejax train --config configs/ar.py:uncond=null_prefix --workdir ... # LlamaGen's learned null prefix
  stylejax train --config configs/ar.py --config.model.rope=2d ...       # LlamaGen's 2D RoPE on the 8x8 grid

Sequence: CLIP text states [48, 128] -> prefix_proj; BOI; 64 image ids (8x8 from the shipped 128-code VQGAN).
Loss on image ids only; 10% condition dropout for CFG with StyleAR's image-only unconditional
context by default (REFERENCE §4; `uncond=null_prefix` for LlamaGen's, §7). Sampling defaults in
`config.sample` (CFG 4.0 as StyleAR/LlamaGen demos; top-k off).
"""
import ml_collections

from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False, uncond="image_only")
  if arg.uncond not in ("image_only", "null_prefix"):
    raise ValueError(f"uncond={arg.uncond!r}; use image_only (StyleAR) or null_prefix (LlamaGen).")
  c = common.base_config(arg.runlocal)
  c.task = "stylejax.models.ar_t2i:ARImageTask"
  c.model = ml_collections.ConfigDict(dict(
      codebook_size=common.SHAPESTYLE_CODES, seq_len=64, text_dim=128, text_len=48, vocab_multiple=8,
      # Llama decoder, 1.8M params with the shipped 128-code vocabulary (3.4M with 4096 codes)
      hidden=192, layers=4, heads=4, kv_heads=4, head_dim=48, mlp_dim=512, rope="1d", rope_theta=10000.0,
      rms_eps=1e-6, init_std=0.02,
      lora_rank=0, lora_targets=["q", "k", "v", "o", "down", "lm_head"]))
  c.cond = ml_collections.ConfigDict(dict(uncond=arg.uncond, dropout=0.1))
  c.style = ml_collections.ConfigDict(dict(num_tokens=0))  # the base has no style slots (StyleAR adds them)
  c.structure = ml_collections.ConfigDict(dict(enabled=False))
  c.data = ml_collections.ConfigDict(dict(name="shapestyle", image_size=64, seed=0, num_examples=1_000_000,
                                          styles="named+plain", plain_fraction=None,
                                          heldout_prompts=0.1))  # 10% of (content, style) never trained
  c.tokenizer, c.text_encoder = common.shapestyle_parts(arg.runlocal)
  c.image_encoder = ml_collections.ConfigDict(dict(workdir="", config=""))  # empty: the text encoder's CLIP
  # Measured 1.12 steps/s (batch 32, one CPU device) with the Muse base training beside it on the 2 cores:
  # 1800 steps in 26.7 min. The shipped base continues this 6000 steps more (configs/shapestyle.py
  # STAGES["ar"]). On an accelerator raise batch and steps.
  c.total_steps = 1800
  c.batch_size = 32
  c.optimizer.update(lr=1e-3, b1=0.9, b2=0.95, weight_decay=0.05, warmup_steps=100)
  c.ema_decay = 0.999
  c.checkpoint.every = 500
  c.log_every = 50
  # Sampling (ar_t2i.SAMPLE_DEFAULTS fields): CFG as StyleAR / LlamaGen's demo; top-k off;
  # noise / content_subtraction act on style tokens only (StyleAR runs).
  c.sample = ml_collections.ConfigDict(dict(
      cfg_scale=4.0, temperature=1.0, top_k=0, top_p=1.0,
      noise=0.3, content_subtraction=False, subtraction_scale=0.8, subtraction_blend=0.8))
  if arg.runlocal:
    c.model.update(codebook_size=32, seq_len=16, text_dim=32, hidden=32, layers=2, heads=2, kv_heads=2,
                   head_dim=16, mlp_dim=64)
    c.data.update(image_size=32, num_examples=256, heldout_prompts=0.0)
    c.ema_decay = 0.0
    common.use_runlocal_schedule(c)
  return c
