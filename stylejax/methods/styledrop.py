"""StyleDrop (Sohn et al. 2023, arXiv 2306.00983): one style image in, a style adapter out.

  stylejax train --config configs/styledrop.py --workdir /tmp/sd \
      --config.styledrop.style_image=ref.png --config.styledrop.descriptor="watercolor"
  stylejax sample --workdir /tmp/sd --prompt "two red stars" --out stars.png   # descriptor appended

  sd = stylejax.styledrop.tune("shapestyle:base", image, "watercolor", rounds=2, workdir="/tmp/sd")
  images = sd.generate(["two red stars"], style_guidance=2.0, content_guidance=5.0)

The recipe (REFERENCE.md §3), each step resumable:
  round 1  train adapters only (base frozen, no optimizer state for it) on the reference image,
           augmented, captioned "{content} in {descriptor} style";
  feedback sample N candidates per content prompt with the round-1 model, select (`clip`: best of N by
           CLIP(image, content text) after an optional CLIP(image, reference) >= mean style filter;
           `scorer`: ShapeStyle's exact content classifier + style encoder; `human`: a contact sheet
           whose exported selection file comes back through `styledrop.selection`);
  round 2  train fresh adapters (`warm_start`: round 1's, continued) on the reference + selected images.
Sampling uses StyleDrop guidance l(c,θs) + λA[l(c,θs) − l(c,θ0)] + λB[l(c,θ0) − l(∅,θ0)].

Workdir: config.json, reference.png, round{k}/ (a `stylejax train` workdir + adapters.safetensors),
data_round{k}.npz, candidates_round{k}/ (candidates.npz, contact_sheet.html), selected_round{k}.json,
styledrop.json (the manifest: descriptor, rounds done, final round).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import ml_collections
import numpy as np

from stylejax.data import shapestyle as ss
from stylejax.models.pipeline_io import as_images, check_prompts
from stylejax.sample import best_of

TEMPLATE = "{content} in {descriptor} style"  # StyleDrop's training/sampling prompt template
MANIFEST = "styledrop.json"
ASSET_REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                               "styledrop_reference")
SELECTIONS = ("clip", "scorer", "human")


class StyleDropError(ValueError):
  """Bad StyleDrop input; the message says how to fix it."""


def caption(content: str, descriptor: str) -> str:
  content = content.strip()
  return TEMPLATE.format(content=content, descriptor=descriptor) if content else f"{descriptor} style"


def content_of(prompt: str, descriptor: str) -> str:
  """The content part of a prompt: "two red stars in X style" -> "two red stars"."""
  suffix = f" in {descriptor} style"
  return prompt[:-len(suffix)] if prompt.endswith(suffix) else prompt


def with_descriptor(prompt: str, descriptor: str) -> str:
  """Appends the descriptor the way StyleDrop trained it, unless the prompt already has it."""
  return prompt if prompt.endswith(f" in {descriptor} style") else caption(prompt, descriptor)


def content_prompts(n: int, seed: int, avoid_shape: int | None = None) -> list[ss.Content]:
  """n ShapeStyle contents cycling through every shape (except `avoid_shape`), random color/count."""
  rng = np.random.default_rng([seed, 0x5D])
  shapes = [k for k in range(len(ss.SHAPES)) if k != avoid_shape]
  order = [shapes[i % len(shapes)] for i in range(n)]
  return [ss.Content(k, int(rng.integers(len(ss.COLORS))), int(rng.integers(1, ss.MAX_COUNT + 1))) for k in order]


def bundled_reference() -> tuple[str, dict[str, Any]]:
  """(png path, {"descriptor", "content", "style"}) of the packaged held-out-style reference."""
  with open(ASSET_REFERENCE + ".json") as f:
    return ASSET_REFERENCE + ".png", json.load(f)


def write_bundled_reference(k: int = 3, content: str = "one orange heart") -> None:
  """Renders the packaged reference: held-out style k (never seen by the base) drawing `content`."""
  from stylejax.eval.report import save_png
  style = ss.heldout_style(k)
  image, _ = ss.render(ss._as_content(content), style, 64, np.random.default_rng(k))
  save_png(image, ASSET_REFERENCE + ".png")
  with open(ASSET_REFERENCE + ".json", "w") as f:
    json.dump({"descriptor": style.descriptor, "content": content, "style": f"heldout:{k}"}, f, indent=1)


# ------------------------------------------------------------------------------ configs of a round
def _base_config(base: str) -> ml_collections.ConfigDict:
  """The config of the text-to-image Muse run StyleDrop tunes (a shipped name or a workdir)."""
  from stylejax import config as config_lib, shipped
  if shipped.is_shipped(base):
    config = config_lib.from_json(json.dumps(shipped.info(base)["config"]))
  else:
    path = os.path.join(base, "config.json")
    if not os.path.exists(path):
      raise StyleDropError(f"base {base!r} is not a Muse workdir (no config.json); pass shapestyle:base or a "
                           f"`stylejax train --config configs/muse.py` workdir.")
    with open(path) as f:
      config = config_lib.from_json(f.read())
  if config.get("task") != "stylejax.models.muse:MuseTask" or config.model.get("layout") == "maskgit":
    raise StyleDropError(f"base {base!r} is not a text-to-image Muse run; pass shapestyle:base or a "
                         f"`stylejax train --config configs/muse.py` workdir.")
  return config


def round_config(config: ml_collections.ConfigDict, data_path: str, steps: int,
                 init_from: str = "") -> ml_collections.ConfigDict:
  """The trainer config of one round: the base's model, parts and sampling + the recipe's adapters,
  optimizer and schedule, trained on the saved image-caption set, initialised from the base (or from
  `init_from`, a previous round's workdir: its base params and adapters)."""
  base = _base_config(config.styledrop.base)
  c = ml_collections.ConfigDict(base.to_dict())
  c.model.adapters = ml_collections.ConfigDict(config.adapters.to_dict())
  for key in ("optimizer", "checkpoint", "compute_dtype", "seed", "log_every", "progress", "ema_decay",
              "batch_size", "grad_accum_steps"):
    c[key] = config[key]
  c.total_steps = int(steps)
  c.init_from = ml_collections.ConfigDict(dict(workdir=init_from or config.styledrop.base))
  c.data = ml_collections.ConfigDict(dict(name="image_captions", path=data_path, num_examples=steps * c.batch_size,
                                          augment=config.styledrop.augment, seed=config.seed,
                                          image_size=int(base.data.image_size)))
  c.sample.update(config.sample.to_dict())
  c.styledrop = ml_collections.ConfigDict(dict(descriptor=config.styledrop.descriptor))
  return c


def _validate(config: ml_collections.ConfigDict) -> None:
  s = config.styledrop
  if not str(s.descriptor).strip():
    raise StyleDropError("the style descriptor is empty; describe the style in a few words, e.g. "
                         "--config.styledrop.descriptor='watercolor'.")
  if any(int(n) <= 0 for n in s.steps) or config.batch_size <= 0:
    raise StyleDropError(f"styledrop.steps={list(s.steps)} and batch_size={config.batch_size} must be positive; "
                         f"StyleDrop trains 1000 steps per round in the paper.")
  if len(s.steps) < int(s.rounds) or int(s.rounds) < 1:
    raise StyleDropError(f"styledrop.rounds={s.rounds} needs that many entries in styledrop.steps={list(s.steps)}.")
  if s.selection not in SELECTIONS:
    raise StyleDropError(f"styledrop.selection={s.selection!r}; use one of {SELECTIONS}.")


# ------------------------------------------------------------------------------ candidates + feedback
@dataclasses.dataclass
class Candidates:
  images: np.ndarray  # [N, S, S, 3] uint8
  ids: list[str]      # "c000", ...
  contents: list[str]  # content caption of each candidate's prompt
  prompt_index: np.ndarray  # [N]

  def save(self, path: str) -> None:
    np.savez(path, images=self.images, ids=np.asarray(self.ids), contents=np.asarray(self.contents),
             prompt_index=self.prompt_index)

  @classmethod
  def load(cls, path: str) -> "Candidates":
    with np.load(path) as f:
      return cls(f["images"], [str(x) for x in f["ids"]], [str(x) for x in f["contents"]], f["prompt_index"])


def make_candidates(model: "StyleDrop", contents: Sequence[ss.Content], per_prompt: int, seed: int) -> Candidates:
  images = model.generate([c.caption for c in contents], num=per_prompt, seed=seed)
  n = len(images)
  return Candidates(images, [f"c{i:03d}" for i in range(n)], [c.caption for c in contents for _ in range(per_prompt)],
                    np.repeat(np.arange(len(contents)), per_prompt))


def select_clip(cands: Candidates, reference: np.ndarray, clip, style_filter: bool = True) -> list[int]:
  """Best of N per prompt by CLIP(image, content text); with `style_filter`, only candidates whose
  CLIP(image, reference) is at least the mean over all candidates compete (StyleDrop §3.3)."""
  img = clip.embed_images(cands.images)
  clip_t = np.sum(img * clip.embed_texts(cands.contents), -1)
  keep = np.ones(len(img), bool)
  if style_filter:
    clip_i = img @ clip.embed_images(reference[None])[0]
    keep = clip_i >= clip_i.mean()
  return best_of.best_per_group(cands.prompt_index, np.where(keep, clip_t, -np.inf))


def select_scorer(cands: Candidates, reference: np.ndarray, scorers) -> list[int]:
  """ShapeStyle's exact feedback: among candidates whose classified content equals the prompt's,
  the one closest in style to the reference (style-encoder cosine), per prompt."""
  pred = scorers.classify(cands.images)
  want = [ss.parse_caption(c)[0] for c in cands.contents]
  correct = np.asarray([pred["shape"][i] == w.shape and pred["color"][i] == w.color and pred["count"][i] == w.count
                        for i, w in enumerate(want)])
  style = scorers.style_embed(cands.images) @ scorers.style_embed(reference[None])[0]
  return best_of.best_per_group(cands.prompt_index, np.where(correct, style, -np.inf))


# ------------------------------------------------------------------------------ the tuned model
@dataclasses.dataclass
class StyleDrop:
  """A tuned style: the round's pipeline (base + adapters) and the descriptor it was trained with."""
  pipe: Any  # MusePipeline of a round workdir
  descriptor: str
  reference: np.ndarray | None = None  # [S, S, 3] uint8
  workdir: str = ""

  def generate(self, prompts: Sequence[str], num: int = 1, seed: int = 0, *, style_guidance: float | None = None,
               content_guidance: float | None = None, guidance: str | None = None, content_style: "StyleDrop" = None,
               gamma: float | None = None, pil: bool = False, **overrides: Any) -> Any:
    """Images uint8 [len(prompts) * num, H, W, 3] (or PIL images): content prompts, descriptor appended.

    style_guidance = λA, content_guidance = λB (StyleDrop guidance); `content_style` = a second tuned
    model (e.g. DreamBooth-style content adapters) mixed with weight `gamma` ("my object in my style").
    best_of=N: each image the best of N candidates by CLIP(image, the prompt as given) (`sample/best_of.py`; by
    the base's text encoder's CLIP unless best_of_clip names one; best_of_rank "cosine" or "contrastive").
    """
    n, clip = overrides.pop("best_of", 1), overrides.pop("best_of_clip", None) or self.pipe.config.get("text_encoder")
    rank = overrides.pop("best_of_rank", "cosine")
    kw = dict(lambda_a=style_guidance, lambda_b=content_guidance, mode=guidance, gamma=gamma, **overrides)
    content_adapters = None
    if content_style is not None:
      kw["mode"] = kw["mode"] or "mix"
      content_adapters = content_style.pipe.params["adapters"]
    draw = lambda p, k: self.pipe.generate([with_descriptor(x, self.descriptor) for x in p], k, seed,
                                           content_adapters=content_adapters, **kw)
    images = best_of.generate(draw, check_prompts(prompts), num, n, clip, rank)
    if pil:
      from PIL import Image
      return [Image.fromarray(x) for x in images]
    return images


def load(workdir: str, round: int | None = None) -> StyleDrop:
  """The final (or given) round of a StyleDrop workdir."""
  from stylejax.data.images import load_image
  from stylejax.models.muse_pipeline import MusePipeline
  workdir = os.path.abspath(workdir)  # a notebook may change directory later
  path = os.path.join(workdir, MANIFEST)
  if not os.path.exists(path):
    raise StyleDropError(f"{workdir} is not a StyleDrop workdir (no {MANIFEST}); train configs/styledrop.py first.")
  with open(path) as f:
    manifest = json.load(f)
  k = round or manifest["final_round"]
  if not k:
    raise StyleDropError(f"{workdir} has no finished round yet; rerun the training command to continue.")
  pipe = MusePipeline.load(os.path.join(workdir, f"round{k}"))
  ref = np.round(load_image(os.path.join(workdir, "reference.png"), pipe.tokenizer.image_size) * 255).astype(np.uint8)
  return StyleDrop(pipe, manifest["descriptor"], ref, workdir)


def is_styledrop_workdir(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, MANIFEST))


# ------------------------------------------------------------------------------ the recipe
def _reference(config: ml_collections.ConfigDict, image_size: int) -> tuple[np.ndarray, str, str, str]:
  """(reference uint8 [S, S, 3], descriptor, content, ShapeStyle style tag or "") from the config, or
  the bundled held-out style."""
  from stylejax.data.images import load_image
  s = config.styledrop
  path, descriptor, content, style = s.style_image, s.descriptor, s.content, ""
  if not path:
    path, meta = bundled_reference()
    descriptor, content, style = descriptor or meta["descriptor"], content or meta["content"], meta["style"]
  image = load_image(path, image_size)  # one clear ImageError line for missing/corrupt/non-image files
  return np.round(image * 255).astype(np.uint8), descriptor, content, style


def _style_from_tag(tag: str):
  return ss.heldout_style(int(tag.split(":")[1])) if tag.startswith("heldout:") else None


def evaluate_workdir(workdir: str, seed: int = 0, scorers=None, num_prompts: int = 8, samples: int = 4,
                     **sample_overrides: Any) -> dict[str, Any]:
  """`stylejax eval` on a StyleDrop workdir: the final round's metrics (see `evaluate`)."""
  from stylejax.models import scorers as scorers_lib
  from stylejax.models.parts import load_clip_embedder
  sd = load(workdir)
  with open(os.path.join(workdir, MANIFEST)) as f:
    manifest = json.load(f)
  ref_content = ss.parse_caption(manifest.get("content", ""))[0]
  gen = lambda p, n, s: sd.pipe.generate(p, n, s, **sample_overrides)
  metrics, _, _ = evaluate(gen, sd.reference, sd.descriptor, ref_content.shape if ref_content else None,
                        scorers or scorers_lib.scorers_from_workdirs(), load_clip_embedder(sd.pipe.config.text_encoder),
                        num_prompts, samples, seed, ceiling_style=_style_from_tag(manifest.get("style", "")),
                        tokenizer=sd.pipe.tokenizer)
  return metrics


def run(config: ml_collections.ConfigDict, workdir: str, scorers=None, progress: bool = True) -> dict[str, Any]:
  """The whole recipe in `workdir` (resumes any finished step). Returns the manifest dict, with
  status "done" or "awaiting_selection" (human feedback: see the contact sheet path)."""
  from stylejax import config as config_lib
  from stylejax.data.finetune import save_image_captions
  from stylejax.eval.report import save_png
  from stylejax.train import trainer
  config = ml_collections.ConfigDict(config.to_dict())
  s = config.styledrop
  base = _base_config(s.base)
  reference, descriptor, content, style_tag = _reference(config, int(base.data.image_size))
  s.descriptor, s.content = descriptor, content
  _validate(config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:  # the resolved recipe, written once it is valid
    f.write(config_lib.to_json(config))
  save_png(reference, os.path.join(workdir, "reference.png"))
  manifest_path = os.path.join(workdir, MANIFEST)
  manifest = {"descriptor": descriptor, "content": content, "style": style_tag, "base": s.base, "rounds": int(s.rounds),
              "final_round": 0, "status": "running", "selection": s.selection, "selected": {}}
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      manifest.update({k: v for k, v in json.load(f).items() if k in ("final_round", "selected")})

  def save_manifest():
    with open(manifest_path + ".tmp", "w") as f:
      json.dump(manifest, f, indent=1)
    os.replace(manifest_path + ".tmp", manifest_path)

  images, captions = [reference], [caption(content, descriptor)]
  for k in range(1, int(s.rounds) + 1):
    data = os.path.join(workdir, f"data_round{k}.npz")
    save_image_captions(data, np.stack(images), captions)
    warm = k > 1 and s.warm_start  # continue round k-1's adapters instead of fresh ones
    rc = round_config(config, data, int(s.steps[k - 1]), os.path.join(workdir, f"round{k - 1}") if warm else "")
    rc.progress = bool(progress and config.progress)
    summary = trainer.train(rc, os.path.join(workdir, f"round{k}"))
    if summary["status"] == "preempted":
      manifest["status"] = "preempted"
      save_manifest()
      return manifest
    _export_adapters(os.path.join(workdir, f"round{k}"))
    manifest["final_round"] = k
    save_manifest()
    if k == int(s.rounds):
      break
    # feedback: candidates from round k, selected images join round k+1's training set
    cand_dir = os.path.join(workdir, f"candidates_round{k}")
    os.makedirs(cand_dir, exist_ok=True)
    cand_path = os.path.join(cand_dir, "candidates.npz")
    if os.path.exists(cand_path):
      cands = Candidates.load(cand_path)
    else:
      model = load(workdir, k)
      ref_shape = ss.parse_caption(content)[0].shape if ss.parse_caption(content)[0] else None
      contents = content_prompts(int(s.feedback_prompts), config.seed + k, avoid_shape=ref_shape)
      cands = make_candidates(model, contents, int(s.candidates_per_prompt), config.seed + 100 * k)
      cands.save(cand_path)
    chosen = select(config, cands, reference, cand_dir, scorers)
    if chosen is None:
      manifest["status"] = "awaiting_selection"
      manifest["contact_sheet"] = os.path.join(cand_dir, "contact_sheet.html")
      save_manifest()
      return manifest
    manifest["selected"][f"round{k}"] = [cands.ids[i] for i in chosen]
    images = [reference] + [cands.images[i] for i in chosen]
    captions = [caption(content, descriptor)] + [caption(cands.contents[i], descriptor) for i in chosen]
  manifest["status"] = "done"
  save_manifest()
  return manifest


def select(config: ml_collections.ConfigDict, cands: Candidates, reference: np.ndarray, cand_dir: str,
           scorers=None) -> list[int] | None:
  """Indices of the selected candidates, or None while human feedback is pending."""
  from stylejax.eval.report import read_selection, write_contact_sheet
  s = config.styledrop
  if s.selection_file:  # an explicit selection (file or "c001,c007") wins over any mode
    ids = read_selection(s.selection_file, cands.ids)
    return [cands.ids.index(i) for i in ids]
  if s.selection == "human":
    write_contact_sheet(os.path.join(cand_dir, "contact_sheet.html"), cands.images, cands.ids,
                        [caption(c, s.descriptor) for c in cands.contents],
                        title=f"StyleDrop feedback: {s.descriptor}")
    return None
  if s.selection == "scorer":
    from stylejax.models import scorers as scorers_lib
    scorers = scorers or scorers_lib.scorers_from_workdirs(s.scorers.content, s.scorers.style)
    chosen = select_scorer(cands, reference, scorers)
  else:
    from stylejax.models.parts import load_clip_embedder
    chosen = select_clip(cands, reference, load_clip_embedder(_base_config(s.base).text_encoder), s.style_filter)
  if not chosen:
    raise StyleDropError("feedback kept no candidate; raise styledrop.candidates_per_prompt or use "
                         "selection='human'.")
  return chosen


def _export_adapters(round_dir: str) -> str:
  """adapters.safetensors: only the trained adapter params (the base stays where it was)."""
  from safetensors.numpy import save_file
  from stylejax import shipped
  from stylejax.train import trainer
  path = os.path.join(round_dir, "adapters.safetensors")
  if not os.path.exists(path):
    _, params = trainer.load_params(round_dir, devices=None)
    flat = {k: v for k, v in shipped.flatten_params(params).items() if k.startswith("adapters/")}
    save_file(flat, path)
  return path


def tune(base: str, image: Any, descriptor: str, content: str = "", rounds: int = 2,
         selection: str = "clip", workdir: str | None = None, steps: int | Sequence[int] | None = None,
         selection_file: str = "", config: str = "configs/styledrop.py", scorers=None, progress: bool = True,
         **overrides: Any) -> StyleDrop:
  """Notebook entry: tunes a style on `base` ("shapestyle:base" or a Muse workdir) from one image
  (uint8/float [S, S, 3] array, a PIL image, a file path, or None for the bundled reference). Returns the final round.
  `overrides`: dotted config keys, e.g. {"optimizer.lr": 1e-3} or {"styledrop.candidates_per_prompt": "16"}."""
  import tempfile
  from stylejax import config as config_lib
  from stylejax.eval.report import save_png
  workdir = workdir or tempfile.mkdtemp(prefix="styledrop_")
  if hasattr(image, "convert") or isinstance(image, np.ndarray):  # a PIL image or an array: saved as the input
    arr = as_images(image, "style image")
    if len(arr) != 1:
      raise StyleDropError(f"StyleDrop tunes on one style image; got a batch of {len(arr)}.")
    os.makedirs(workdir, exist_ok=True)
    image = os.path.join(workdir, "input.png")
    save_png(arr[0], image)
  c = config_lib.load_config(config)
  c.unlock()
  c.styledrop.update(base=base, style_image=image or "", descriptor=descriptor, content=content,
                     rounds=int(rounds), selection=selection, selection_file=selection_file)
  if steps is not None:
    c.styledrop.steps = [int(steps)] * int(rounds) if isinstance(steps, int) else [int(x) for x in steps]
  for key, value in overrides.items():
    config_lib.apply_override(c, key, value)
  result = run(c, workdir, scorers=scorers, progress=progress)
  if result["status"] != "done":
    raise StyleDropError(f"tuning stopped with status {result['status']!r}"
                         + (f"; select images in {result['contact_sheet']} and pass selection_file."
                            if result.get("contact_sheet") else "."))
  return load(workdir)


# ------------------------------------------------------------------------------ evaluation + demo
RATES = ("text_fidelity", "content_leakage")  # binary per image (Wilson CI); the rest are cosines


def summarize(per_image: dict[str, np.ndarray]) -> dict[str, Any]:
  """Per-image scores (NaN = not counted) -> {metric: Metric}; pooling several styles = concatenating."""
  from stylejax.eval import metrics as M
  out = {}
  for name, v in per_image.items():
    v = np.asarray(v, np.float64)
    v = v[~np.isnan(v)]
    out[name] = M.rate_ci(v.astype(bool)) if name in RATES else M.mean_ci(v)
  return out


def evaluate(generate, reference: np.ndarray, descriptor: str, ref_shape: int | None, scorers, clip=None,
             num_prompts: int = 8, samples: int = 4, seed: int = 0, ceiling_style: Any = None,
             tokenizer: Any = None) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
  """Metrics of one model on content prompts whose shape differs from the reference's.

  generate(prompts with descriptor, num, seed) -> uint8 images. Returns ({metric: Metric}, images
  [num_prompts * samples, S, S, 3], per-image scores). text_fidelity: the classifier agrees with the
  prompt's shape, color and count; style_fidelity: style-encoder cosine to the reference;
  content_leakage: the reference's shape appears; clip_t: CLIP(image, content prompt without the
  descriptor); clip_i: CLIP(image, reference). `ceiling_style` (a ShapeStyle style): also the style
  encoder's same-style ceiling, true renders of the prompts in that style vs the reference; with the
  generator's `tokenizer` also `style_fidelity_token_ceiling`, those renders encoded and decoded: the
  most a model that emits this tokenizer's ids can score.
  """
  from stylejax.eval import metrics as M
  contents = content_prompts(num_prompts, seed + 7919, avoid_shape=ref_shape)
  images = generate([caption(c.caption, descriptor) for c in contents], samples, seed)
  want = [c for c in contents for _ in range(samples)]
  pred = scorers.classify(images)
  ref_style = scorers.style_embed(reference[None])[0]
  per = {"text_fidelity": np.logical_and.reduce([pred[h] == np.asarray([getattr(c, h) for c in want])
                                                 for h in M.LABEL_HEADS]),
         "style_fidelity": scorers.style_embed(images) @ ref_style,
         "content_leakage": (pred["shape"] == ref_shape).astype(float) if ref_shape is not None
         else np.full(len(images), np.nan)}
  if clip is not None:
    img = clip.embed_images(images)
    per["clip_t"] = np.sum(img * clip.embed_texts([c.caption for c in want]), -1)
    per["clip_i"] = img @ clip.embed_images(reference[None])[0]
  if ceiling_style is not None:
    rng = np.random.default_rng([seed, 0xCE11])
    truth = np.stack([ss.render(c, ceiling_style, reference.shape[0], rng)[0] for c in want])
    per["style_fidelity_ceiling"] = scorers.style_embed(truth) @ ref_style
    if tokenizer is not None:
      per["style_fidelity_token_ceiling"] = scorers.style_embed(tokenizer.decode(tokenizer.encode(truth))) @ ref_style
  return summarize(per), images, per


def demo(out: str = "stylejax_demo", base: str = "shapestyle:base", style_image: str = "", descriptor: str = "",
         steps: int | None = None, seed: int = 0, config: str = "configs/styledrop.py", scorers=None,
         num_prompts: int = 6, samples: int = 4, progress: bool = True) -> dict[str, Any]:
  """`stylejax demo`: round 1 -> CLIP feedback -> round 2 on one reference, then grid.png,
  metrics.json (base / round1 / round2, each with 95% CIs) and report.html in `out`."""
  import time
  from stylejax.eval import report
  from stylejax.models import scorers as scorers_lib
  from stylejax.models.muse_pipeline import MusePipeline
  from stylejax.models.parts import load_clip_embedder
  t0 = time.time()
  say = print if progress else (lambda *a, **k: None)
  if style_image and not descriptor.strip():
    raise StyleDropError("--style_image needs --descriptor: a few words naming the style, e.g. 'watercolor'.")
  os.makedirs(out, exist_ok=True)
  meta = {} if style_image else bundled_reference()[1]
  say(f"[demo] StyleDrop on {base}: reference {style_image or meta['style'] + ' (bundled held-out style)'}")
  sd = tune(base, style_image or None, descriptor, content=meta.get("content", ""), rounds=2, selection="clip",
            workdir=os.path.join(out, "styledrop"), steps=steps, config=config, progress=progress)
  scorers = scorers or scorers_lib.scorers_from_workdirs()
  clip = load_clip_embedder(sd.pipe.config.text_encoder)
  ref_content = ss.parse_caption(meta.get("content", ""))[0]
  ref_shape = ref_content.shape if ref_content else None
  ceiling = _style_from_tag(meta.get("style", ""))
  base_pipe = MusePipeline.load(base)
  models = {"base": lambda p, n, s: base_pipe.generate(p, n, s),
            "round1": load(sd.workdir, 1).generate, "round2": sd.generate}
  metrics, rows = {}, []
  for name, gen in models.items():
    say(f"[demo] sampling + scoring {name}")
    metrics[name], images, _ = evaluate(gen, sd.reference, sd.descriptor, ref_shape, scorers, clip, num_prompts,
                                     samples, seed, ceiling_style=ceiling, tokenizer=base_pipe.tokenizer)
    rows.append(images[::samples])  # first sample of each prompt
  blank = np.full_like(sd.reference, 255)
  cells = [np.concatenate([[sd.reference if i == 0 else blank], r]) for i, r in enumerate(rows)]
  grid_path = os.path.join(out, "grid.png")
  report.save_png(report.grid(np.concatenate(cells), cols=num_prompts + 1), grid_path)
  seconds = time.time() - t0
  result = {"descriptor": sd.descriptor, "base": base, "reference": os.path.join(sd.workdir, "reference.png"),
            "rows": ["reference + base", "round1", "round2"], "metrics": metrics, "seconds": round(seconds, 1),
            "selected": json.load(open(os.path.join(sd.workdir, MANIFEST)))["selected"]}
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(result, f, indent=1)
  curves = {f"round{k} loss": report.read_curve(os.path.join(sd.workdir, f"round{k}", "metrics.jsonl"))
            for k in (1, 2)}
  report.write_report(os.path.join(out, "report.html"), f"StyleDrop demo: {sd.descriptor}", grid_path, metrics,
                      curves, notes=["grid rows: reference + base, round 1, round 2; columns: content prompts "
                                     "(descriptor appended)", f"wall time {seconds:.0f} s"])
  say(f"[demo] wrote {grid_path}, metrics.json, report.html in {seconds:.0f} s")
  return result
