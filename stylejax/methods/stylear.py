"""StyleAR (arXiv 2505.19874; REFERENCE §4) on ShapeStyle: a frozen text-to-image AR base plus
in-context style tokens, LoRA, and optional DPO post-training.

Recipe (configs/stylear.py):
  * Style tokens: CLIP vision penultimate hidden states of the style image (`config.image_encoder`;
    on ShapeStyle `shapestyle:clip_style`, a tiny CLIP kept for the style its features carry)
    -> Perceiver resampler -> Q tokens written into Q placeholder positions after the text prefix
    (`ARImageTask` with `style.num_tokens = Q`).
  * Trained: rank-4 LoRA (no alpha) on q, k, v, o, MLP down and the LM head, and the resampler; the
    base decoder, VQ tokenizer and CLIP stay frozen (`optimizer.trainable`). The base weights come
    from `init_from.workdir` (an `ARImageTask` run; LoRA and resampler keep their fresh init).
  * Data: binary (prompt, image) pairs, the style tokens taken from that same image; the prompt is the
    content caption (no style words). Stylized (named and fresh random styles) and original (plain)
    images are mixed `data.mix` = "stylized:original" (paper best 1:3).
  * Style-enhanced tokens: Gaussian noise on the style tokens, sigma `style.noise` in training (0.1)
    and `sample.noise` at inference (0.3); optional patch-level content subtraction at inference
    (`sample.content_subtraction`, see `ARImageTask.style_tokens`).
  * Optional structure control (`structure.enabled`): the shape mask as a tokenized prefix image.
  * CFG with the image-only unconditional context (text, style and structure dropped).
    Not in the paper, opt-in: two-scale guidance (`sample.style_scale`) adds the style-only context as a
    second unconditional stream, so prompt and style are amplified separately (`ar_t2i.guidance_contexts`).
  * DPO post-training (`StyleARDPOTask`, configs/stylear.py:dpo): `build_dpo_pairs` samples K images per
    (prompt, style reference) from a StyleAR workdir, ranks them with the ShapeStyle scorers (text
    fidelity + style similarity - content leakage), keeps (best, worst) pairs, and stores the frozen
    reference model's sequence log-probs with them; the loss is DPO on the image ids' log-probs under
    the CFG-guided distribution the samples were drawn from (`dpo.logp_cfg_scale`; 0: the conditional
    stream's, the paper's DPO) plus an optional RPO term.

Public API for the CLI: `generate(workdir, prompts, style_image, num, seed, **overrides)` and
`evaluate(workdir, scorers, num_styles, prompts_per_style, samples, seed)` (StyleAR's N styles x
M prompts x K samples on held-out styles, prompts whose shape differs from the reference's).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stylejax.config import ConfigError
from stylejax.data import shapestyle as ss
from stylejax.eval import metrics as M
from stylejax.models.ar_t2i import (ARImagePipeline, ARImageTask, PipelineError, guidance_contexts,
                                    guidance_scales, style_scale_of)
from stylejax.sample import autoregressive as ar_sample, best_of as best_of_lib
from stylejax.train import dpo

# Fresh random training styles (the held-out family) come from this seed stream; eval held-out
# styles use `ss.heldout_style(k)` (seed 0), so training never sees an eval style.
TRAIN_STYLE_SEED = 0x57A7_0000
DPO_STYLE_SEED = 0x57A7_D000
_SPLIT_IDS = {"train": 0, "test": 1}
SCORE_WEIGHTS = dict(text=1.0, style=1.0, leakage=1.0)


def parse_mix(mix: Any) -> tuple[int, int]:
  """"stylized:original" (e.g. "1:3", "1:0" = stylized only) -> (stylized, original) weights."""
  try:
    a, b = (float(x) for x in str(mix).split(":"))
  except ValueError:
    raise ConfigError(f"data.mix={mix!r}; write stylized:original, e.g. '1:3' or '1:0'.") from None
  if a < 0 or b < 0 or a + b <= 0:
    raise ConfigError(f"data.mix={mix!r}; both parts must be >= 0 and not both 0.")
  return a, b


def reference(content: ss.Content, style: ss.Style, image_size: int, seed: Any) -> tuple[np.ndarray, np.ndarray]:
  """(style reference image, its content image): the same content and layout drawn in `style` and
  in the plain style (the patch-aligned f_content of StyleAR's content subtraction)."""
  image, _ = ss.render(content, style, image_size, np.random.default_rng(seed))
  plain, _ = ss.render(content, ss.PLAIN_STYLE, image_size, np.random.default_rng(seed))
  return image, plain


class StyleARPairs:
  """Binary (prompt, image) training pairs; the style tokens come from the image itself.

  Example i (deterministic in (seed, split, i)): stylized with probability s / (s + o) for
  `mix` = (s, o) -- a named style, or with `random_style_fraction` a fresh random style of the
  held-out family (`TRAIN_STYLE_SEED` stream) -- else original (plain). Caption = content caption.
  Fields: image [S, S, 3] uint8, caption_ids / caption_mask [T], stylized int32, shape_mask [S, S]
  (structure runs).
  """

  def __init__(self, tokenize, split: str = "train", image_size: int = 64, seed: int = 0,
               num_examples: int = 1_000_000, mix: Any = "1:3", random_style_fraction: float = 0.5,
               structure: bool = False):
    if split not in _SPLIT_IDS:
      raise ValueError(f"split={split!r}; use one of {tuple(_SPLIT_IDS)}.")
    if not 0.0 <= random_style_fraction <= 1.0:
      raise ConfigError(f"data.random_style_fraction={random_style_fraction}; use a value in [0, 1].")
    s, o = parse_mix(mix)
    self.stylized_prob = s / (s + o)
    self.tokenize, self.split_id, self.image_size = tokenize, _SPLIT_IDS[split], int(image_size)
    self.seed, self.num_examples, self.structure = int(seed), int(num_examples), structure
    self.random_style_fraction = float(random_style_fraction)
    self._captions: dict[str, tuple[np.ndarray, np.ndarray]] = {}

  def __len__(self) -> int:
    return self.num_examples

  def style(self, rng: np.random.Generator, index: int) -> ss.Style:
    if rng.random() >= self.stylized_prob:
      return ss.PLAIN_STYLE
    if rng.random() < self.random_style_fraction:
      return ss.training_style(index, TRAIN_STYLE_SEED, self.seed, self.split_id)
    return ss.NAMED_STYLES[int(rng.integers(len(ss.NAMED_STYLES)))]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index) % self.num_examples
    rng = np.random.default_rng([self.seed, self.split_id, index, 0x57A])
    style = self.style(rng, index)
    content = ss.random_content(rng)
    image, mask = ss.render(content, style, self.image_size, rng)
    caption = content.caption
    if caption not in self._captions:
      ids, cmask = self.tokenize([caption])
      self._captions[caption] = (ids[0], cmask[0])
    ids, cmask = self._captions[caption]
    out = {"image": image, "caption_ids": ids, "caption_mask": cmask, "stylized": np.int32(not style.is_plain)}
    if self.structure:
      out["shape_mask"] = mask
    return out


COND_KEYS = ("text_emb", "text_mask", "style_feats", "struct_ids")  # a prepared batch's conditioning fields


def _stacked(x: jax.Array, n: int = 2) -> jax.Array:
  """[B, ...] -> [nB, ...]: the rows stacked n times (n streams or sequences in one forward)."""
  return jnp.concatenate([x] * n, axis=0)


class StyleARTask(ARImageTask):
  """`ARImageTask` with style tokens, trained on `StyleARPairs` (data.name="stylear_pairs": image_size,
  seed, num_examples, mix, random_style_fraction). Freezing lives in the config's optimizer regexes."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    if not self.num_style:
      raise ConfigError("StyleAR needs style tokens; set style.num_tokens > 0 (StyleAR: 16).")
    self.style_scale = style_scale_of(config.get("sample", {}).get("style_scale"))  # the sampler's guidance

  def source(self, split: str = "train"):
    d = self.config.data
    if d.get("name") != "stylear_pairs":
      raise ConfigError(f"data.name={d.get('name')!r}; StyleARTask trains on 'stylear_pairs'.")
    return StyleARPairs(self.text_encoder.tokenize, split, d.image_size, d.get("seed", 0), d.num_examples,
                        d.get("mix", "1:3"), d.get("random_style_fraction", 0.5), self.structure)

  def sequence_logprobs(self, params: Any, cond: dict[str, Any], ids: jax.Array, cfg_scale: float = 0.0
                        ) -> jax.Array:
    """Sum of log p(ids | cond) over the image positions, [B]; style tokens without noise (the
    deterministic path both DPO's policy and its reference use). cond: text_emb, text_mask,
    style_feats[, struct_ids]. cfg_scale s > 0 scores the guided distribution the sampler draws from,
    softmax(uncond + s (cond - uncond)), with both streams in one batched forward; 0 the conditional one."""
    style = self.style_tokens(params, cond["style_feats"])
    if not cfg_scale:
      return dpo.sequence_logprobs(self.image_logits(params, cond, ids, style), ids)
    contexts = guidance_contexts(self.style_scale)
    n, b = len(contexts), ids.shape[0]
    drop, keep = (jnp.repeat(jnp.asarray(c), b) for c in zip(*contexts))
    logits = self.image_logits(params, {k: _stacked(v, n) for k, v in cond.items()}, _stacked(ids, n),
                               _stacked(style, n), drop, keep)
    scales = jnp.asarray(guidance_scales(cfg_scale, self.style_scale))
    guided = ar_sample.nested_cfg_combine(logits.reshape((n, b) + logits.shape[1:]), scales)
    return dpo.sequence_logprobs(guided, ids)


class DPOPairs:
  """Preference pairs written by `build_dpo_pairs` (an .npz): example i = one pair's fields."""

  FIELDS = ("caption_ids", "caption_mask", "style_image", "chosen_ids", "rejected_ids", "ref_chosen_logp",
            "ref_rejected_logp", "struct_ids")

  def __init__(self, path: str):
    if not path:
      raise ConfigError("dpo.pairs is empty; build pairs first with stylejax.methods.stylear.build_dpo_pairs "
                        "(launch/stylear_ablations.py does) and pass the .npz path.")
    if not os.path.exists(path):
      raise ConfigError(f"dpo.pairs={path!r} does not exist; build it with stylear.build_dpo_pairs.")
    with np.load(path) as f:
      self.arrays = {k: f[k] for k in self.FIELDS if k in f}
      self.logp_cfg_scale = float(f["logp_cfg_scale"]) if "logp_cfg_scale" in f else 0.0
    if len(self.arrays["chosen_ids"]) == 0:
      raise ConfigError(f"{path} holds no preference pairs (all samples tied); sample more per prompt.")

  def __len__(self) -> int:
    return len(self.arrays["chosen_ids"])

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[int(index) % len(self)] for k, v in self.arrays.items()}


class StyleARDPOTask(StyleARTask):
  """DPO post-training of a StyleAR run (Rafailov et al. 2023; `stylejax.train.dpo`).

  config.dpo: pairs (the .npz from `build_dpo_pairs`), beta, label_smoothing, sft_weight, logp_cfg_scale
  (0: conditional log-probs; s > 0: log-probs of the guided distribution at CFG s). The reference
  model is the StyleAR run the pairs were sampled from; its sequence log-probs are computed once
  with the pairs (frozen, exact: the same deterministic forward as the policy's), so a step runs
  one forward of the policy over the stacked [chosen; rejected] rows (twice the rows when guided: the
  unconditional stream too). init_from.workdir should be that same run, so the DPO term starts at log 2.
  """

  @property
  def logp_cfg_scale(self) -> float:
    return float(self.config.dpo.get("logp_cfg_scale", 0.0))

  def source(self, split: str = "train"):
    pairs = DPOPairs(self.config.dpo.pairs)
    if pairs.logp_cfg_scale != self.logp_cfg_scale:
      raise ConfigError(f"dpo.logp_cfg_scale={self.logp_cfg_scale:g} but {self.config.dpo.pairs} holds reference "
                        f"log-probs at {pairs.logp_cfg_scale:g}; set dpo.logp_cfg_scale={pairs.logp_cfg_scale:g} "
                        "or rebuild the pairs with build_dpo_pairs(..., logp_cfg_scale=...).")
    return pairs

  def flops_per_example(self) -> float:
    streams = len(guidance_contexts(self.style_scale)) if self.logp_cfg_scale else 1  # conditional (+ guidance)
    return 2.0 * streams * super().flops_per_example()  # chosen and rejected sequences

  def loss(self, params, batch, rng):
    b = batch["chosen_ids"].shape[0]
    cond = {k: _stacked(batch[k]) for k in COND_KEYS if k in batch}
    logps = self.sequence_logprobs(params, cond, jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]], 0),
                                   self.logp_cfg_scale)
    d = self.config.dpo
    return dpo.dpo_loss(logps[:b], logps[b:], batch["ref_chosen_logp"], batch["ref_rejected_logp"],
                        float(d.beta), float(d.get("label_smoothing", 0.0)),
                        sft_weight=float(d.get("sft_weight", 0.0)), chosen_tokens=float(batch["chosen_ids"].shape[1]))


# ----------------------------------------------------------------------------------------- public API


def load(workdir: str) -> ARImagePipeline:
  """The sampling pipeline of a StyleAR (or AR base) workdir."""
  return ARImagePipeline.load(workdir)


def generate(workdir: str | ARImagePipeline, prompts: Sequence[str], style_image: np.ndarray | None = None,
             num: int = 1, seed: int = 0, **overrides: Any) -> np.ndarray:
  """Images uint8 [len(prompts) * num, H, W, 3] in the style of `style_image` ([H, W, 3], uint8 or
  float in [0, 1]; any size). overrides: sampling settings (cfg_scale, temperature, top_k, top_p,
  noise, content_subtraction, subtraction_scale, subtraction_blend, style_scale) and content_image /
  structure_image (a mask or an image; structure runs default to the prompt's own shape mask)."""
  pipe = workdir if isinstance(workdir, ARImagePipeline) else load(workdir)
  content, structure = overrides.pop("content_image", None), overrides.pop("structure_image", None)
  return pipe.generate(list(prompts), num, seed, style_images=style_image, content_images=content,
                       structure_images=structure, **overrides)


def _seed_keys(seeds: Sequence[int], candidates: int = 1) -> jax.Array:
  """PRNG keys [N * candidates]: key(seed) per row, or with candidates > 1 fold_in(key(seed), c) for c < candidates
  (row-major: a seed's candidates are consecutive)."""
  keys = jax.vmap(jax.random.key)(jnp.asarray(np.asarray(seeds, np.uint32)))
  if candidates == 1:
    return keys
  return jax.vmap(jax.random.fold_in)(jnp.repeat(keys, candidates), jnp.tile(jnp.arange(candidates), len(seeds)))


def _batched(pipe: ARImagePipeline, texts: list[str], keys: jax.Array, style_images: np.ndarray | None,
             content_images: np.ndarray | None, structure: np.ndarray | None, batch_size: int,
             **overrides: Any) -> np.ndarray:
  """ids [N, L] for N rows (keys [N]) in fixed-size batches (the last one padded), so the decode loop compiles once."""
  n = len(texts)
  out = []
  for start in range(0, n, batch_size):
    idx = np.minimum(np.arange(start, start + batch_size), n - 1)
    take = lambda a: None if a is None else a[idx]
    ids = pipe.sample_rows([texts[i] for i in idx], keys[jnp.asarray(idx)], take(style_images),
                           take(content_images), take(structure), **overrides)
    out.append(ids[:min(batch_size, n - start)])
  return np.concatenate(out, 0)


def evaluate(workdir: str | ARImagePipeline, scorers: Any, num_styles: int = 10, prompts_per_style: int = 20,
             samples: int = 4, seed: int = 0, batch_size: int = 32, clip: bool = True, return_per_image: bool = False,
             **overrides: Any) -> dict[str, M.Metric] | tuple[dict[str, M.Metric], dict[str, np.ndarray]]:
  """StyleAR's protocol (10 styles x 20 prompts x 4 images) on ShapeStyle held-out styles.

  Style k: `ss.heldout_style(k)`, one reference image of a random content; its M prompts are
  content captions whose shape differs from the reference's (so leakage is measurable on every
  image). A run without style tokens (the AR base) gets the style through its caption words
  instead ("... in {descriptor} style"). Metrics (overall): text_fidelity, style_fidelity,
  content_leakage and, with `clip`, clip_t (vs the content prompt) and clip_i (vs the reference),
  each {"mean", "ci95", "n"}. `overrides`: sampling settings as in `generate`, and best_of=N (each image the
  best of N candidates by CLIP(image, prompt), `sample/best_of.py`; best_of_clip: its CLIP, default the run's;
  best_of_rank: "cosine" or "contrastive"; with N > 1 also text_fidelity_oracle, the rate at which any of the N
  candidates is right). With `return_per_image`, also the per-image scores ({name: [N]} in
  job order, NaN where a metric does not count): two runs evaluated with the same arguments score the same items,
  so they can be compared paired.
  """
  pipe = workdir if isinstance(workdir, ARImagePipeline) else load(workdir)
  n, clip_spec = best_of_lib.check(overrides.pop("best_of", 1)), overrides.pop("best_of_clip", None)
  rank = best_of_lib.check_rank(overrides.pop("best_of_rank", "cosine"))
  size = pipe.image_size
  styles = [ss.heldout_style(k) for k in range(num_styles)]
  protocol = M.evaluation_protocol(styles, range(prompts_per_style), samples, seed)
  refs, plains, ref_contents = [], [], []
  for k, style in enumerate(styles):
    content = ss.random_content(np.random.default_rng([seed, k, 0x5EF]))
    image, plain = reference(content, style, size, [seed, k, 0x5EE])
    refs.append(image)
    plains.append(plain)
    ref_contents.append(content)
  prompt_of = {(k, j): ss.random_content(np.random.default_rng([seed, k, j, 0x9A]), ref_contents[k].shape)
               for k in range(num_styles) for j in range(prompts_per_style)}
  jobs = protocol.jobs()
  contents = [prompt_of[(j.style_index, j.prompt_index)] for j in jobs]
  texts = [c.caption if pipe.has_style else ss.caption_for(c, j.style) for c, j in zip(contents, jobs)]
  seeds = [j.seed for j in jobs]
  si = np.asarray([j.style_index for j in jobs])
  style_images = np.stack(refs)[si] if pipe.has_style else None
  settings = pipe.settings(**overrides)[1]
  content_images = np.stack(plains)[si] if pipe.has_style and settings["content_subtraction"] else None
  structure = pipe.default_structure(texts, seeds) if pipe.task.structure else None
  # best of N by CLIP(image, prompt) (`sample/best_of.py`): N candidates per job, the CLIP's pick scored
  rows = np.repeat(np.arange(len(jobs)), n)
  each = lambda a: None if a is None else a[rows]
  row_texts = [texts[r] for r in rows]
  ids = _batched(pipe, row_texts, _seed_keys(seeds, n), each(style_images), each(content_images), each(structure),
                 batch_size, **overrides)
  candidates = pipe.task.image_tokenizer.decode(ids)
  pick = best_of_lib.select(candidates, row_texts, n, clip_spec or pipe.config.get("text_encoder"), rank)
  images = candidates[pick]

  # every candidate scored once; the pick's scores are its rows
  scores = sample_scores(scorers, candidates, [contents[r] for r in rows], np.stack(refs)[si][rows],
                         [ref_contents[si[r]].shape for r in rows])
  per_image = {"text_fidelity": scores["text"][pick], "style_fidelity": scores["style"][pick],
               "content_leakage": scores["leakage"][pick]}
  if n > 1:  # the ranking's ceiling: 1 where any of the job's N candidates is right (best_of_headroom's oracle)
    per_image["text_fidelity_oracle"] = scores["text"].reshape(-1, n).max(1)
  if clip:
    embedder = pipe.task.clip_embedder
    img = embedder.embed_images(images)
    per_image["clip_t"] = M.cosine(img, embedder.embed_texts([c.caption for c in contents]))
    per_image["clip_i"] = M.cosine(img, embedder.embed_images(np.stack(refs))[si])
  if structure is not None:
    per_image.update(structure_scores(images, structure, contents, [styles[i] for i in si], seeds))
  overall = protocol.aggregate(per_image)["overall"]
  return (overall, per_image) if return_per_image else overall


def structure_scores(images: np.ndarray, masks: np.ndarray, contents: Sequence[ss.Content],
                     styles: Sequence[ss.Style], seeds: Sequence[int]) -> dict[str, np.ndarray]:
  """Per image [N], IoU of the estimated foreground (`M.foreground_mask`) with: its structure mask
  (structure_iou), the next image's mask (structure_iou_chance: what ignoring the mask scores) and,
  for true renders of the same contents in the same styles, their own masks (structure_iou_ceiling:
  what the estimator can see in these styles)."""
  truth = [ss.render(c, st, images.shape[1], np.random.default_rng([int(s), 0x57C])) for c, st, s
           in zip(contents, styles, seeds)]
  return {"structure_iou": M.structure_adherence(images, masks),
          "structure_iou_chance": M.structure_adherence(images, np.roll(masks, 1, axis=0)),
          "structure_iou_ceiling": M.structure_adherence(np.stack([t[0] for t in truth]),
                                                         np.stack([t[1] for t in truth]))}


def sample_scores(scorers: Any, images: np.ndarray, prompt_contents: Sequence[ss.Content], ref_images: np.ndarray,
                  ref_shapes: Sequence[int]) -> dict[str, np.ndarray]:
  """Per image [N]: text (1 if shape, color and count all match the prompt), style (style-encoder
  cosine to its reference), leakage (1 if the reference's shape shows where the prompt asked for
  another; NaN where they agree)."""
  pred = scorers.classify(images)
  want = {h: np.asarray([getattr(c, h) for c in prompt_contents]) for h in M.LABEL_HEADS}
  text = np.logical_and.reduce([pred[h] == want[h] for h in M.LABEL_HEADS]).astype(np.float64)
  style = M.cosine(scorers.style_embed(images), scorers.style_embed(ref_images))
  ref_shapes = np.asarray(ref_shapes)
  leak = np.where(want["shape"] != ref_shapes, (pred["shape"] == ref_shapes).astype(np.float64), np.nan)
  return {"text": text, "style": style, "leakage": leak}


def preference_score(scores: dict[str, np.ndarray], weights: dict[str, float] | None = None) -> np.ndarray:
  """w_text * text + w_style * style - w_leakage * leakage (leakage NaN counts 0)."""
  w = {**SCORE_WEIGHTS, **(weights or {})}
  return w["text"] * scores["text"] + w["style"] * scores["style"] - w["leakage"] * np.nan_to_num(scores["leakage"])


def build_dpo_pairs(workdir: str | ARImagePipeline, scorers: Any, out_path: str, num_prompts: int = 256,
                    samples_per_prompt: int = 4, seed: int = 0, weights: dict[str, float] | None = None,
                    batch_size: int = 32, min_gap: float = 0.0, logp_cfg_scale: float | None = None,
                    **overrides: Any) -> dict[str, Any]:
  """Samples `samples_per_prompt` images for each of `num_prompts` (prompt, style reference) pairs
  from a StyleAR run, ranks them by `preference_score`, keeps (best, worst) per prompt whose scores
  differ by more than `min_gap` (`dpo.preference_pairs`), and writes the pairs plus the run's (the
  frozen reference's) sequence log-probs to `out_path` (.npz) for `StyleARDPOTask`. References use
  training-family styles (named, or fresh random ones from a stream disjoint from eval and training).
  logp_cfg_scale: which log-probs the reference gets (`StyleARTask.sequence_logprobs`; the DPO config's
  must match); None: the CFG scale the pairs are sampled at (the guided distribution they come from).
  Returns a summary.
  """
  if not out_path.endswith(".npz"):
    raise ValueError(f"out_path={out_path!r} must end in .npz.")
  pipe = workdir if isinstance(workdir, ARImagePipeline) else load(workdir)
  task = pipe.task
  if not isinstance(task, StyleARTask):
    raise PipelineError("DPO pairs need a StyleAR workdir (style tokens); this run has none.")
  if num_prompts < 1 or samples_per_prompt < 2:
    raise ValueError(f"need num_prompts >= 1 and samples_per_prompt >= 2; got {num_prompts}, {samples_per_prompt}.")
  size, k = pipe.image_size, samples_per_prompt
  if logp_cfg_scale is None:
    logp_cfg_scale = float(np.atleast_1d(pipe.settings(**overrides)[0].cfg_scale)[0])  # the prompt's scale
  rng = np.random.default_rng([seed, 0xD90])
  refs, ref_shapes, contents = [], [], []
  for n in range(num_prompts):
    style = (ss.heldout_style(n, seed=DPO_STYLE_SEED + seed) if rng.random() < 0.5
             else ss.NAMED_STYLES[int(rng.integers(len(ss.NAMED_STYLES)))])
    ref_content = ss.random_content(rng)
    refs.append(reference(ref_content, style, size, [seed, n, 0xD91])[0])
    ref_shapes.append(ref_content.shape)
    contents.append(ss.random_content(rng, ref_content.shape))
  texts = [c.caption for c in contents]
  rows = np.repeat(np.arange(num_prompts), k)
  seeds = [int(np.random.SeedSequence([seed, n, j, 0xD92]).generate_state(1)[0]) for n in range(num_prompts)
           for j in range(k)]
  # one structure per prompt (both halves of a pair must share their context)
  structure = (pipe.default_structure(texts, [seed * 7919 + n for n in range(num_prompts)])[rows]
               if task.structure else None)
  ids = _batched(pipe, [texts[i] for i in rows], _seed_keys(seeds), np.stack(refs)[rows], None, structure,
                 batch_size, **overrides)
  images = task.image_tokenizer.decode(ids)
  scores = preference_score(sample_scores(scorers, images, [contents[i] for i in rows], np.stack(refs)[rows],
                                          np.asarray(ref_shapes)[rows]), weights).reshape(num_prompts, k)
  chosen, rejected = dpo.preference_pairs(scores, min_gap)
  prompt = chosen // k
  caption_ids, caption_mask = task.text_encoder.tokenize([texts[i] for i in prompt]) if len(prompt) else (
      np.zeros((0, task.text_len), np.int32), np.zeros((0, task.text_len), np.int32))
  arrays = {"caption_ids": caption_ids, "caption_mask": caption_mask, "style_image": np.stack(refs)[prompt],
            "chosen_ids": ids[chosen], "rejected_ids": ids[rejected]}
  if task.structure:
    from stylejax.models.ar_t2i import mask_to_image
    arrays["struct_ids"] = task.image_tokenizer.encode(mask_to_image(structure[chosen] > 0.5))
  ref_c, ref_r = [], []
  logps = jax.jit(functools.partial(task.sequence_logprobs, cfg_scale=float(logp_cfg_scale)))
  for start in range(0, len(prompt), batch_size):
    part = task.prepare_batch({key: v[start:start + batch_size] for key, v in arrays.items()})
    cond = {key: part[key] for key in COND_KEYS if key in part}
    ref_c.append(np.asarray(logps(pipe.params, cond, jnp.asarray(part["chosen_ids"]))))
    ref_r.append(np.asarray(logps(pipe.params, cond, jnp.asarray(part["rejected_ids"]))))
  arrays["ref_chosen_logp"] = np.concatenate(ref_c) if ref_c else np.zeros((0,), np.float32)
  arrays["ref_rejected_logp"] = np.concatenate(ref_r) if ref_r else np.zeros((0,), np.float32)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  np.savez(out_path, **arrays, scores=scores, logp_cfg_scale=np.float32(logp_cfg_scale))
  gap = scores.max(1) - scores.min(1)
  return {"path": out_path, "pairs": int(len(prompt)), "prompts": num_prompts, "mean_score": float(scores.mean()),
          "mean_gap": float(gap.mean())}
