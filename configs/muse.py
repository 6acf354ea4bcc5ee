"""Muse (Chang et al. 2023): text-to-image masked token transformer, pre-LN with cross-attention to
frozen text-encoder states in every layer, on ShapeStyle tokens with the tiny CLIP text tower.

  stylejax train --config configs/muse.py --workdir /tmp/muse \
      --config.tokenizer.workdir=/tmp/ss_tokenizer --config.text_encoder.workdir=/tmp/ss_clip
  stylejax sample --workdir /tmp/muse --prompt "two red stars in neon outline style" --num 8 --out muse.png
  stylejax train --config configs/muse.py:runlocal --workdir /tmp/m      # seconds; untrained parts

Paper recipe (REFERENCE.md §2): arccos masking-rate distribution, 10% condition dropout for CFG,
CFG `(1 + t) l_c - t l_u` with t ramped linearly over the steps, negative prompts as l_u.
"""
import ml_collections

from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  c = common.base_config(arg.runlocal)
  c.task = "stylejax.models.muse:MuseTask"
  c.model = ml_collections.ConfigDict(dict(
      layout="muse", codebook_size=common.SHAPESTYLE_CODES, seq_len=64, text_dim=128, text_len=48, null_text="learned",
      width=256, depth=6, heads=8, mlp_dim=1024, dropout=0.1, conv_blocks=0, conv_text_adaln=False,
      label_smoothing=0.1, mask_schedule="arccos", min_mask_rate=0.0, cond_dropout=0.1,
      foreground_weight=0.0,  # ShapeStyle: extra loss weight on shape tokens (MuseTask; 0 = Muse)
      adapters=ml_collections.ConfigDict(dict(kind="none"))))
  c.data = ml_collections.ConfigDict(dict(name="shapestyle", image_size=64, seed=0, num_examples=1_000_000,
                                          styles="named+plain", plain_fraction=None,
                                          heldout_prompts=0.1))  # 10% of (content, style) never trained
  c.tokenizer, c.text_encoder = common.shapestyle_parts(arg.runlocal)
  c.total_steps = 20_000
  c.batch_size = 64
  c.optimizer.update(lr=1e-3, b1=0.9, b2=0.96, weight_decay=0.045, warmup_steps=500)
  c.checkpoint.every = 1000
  c.log_every = 50
  c.sample = common.sample_config(num_steps=12, mode="cfg", ramp="linear", scale=3.0)
  if arg.runlocal:
    c.model.update(codebook_size=32, seq_len=16, text_dim=32, width=32, depth=2, heads=2, mlp_dim=64)
    c.data.update(image_size=32, num_examples=256)
    c.sample.num_steps = 4
    common.use_runlocal_schedule(c)
  return c
