"""The embedded ShapeStyle world: every base model shipped with the package, one part each.

  stylejax train --config configs/shapestyle.py:tokenizer --workdir /tmp/ss_tokenizer  # VQGAN, 64x64 -> 8x8 codes
  stylejax train --config configs/shapestyle.py:clip --workdir /tmp/ss_clip            # tiny CLIP (CLIP-T/-I, text tower)
  stylejax train --config configs/shapestyle.py:content --workdir /tmp/ss_content      # content classifier (scorer)
  stylejax train --config configs/shapestyle.py:style --workdir /tmp/ss_style          # style encoder (scorer)
  stylejax train --config configs/shapestyle.py:base --workdir /tmp/ss_base            # text-to-image Muse
  stylejax train --config configs/shapestyle.py:ar --workdir /tmp/ss_ar                # text-to-image AR
  python launch/build_shapestyle.py      # all of them in order, exported as package data + measured
  stylejax train --config configs/shapestyle.py:clip,runlocal --workdir /tmp/s         # any part: seconds, 32x32

Parts:
  * `tokenizer` (default: the first stage everything else generates in) trains the VQGAN image
    tokenizer (`stylejax.models.vqgan:VQGANTask`) on ShapeStyle images, f8 and 4096 codes (the
    shipped one is then merged to 128: MERGE_CODES below).
  * `clip` trains the tiny CLIP (`stylejax.models.clip_task:CLIPTask`) on (image, caption) pairs with
    the shipped caption BPE (`stylejax/assets/shapestyle_bpe.json`).
  * `content`, `style`: the eval scorers (`stylejax.models.scorers`); export with
    `scorers_from_workdirs` + `save_scorers`.
  * `base`: the text-to-image Muse base (configs/muse.py sized for a CPU) on the shipped tokenizer + CLIP.
  * `ar`: the text-to-image AR base (configs/ar.py) StyleAR tunes, on the same parts.

Each part is sized for a 2-core CPU (speeds measured with `stylejax train` on one CPU device are noted per
part): 25-50 minutes each, except the shipped tokenizer, which is this `tokenizer` command followed by two
warm-restart stages (STAGES below; ~2 h in all). On an accelerator raise batch and steps.
"""
import ml_collections

from configs import common


def _tokenizer(c: ml_collections.ConfigDict, runlocal: bool) -> None:
  c.task = "stylejax.models.vqgan:VQGANTask"
  c.model = ml_collections.ConfigDict(dict(
      filters=32, channel_multipliers=[1, 1, 2, 2],  # f = 2**3 = 8: 64x64 -> 8x8 tokens
      num_res_blocks=1, embedding_dim=32, codebook_size=4096, quantizer="euclidean",
      maskgit_shortcut_quirk=False, recon_loss="l1", commitment=0.25,
      # Without these usage collapses (measured at 300 steps: 17% of codes per batch, perplexity 26).
      # Trained with 4096 codes (a token names background style x shape edge x color; 128 suffice once the
      # used ones are merged, MERGE_CODES below); the entropy
      # term is light because at MaskGIT's 0.1 it outweighs the L1 loss (0.59 vs 0.05). (Earlier 512- and
      # 4096-code runs that lost all colors were the GroupNorm bug fixed in vqgan.num_groups.)
      entropy_weight=0.01, dead_code_weight=1.0,
      # Shape pixels (the world's mask) weigh 10x in L1: unweighted, textured backgrounds dominate the
      # loss (at step 500 shapes came back as blobs of the wrong color; weighted, of the right one).
      foreground_weight=9.0,
      gan_weight=0.0, perceptual_weight=0.0, image_size=64,
      # Muse's decoder fine-tuning (DECODER_STAGES below): [] / 0 = the encoder's widths / blocks.
      decoder_channel_multipliers=[], decoder_res_blocks=0, decoder_extra_blocks=[],
      frozen_codes=False))
  # The perceptual network when model.perceptual_weight > 0: a frozen CLIP's vision hidden states (LPIPS-style)
  c.perceptual = ml_collections.ConfigDict(dict(workdir="", config="", layers=[0, 1, 2]))
  c.data = ml_collections.ConfigDict(dict(name="shapestyle", image_size=64, seed=0, num_examples=1_000_000,
                                          styles="named+plain", random_style_fraction=0.0))
  # Measured 0.7 steps/s with a CLIP training beside it (35 min); ~1.5 steps/s on 2 idle cores.
  c.total_steps = 1500
  c.batch_size = 32
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 100
  c.checkpoint.every = 500
  c.log_every = 50
  if runlocal:
    c.model.update(filters=8, embedding_dim=8, codebook_size=32, image_size=32)
    c.data.update(image_size=32, num_examples=256)


def _clip(c: ml_collections.ConfigDict, runlocal: bool) -> None:
  c.task = "stylejax.models.clip_task:CLIPTask"
  c.model = ml_collections.ConfigDict(dict(
      hidden=128, layers=4, heads=4, image_size=64, patch_size=8, projection_dim=64,
      hidden_act="quick_gelu", max_logit_scale=100.0,
      conv_stem=[],  # e.g. [32, 64, 128] (shipped, STAGES): stride-2 convs before the patch embedding (clip.py)
      tokenizer=""))  # "" = the shipped stylejax/assets/shapestyle_bpe.json
  c.data = ml_collections.ConfigDict(dict(
      image_size=64, seed=0, num_examples=1_000_000, styles="named+plain",
      plain_fraction=0.2,             # plain images: the "original" content look
      content_caption_fraction=0.25,  # styled images captioned by content alone
      # NegCLIP shape-swapped captions: without them zero-shot shape accuracy stayed at 0.22-0.34 after
      # 2000 steps (in-batch negatives nearly always differ in color or count already).
      hard_negatives=1,  # shape-swapped captions per image (0 to 8)
      random_style_fraction=0.0))  # images in fresh held-out-family styles, content-captioned
  # Measured ~3 steps/s (batch 64, one CPU device, 2 idle cores): 2000 steps in ~11 min idle. In-batch
  # retrieval (chance 1/64) reached ~0.6 by step 300 in a trial run.
  c.total_steps = 2000
  c.batch_size = 64
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = 200
  c.checkpoint.every = 1000
  c.log_every = 50
  if runlocal:
    c.model.update(hidden=32, layers=1, heads=2, image_size=32, patch_size=8, projection_dim=16)
    c.data.update(image_size=32, num_examples=256)


def _scorer(c: ml_collections.ConfigDict, runlocal: bool, part: str) -> None:
  # Both scorers see a fresh random style (held-out family) for `random_style_fraction` of examples.
  c.task = {"content": "stylejax.models.scorers:ContentClassifierTask",
            "style": "stylejax.models.scorers:StyleEncoderTask"}[part]
  c.model = ml_collections.ConfigDict(dict(widths=[16, 32, 64, 128], hidden=128))
  if part == "style":
    c.model.hidden = 256
    c.model.embed_dim = 64
    c.model.temperature = 0.1  # SupCon temperature (Khosla et al. 2020 use 0.1)
  c.data = ml_collections.ConfigDict(dict(
      image_size=64, seed=0,
      num_examples=1_000_000,      # generated on the fly; only sets the epoch length
      random_style_fraction=0.5,   # fresh random style per example -> unlimited styles
      include_plain=True))
  # ~1.8-2.9 steps/s measured on a busy 2-core CPU (content, batch 64). Content at 1500 steps scored all-heads
  # 0.92 / 1.00 / 0.88 (named / plain / held-out, n = 50); 8000 steps (46 min shared) >= 0.985 on every head.
  c.total_steps = 8000 if part == "content" else 1200
  c.batch_size = 64
  c.optimizer.lr = 2e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_steps = 200
  c.checkpoint.every = 1000
  c.log_every = 50
  if runlocal:
    c.model.widths = [8, 16, 32]
    c.model.hidden = 32
    if part == "style":
      c.model.embed_dim = 16
    c.data.image_size = 32
    c.data.num_examples = 256


def _base(c: ml_collections.ConfigDict, runlocal: bool) -> None:
  """The shipped text-to-image Muse: configs/muse.py on the shipped tokenizer and CLIP text tower."""
  from configs import muse
  c.update(muse.get_config("runlocal" if runlocal else None))
  if not runlocal:
    # Sized for a 2-core CPU: 3.7M params with the shipped 128-code vocabulary (1.2M of them the conv
    # blocks); ~2 steps/s at batch 32 on the idle 2 cores.
    c.model.update(width=192, depth=4, heads=4, mlp_dim=768)
    # Two ConvNeXt blocks on the token grid before and after the transformer (aMUSEd's U-ViT stages):
    # translation equivariance nearly doubled shape-token accuracy at 2500 steps (launch/shape_probe.py:
    # 0.195 -> 0.356 plain) and is what let more steps pay off (README; STAGES["base"] below).
    c.model.conv_blocks = 2
    c.total_steps = 2500
    c.batch_size = 32
    c.optimizer.update(lr=1e-3, warmup_steps=200)
    c.ema_decay = 0.999
    c.checkpoint.every = 500


def _ar(c: ml_collections.ConfigDict, runlocal: bool) -> None:
  """The shipped text-to-image AR base (what StyleAR tunes): configs/ar.py on the shipped parts."""
  from configs import ar
  c.update(ar.get_config("runlocal" if runlocal else None))


def _clip_fresh_styles(steps: int, fraction: float = 0.3, seed: int = 0, lr: str = "5e-4") -> tuple[str, ...]:
  """CLIP stages 4 on: conv stem, `fraction` of images in fresh held-out-family styles, text tower frozen
  (its projection trains); `seed` != 0 draws a new data stream (stages 4-7 all saw seed 0's first images)."""
  return ("--config.model.conv_stem=[32,64,128]", f"--config.data.random_style_fraction={fraction}",
          f"--config.optimizer.lr={lr}", "--config.optimizer.warmup_steps=100",
          "--config.checkpoint.every=500", '--config.optimizer.freeze=("^text_model",)',
          f"--config.total_steps={steps}") + ((f"--config.data.seed={seed}",) if seed else ())


# The shipped tokenizer is this part trained in three stages (warm restarts of the cosine schedule with
# fresh Adam state, `init_from` the previous stage): reconstruction quality kept rising with steps, and
# stage 3 lowers the shape-pixel weight so textured backgrounds count more. Measured on reconstructions
# (named styles, n = 150): shape accuracy 0.32 -> 0.66 -> 0.71, style_fidelity 0.25 -> 0.44 -> 0.53.
# launch/build_shapestyle.py runs a part's stages in order; each is `stylejax train` with these overrides.
# Parts not listed here are one command.
STAGES = {
    "tokenizer": (
        (),
        ("--config.total_steps=3000", "--config.optimizer.warmup_steps=50"),
        ("--config.total_steps=2000", "--config.optimizer.warmup_steps=50", "--config.model.foreground_weight=4.0"),
    ),
    # The shipped Muse base: 2500 steps, then 8000 more and 4500 more (fresh cosine schedule and Adam state
    # each time). The plain transformer continued 2500 steps did not improve (shape accuracy 0.167 / 0.042);
    # the conv-stage one did, and its third stage lifted named prompts (README); a fourth (4500 steps on a new
    # data stream) did not and is not part of it, nor are two 3000-step ones without dropout and label
    # smoothing (+0.04 / +0.04, not significant) or one with aMUSEd's text modulation of the conv stages
    # (`model.conv_text_adaln`: level on 384 distinct prompts; launch/SHAPESTYLE_FINDINGS.md, stops 34, 38, 42).
    "base": ((), ("--config.total_steps=8000", "--config.checkpoint.every=1000"),
             ("--config.total_steps=4500", "--config.checkpoint.every=500")),
    # The shipped AR base: 1800 steps, then 6000 more twice, 4500 more, and 6000 more on each of two new data
    # streams (fresh schedule and Adam state each time); held-out text_fidelity (n = 96, plain) rose 0.167 ->
    # 0.323 -> 0.375, then 0.435 -> 0.526 -> 0.667 -> 0.690 on n = 384 paired (named 0.552 -> 0.625 at the last;
    # launch/base_compare.py; README). A 2500-step fifth stage on the old stream did not move it, nor did a
    # seventh on another new stream (data seed 10), at the full or half peak lr (launch/SHAPESTYLE_FINDINGS.md,
    # stops 33, 37 and 39).
    "ar": ((), ("--config.total_steps=6000", "--config.checkpoint.every=1000"),
           ("--config.total_steps=6000", "--config.checkpoint.every=1000"),
           ("--config.total_steps=4500", "--config.checkpoint.every=500"),
           ("--config.total_steps=6000", "--config.checkpoint.every=1000", "--config.data.seed=8"),
           ("--config.total_steps=6000", "--config.checkpoint.every=1000", "--config.data.seed=9")),
    # The shipped CLIP: 6000 more steps on the vision tower alone (the text tower, which conditions both
    # bases, frozen and bit-identical): zero-shot shape accuracy (named, n = 200) 0.25 -> 0.44, and a
    # linear probe of its image embeddings 0.21 -> 0.40; then the vision tower's patchify stem replaced by
    # a conv stem (fresh; the transformer warm) and 6000 more steps, text tower still frozen; then 4000
    # more with 30% of images in fresh held-out-family styles (content captions) and the text projection
    # trainable (the bases read the text tower's hidden states, not its projection); then the same again for
    # 5000 steps and 4000 more (warm restarts: held-out zero-shot shape 0.595 -> 0.745 -> 0.820), and 3000 more
    # with half the images in fresh styles (0.832 -> 0.862 on n = 600, paired); then 3000-step stages, each on a
    # new data stream (`data.seed`), lr halved from the ninth and 70% fresh styles from the tenth: held-out
    # 0.862 -> 0.885 -> 0.897 -> 0.913 (paired, n = 600), then level at 0.91 while named rises (README tables).
    "clip": ((), ("--config.total_steps=6000", "--config.optimizer.lr=5e-4",
                  '--config.optimizer.freeze=("^text_",)'),
             ("--config.model.conv_stem=[32,64,128]", '--config.init_from.dont_load=["patch_embedding"]',
              "--config.total_steps=6000", "--config.optimizer.lr=1e-3", "--config.checkpoint.every=500",
              '--config.optimizer.freeze=("^text_",)'),
             _clip_fresh_styles(4000), _clip_fresh_styles(5000), _clip_fresh_styles(4000),
             _clip_fresh_styles(3000, fraction=0.5), _clip_fresh_styles(3000, fraction=0.5, seed=8),
             _clip_fresh_styles(3000, fraction=0.5, seed=16, lr="2.5e-4"),
             _clip_fresh_styles(3000, fraction=0.7, seed=24, lr="2.5e-4"),
             _clip_fresh_styles(3000, fraction=0.7, seed=32, lr="2.5e-4")),
}

# Parts that are an earlier stage of another part's chain: {part: (source part, stages)}. StyleAR's style
# tokens read the CLIP after its conv-stem stage 3: each later stage names shape better across unseen styles
# and leaves its features less style (StyleAR style_fidelity 0.200 -> 0.118 -> 0.097 with stages 3 / 4 / 5).
SNAPSHOTS = {"clip_style": ("clip", 3)}

# After its stages, the shipped tokenizer's codebook is merged to this many codes (usage-weighted k-means,
# `vqgan.merge_codebook`; encoder and decoder unchanged). Training leaves one visual patch spread over many
# near-twin ids (a one-off probe: 584 of 4096 codes in use, 55% decoding within RMS 0.01 of another).
# Reconstructions (build eval, named / held-out styles, n = 37): shape 0.76 / 0.60 -> 0.76 / 0.68,
# style_fidelity 0.52 / 0.26 -> 0.48 / 0.17. The generators on 128 codes are 40-45% smaller and predict their targets better (Muse
# masked accuracy 0.23 -> 0.31); shape drawing came with conv stages and more steps (README).
MERGE_CODES = {"tokenizer": common.SHAPESTYLE_CODES}

# Then Muse's decoder fine-tuning (Chang et al. 2023, "Decoder finetuning"): the merged tokenizer's decoder grows
# identity-initialised res blocks at 32x32 / 16x16 / 8x8 and trains on the frozen encoder's codes, so token
# ids (and the generators trained on them) are unchanged; then 2000 more steps with MaskGIT's VQGAN losses
# added (PatchGAN hinge, weight 0.1; a perceptual loss, weight 0.1, on the frozen clip_style vision tower's
# hidden states 0-2, LPIPS-normalised, where no VGG can be downloaded): style_fidelity(recon) rose on named and
# held-out styles, content level (launch/SHAPESTYLE_FINDINGS.md, stop 40); then 2000 more with a quarter of the
# images in fresh held-out-family styles: held-out style up, named level (stop 41), and 1500 more of those on a
# new data stream: held-out up again (stop 42); a fifth on another stream, with 25% or 50% fresh styles, was level
# (stop 43) and is not part of it. The build runs the stages in order, the first `init_from` the merged export.
_FROZEN_CODES = (
    f"--config.model.codebook_size={common.SHAPESTYLE_CODES}", "--config.model.decoder_extra_blocks=[0,1,2,4]",
    "--config.model.frozen_codes=True", '--config.optimizer.freeze=("^encoder/","^quantizer/")',
    "--config.model.entropy_weight=0", "--config.model.dead_code_weight=0", "--config.model.foreground_weight=4.0",
    "--config.total_steps=2000", "--config.optimizer.lr=5e-4", "--config.optimizer.warmup_steps=50",
    "--config.checkpoint.every=250")
_VQGAN_LOSSES = ("--config.model.gan_weight=0.1", "--config.model.perceptual_weight=0.1",
                 "--config.perceptual.workdir=shapestyle:clip_style")
# A quarter of the images in fresh held-out-family styles, from the previous stage's export (a fresh discriminator).
_FRESH_STYLES = (*_FROZEN_CODES, *_VQGAN_LOSSES, "--config.data.random_style_fraction=0.25",
                 '--config.init_from.dont_load=("^discriminator/",)')
DECODER_STAGES = {"tokenizer": (
    _FROZEN_CODES,
    (*_FROZEN_CODES, *_VQGAN_LOSSES),
    _FRESH_STYLES,
    # the same, 1500 steps on a new data stream (stop 42: held-out style(recon) 0.406 -> 0.465, the rest level)
    (*_FRESH_STYLES, "--config.total_steps=1500", "--config.data.seed=8"))}

_PARTS = {
    "tokenizer": _tokenizer,
    "clip": _clip,
    "content": lambda c, runlocal: _scorer(c, runlocal, "content"),
    "style": lambda c, runlocal: _scorer(c, runlocal, "style"),
    "base": _base,
    "ar": _ar,
}


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, variant="tokenizer", runlocal=False)
  if arg.variant not in _PARTS:
    raise ValueError(f"unknown shapestyle part {arg.variant!r}; use one of {sorted(_PARTS)}.")
  c = common.base_config(arg.runlocal)
  _PARTS[arg.variant](c, arg.runlocal)
  if arg.runlocal:  # base_config's runlocal trainer settings (4 steps, batch 8), after the part's own
    c.total_steps = 4
    c.batch_size = 8
    c.log_every = 1
    c.checkpoint.every = 2
    c.optimizer.warmup_steps = 1
  return c
