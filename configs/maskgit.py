"""MaskGIT (Chang et al. 2022): class-conditional masked token transformer, post-LN BERT with a
tied head, on ShapeStyle tokens (class = content: shape x color x count, 216 classes).

  stylejax train --config configs/maskgit.py --workdir /tmp/maskgit \
      --config.tokenizer.workdir=/tmp/ss_tokenizer      # a trained configs/shapestyle.py:tokenizer run
  stylejax sample --workdir /tmp/maskgit --prompt "two red stars" --num 8 --out maskgit.png
  stylejax train --config configs/maskgit.py:runlocal --workdir /tmp/m   # seconds; untrained tokenizer

Paper recipe (REFERENCE.md §1): label smoothing 0.1, Adam(0.9, 0.96), wd 0.045, cosine masking,
8-16 decode steps with choice temperature 4.5, no CFG (our null class makes CFG an option).
"""
import ml_collections

from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, runlocal=False)
  c = common.base_config(arg.runlocal)
  c.task = "stylejax.models.muse:MuseTask"
  c.model = ml_collections.ConfigDict(dict(
      layout="maskgit", codebook_size=common.SHAPESTYLE_CODES, seq_len=64, num_classes=216, null_class=True,
      width=256, depth=6, heads=8, mlp_dim=1024, dropout=0.1, conv_blocks=0,
      label_smoothing=0.1, mask_schedule="cosine", min_mask_rate=0.0,
      cond_dropout=0.1,  # trains the null class so CFG is available at sampling time
      adapters=ml_collections.ConfigDict(dict(kind="none"))))
  c.data = ml_collections.ConfigDict(dict(name="shapestyle", image_size=64, seed=0, num_examples=1_000_000,
                                          styles="named+plain", plain_fraction=None))
  c.tokenizer, _ = common.shapestyle_parts(arg.runlocal)
  c.total_steps = 20_000
  c.batch_size = 64
  c.optimizer.update(lr=1e-3, b1=0.9, b2=0.96, weight_decay=0.045, warmup_steps=500)
  c.checkpoint.every = 1000
  c.log_every = 50
  c.sample = common.sample_config(num_steps=8, mode="none")  # MaskGIT: no guidance
  if arg.runlocal:
    c.model.update(codebook_size=32, seq_len=16, width=32, depth=2, heads=2, mlp_dim=64)
    c.data.update(image_size=32, num_examples=256)
    c.sample.num_steps = 4
    common.use_runlocal_schedule(c)
  return c
