"""Quality checks of ShapeStyle models against the world's exact ground truth (`stylejax eval`).

One function per kind of run, each returning {metric name: Metric} (metrics.py: mean, ci95, n):

  tokenizer  content accuracy of reconstructions per head, style_fidelity(recon, original)
  clip       zero-shot shape accuracy (prompt "a {shape}"-style captions of every shape), CLIP-T
  content    classifier accuracy per head on test images in named, plain and held-out styles
  style      style retrieval top-1 among 50 styles (one gallery image each, other contents)
  muse, ar   text_fidelity on held-out (content, style) prompts, plain and named; style_fidelity
             of named-style prompts vs plain-prompt images to a true rendering in that style

Test images come from the test split / held-out styles, never from the training streams.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from stylejax.data import shapestyle as ss
from stylejax.eval import metrics as M

HEADS = M.LABEL_HEADS


def _examples(n: int, styles: list[ss.Style], seed: int, image_size: int = 64
              ) -> tuple[np.ndarray, dict[str, np.ndarray], list[ss.Style]]:
  """n test renders with random contents, styles cycled: (images [n, S, S, 3], labels, styles)."""
  rng = np.random.default_rng([seed, 0xE7A1])
  images, labels, used = [], {h: [] for h in HEADS}, []
  for i in range(n):
    content = ss.random_content(rng)
    style = styles[i % len(styles)]
    images.append(ss.render(content, style, image_size, rng)[0])
    for h in HEADS:
      labels[h].append(getattr(content, h))
    used.append(style)
  return np.stack(images), {h: np.asarray(v) for h, v in labels.items()}, used


def style_sets(num_heldout: int = 16) -> dict[str, list[ss.Style]]:
  return {"named": list(ss.NAMED_STYLES), "plain": [ss.PLAIN_STYLE],
          "heldout": [ss.heldout_style(k) for k in range(num_heldout)]}


def _accuracy(pred: dict[str, np.ndarray], labels: dict[str, np.ndarray], prefix: str) -> dict[str, M.Metric]:
  out = {f"{prefix}{h}_accuracy": M.rate_ci(pred[h] == labels[h]) for h in HEADS}
  out[f"{prefix}all_accuracy"] = M.text_fidelity(pred, labels)
  return out


def content_classifier(scorers, num: int = 600, seed: int = 0) -> dict[str, M.Metric]:
  out = {}
  for name, styles in style_sets().items():
    images, labels, _ = _examples(num // 3, styles, seed)
    out.update(_accuracy(scorers.classify(images), labels, f"{name}/"))
  return out


def style_retrieval(scorers, num_styles: int = 50, queries_per_style: int = 4, seed: int = 0
                    ) -> dict[str, M.Metric]:
  """Top-1 retrieval: each query image must be nearest to the gallery image of its own style.

  Styles: the 24 named + plain + held-out styles up to `num_styles`; query and gallery contents differ.
  """
  named = list(ss.NAMED_STYLES) + [ss.PLAIN_STYLE]
  styles = (named + [ss.heldout_style(k, seed=7) for k in range(max(0, num_styles - len(named)))])[:num_styles]
  gallery, _, _ = _examples(len(styles), styles, seed)
  queries, _, used = _examples(len(styles) * queries_per_style, styles, seed + 1)
  g, q = scorers.style_embed(gallery), scorers.style_embed(queries)
  truth = np.arange(len(queries)) % len(styles)
  hit = np.argmax(q @ g.T, axis=1) == truth
  heldout = np.asarray([s.id >= ss.HELDOUT_ID_OFFSET for s in used])
  return {f"retrieval_top1_{len(styles)}_styles": M.rate_ci(hit),
          "retrieval_top1_heldout_queries": M.rate_ci(hit[heldout])}


def tokenizer_items(image_tokenizer, scorers, num: int = 300, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  """Per-image reconstruction scores of `num` test renders, half in named + plain styles, half in held-out
  ones: {"named"|"heldout": {"pred", "labels" (head -> [N]), "style" [N] (style-encoder cosine of recon to
  original), "l1" [N]}}. The same renders for every tokenizer, so two tokenizers' items pair."""
  out = {}
  for name, styles in (("named", style_sets()["named"] + [ss.PLAIN_STYLE]), ("heldout", style_sets()["heldout"])):
    images, labels, _ = _examples(num // 2, styles, seed, image_tokenizer.image_size)
    recon = image_tokenizer.decode(image_tokenizer.encode(images))
    out[name] = dict(pred=scorers.classify(recon), labels=labels,
                     style=M.cosine(scorers.style_embed(recon), scorers.style_embed(images)),
                     l1=np.abs(recon.astype(np.float32) - images).mean((1, 2, 3)) / 255.0)
  return out


def tokenizer(image_tokenizer, scorers, num: int = 300, seed: int = 0) -> dict[str, M.Metric]:
  return tokenizer_metrics(tokenizer_items(image_tokenizer, scorers, num, seed))


def tokenizer_metrics(per_set: dict[str, dict[str, np.ndarray]]) -> dict[str, M.Metric]:
  """`tokenizer_items` -> {set/metric: mean [95% CI]}: per-head and all-heads accuracy, style, L1."""
  out = {}
  for name, items in per_set.items():
    out.update(_accuracy(items["pred"], items["labels"], f"{name}/recon_"))
    out[f"{name}/style_fidelity_recon"] = M.mean_ci(items["style"])
    out[f"{name}/l1"] = M.mean_ci(items["l1"])
  return out


def zero_shot_hits(embedder, images: np.ndarray, labels: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Whether each image [N, S, S, 3] is closest to its own caption among the 9 that keep its color and
  count and vary only the shape: (hits [N] bool, image embeddings [N, D])."""
  img = embedder.embed_images(images)
  captions = [ss.Content(k, int(c), int(n)).caption for c, n in zip(labels["color"], labels["count"])
              for k in range(len(ss.SHAPES))]
  txt = embedder.embed_texts(captions).reshape(len(images), len(ss.SHAPES), -1)
  return np.argmax(np.einsum("nd,nkd->nk", img, txt), axis=1) == labels["shape"], img


def clip_zero_shot(embedder, num: int = 600, seed: int = 0) -> dict[str, M.Metric]:
  """Zero-shot shape accuracy: each image against the 9 content captions that keep its true color and
  count and vary only the shape ("two red stars", "two red circles", ...); plus CLIP-T to its caption."""
  out = {}
  for name, styles in style_sets().items():
    images, labels, used = _examples(num // 3, styles, seed)
    hits, img = zero_shot_hits(embedder, images, labels)
    out[f"{name}/zero_shot_shape_accuracy"] = M.rate_ci(hits)
    true = [ss.caption_for(ss.Content(int(s), int(c), int(n)), st)
            for s, c, n, st in zip(labels["shape"], labels["color"], labels["count"], used)]
    out[f"{name}/clip_t_true_caption"] = M.clip_t(img, embedder.embed_texts(true))
  return out


def heldout_prompts(heldout_fraction: float, prompts_per_set: int = 96, seed: int = 0
                    ) -> dict[str, tuple[list[str], list[ss.Content], list[ss.Style]]]:
  """Prompts held out of training (`ss.is_heldout_prompt`): {"plain"|"named": (captions, contents, styles)}."""
  frac = heldout_fraction or 0.1
  rng = np.random.default_rng([seed, 0x3D5E])
  out = {}
  for name, styles in (("plain", [ss.PLAIN_STYLE]), ("named", list(ss.NAMED_STYLES))):
    prompts, contents, chosen = [], [], []
    while len(prompts) < prompts_per_set:
      c = ss.random_content(rng)
      s = styles[int(rng.integers(len(styles)))]
      if ss.is_heldout_prompt(c, s, frac):
        prompts.append(ss.caption_for(c, s))
        contents.append(c)
        chosen.append(s)
    out[name] = (prompts, contents, chosen)
  return out


def generate_all(generate, prompts: list[str], seed: int = 0, chunk: int = 32) -> np.ndarray:
  """One image per prompt, `chunk` prompts per call, the call's seed offset by its first index: [N, S, S, 3]."""
  return np.concatenate([generate(prompts[i:i + chunk], 1, seed + i) for i in range(0, len(prompts), chunk)])


def content_labels(contents: list[ss.Content]) -> dict[str, np.ndarray]:
  """{"shape","color","count"} -> [N] int arrays of the contents' labels."""
  return {h: np.asarray([getattr(c, h) for c in contents]) for h in HEADS}


def prompt_hits(generate, prompts: list[str], contents: list[ss.Content], scorers, seed: int = 0
                ) -> dict[str, np.ndarray]:
  """One image per prompt, classified: {"all": every head agrees, "shape": the shape head agrees} -> [N] bool."""
  agree = M.text_fidelity_agreement(scorers.classify(generate_all(generate, prompts, seed)), content_labels(contents))
  return {"all": np.logical_and.reduce(list(agree.values())), "shape": np.asarray(agree["shape"], bool)}


def text_to_image(generate, image_size: int, heldout_fraction: float, scorers, prompts_per_set: int = 96,
                  seed: int = 0) -> dict[str, M.Metric]:
  """Text-to-image quality (Muse or AR base) on prompts held out of training (`heldout_prompts`).

  generate(prompts, num, seed) -> uint8 images.
  """
  out = {}
  for name, (prompts, contents, chosen) in heldout_prompts(heldout_fraction, prompts_per_set, seed).items():
    images = generate_all(generate, prompts, seed)
    labels = content_labels(contents)
    pred = scorers.classify(images)
    out[f"{name}/text_fidelity"] = M.text_fidelity(pred, labels)
    out.update({f"{name}/{h}_accuracy": m for h, m in M.text_fidelity_per_head(pred, labels).items()})
    # style: cosine to a true rendering of the same prompt's style in another content.
    refs = np.stack([ss.render(ss.Content((c.shape + 1) % len(ss.SHAPES), c.color, c.count),
                               s if name == "named" else chosen[i], image_size,
                               np.random.default_rng([seed, i]))[0] for i, (c, s) in enumerate(zip(contents, chosen))])
    out[f"{name}/style_fidelity_to_prompt_style"] = M.style_fidelity(scorers.style_embed(images),
                                                                      scorers.style_embed(refs))
    if name == "plain":
      plain_images = images
  # plain-prompt images scored against the named styles: the baseline the named prompts must beat.
  named_refs = np.stack([ss.render(ss.Content(0, 0, 1), s, image_size, np.random.default_rng(k))[0]
                         for k, s in enumerate(ss.NAMED_STYLES)])
  idx = np.arange(len(plain_images)) % len(ss.NAMED_STYLES)
  out["plain/style_fidelity_to_named_styles"] = M.style_fidelity(scorers.style_embed(plain_images),
                                                                  scorers.style_embed(named_refs)[idx])
  return out


def text_to_image_generator(workdir: str) -> tuple[str, Any, int, float] | None:
  """(kind "muse" | "ar", generate(prompts, num, seed) -> uint8 images, image size, held-out prompt fraction) of
  a Muse or text-to-image AR run or shipped name, from its config alone; None for any other kind of run."""
  from stylejax.models import ar_t2i, muse as muse_lib
  from stylejax.train import trainer
  from stylejax.train.task import load_task
  config = trainer.load_config(workdir)
  task = load_task(config)
  frac = config.data.get("heldout_prompts", 0.0)
  if isinstance(task, muse_lib.MuseTask):
    from stylejax.models.muse_pipeline import MusePipeline
    pipe = MusePipeline.load(workdir)
    return "muse", pipe.generate, pipe.tokenizer.image_size, frac
  if isinstance(task, ar_t2i.ARImageTask) and not config.get("style", {}).get("num_tokens"):
    return "ar", ar_t2i.ARImagePipeline.load(workdir).generate, int(config.data.image_size), frac
  return None


def evaluate(workdir: str, scorers=None, seed: int = 0, quick: bool = False) -> dict[str, Any]:
  """Dispatches on the run's task: {"kind": ..., "metrics": {name: Metric}}. `quick` shrinks n ~4x."""
  from stylejax.models import clip_task, scorers as scorers_lib, vqgan
  from stylejax.models.parts import ClipEmbedder, ImageTokenizer
  from stylejax.train import trainer
  from stylejax.train.task import load_task
  k = 4 if quick else 1

  def need_scorers():
    return scorers if scorers is not None else scorers_lib.scorers_from_workdirs()

  t2i = text_to_image_generator(workdir)  # its pipeline loads the weights itself
  if t2i is not None:
    kind, generate, image_size, frac = t2i
    return {"kind": kind, "metrics": text_to_image(generate, image_size, frac, need_scorers(), 96 // k, seed)}
  config, params = trainer.load_params(workdir, devices=None)
  task = load_task(config)
  params = trainer.params_to_numpy(params)

  if isinstance(task, scorers_lib.ContentClassifierTask):
    s = scorers_lib.Scorers(content_config=config.model.to_dict(), content_params=params,
                            image_size=int(config.data.image_size))
    return {"kind": "content", "metrics": content_classifier(s, 600 // k, seed)}
  if isinstance(task, scorers_lib.StyleEncoderTask):
    s = scorers_lib.Scorers(style_config=config.model.to_dict(), style_params=params,
                            image_size=int(config.data.image_size))
    return {"kind": "style", "metrics": style_retrieval(s, 50, max(1, 4 // k), seed)}
  if isinstance(task, vqgan.VQGANTask):
    return {"kind": "tokenizer", "metrics": tokenizer(ImageTokenizer(task, params), need_scorers(), 300 // k, seed)}
  if isinstance(task, clip_task.CLIPTask):
    return {"kind": "clip", "metrics": clip_zero_shot(ClipEmbedder(task, params), 600 // k, seed)}
  raise ValueError(f"{workdir} is a {type(task).__name__} run; `stylejax eval` knows tokenizer, clip, "
                   f"scorer, Muse and StyleDrop runs.")
