"""A trained masked-transformer run as one object: prompts in, images out.

  pipe = MusePipeline.load("/tmp/muse")              # a `stylejax train` workdir of a MuseTask config
  images = pipe.generate(["two red stars in neon outline style"], num=4, seed=0)   # uint8 [4, H, W, 3]

Bundles the transformer, its frozen VQ tokenizer (ids -> pixels) and, for the text-conditioned
layout, its frozen CLIP text encoder. Decode and guidance defaults come from the run's
`config.sample`; every call may override them. Class-conditional (maskgit) runs on ShapeStyle
take a class id ("17") or a content caption ("two red stars") as the prompt.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from stylejax.models.muse import MaskedTransformer, MuseTask, content_class
from stylejax.models.parts import ImageTokenizer, TextEncoder
from stylejax.models.pipeline_io import PipelineError, check_prompts
from stylejax.sample import best_of as best_of_lib, masked
from stylejax.sample.parallel_decode import DecodeConfig

_DECODE_FIELDS = {f.name for f in dataclasses.fields(DecodeConfig)} - {"mask_id"}
_GUIDANCE_FIELDS = {f.name for f in dataclasses.fields(masked.Guidance)}


@dataclasses.dataclass
class MusePipeline:
  config: ml_collections.ConfigDict
  model: MaskedTransformer
  params: Any
  tokenizer: ImageTokenizer
  text: TextEncoder | None = None

  @classmethod
  def load(cls, workdir: str, step: int | None = None) -> "MusePipeline":
    """From a trained workdir (config.json + checkpoints; `step` picks a checkpoint, default the latest)."""
    from stylejax.train import trainer
    from stylejax.train.task import load_task
    config, params = trainer.load_params(workdir, step=step)
    task = load_task(config)
    if not isinstance(task, MuseTask):
      raise PipelineError(f"{workdir} is a {type(task).__name__} run; this pipeline samples MuseTask runs.")
    if not config.get("tokenizer"):
      raise PipelineError(f"{workdir} was trained on {config.data.get('name')!r} tokens with no image tokenizer; "
                          f"sampling to images needs a run on images (data.name='shapestyle' or 'image_captions').")
    text = task.text_encoder if task.model_config.layout != "maskgit" else None
    return cls(config, task.model, params, task.image_tokenizer, text)

  @property
  def text_conditioned(self) -> bool:
    return self.model.config.layout != "maskgit"

  def settings(self, **overrides: Any) -> tuple[DecodeConfig, masked.Guidance, dict[str, float]]:
    """(decode config, guidance, scales) from config.sample with `overrides` (None values ignored)."""
    s = dict(self.config.get("sample", ml_collections.ConfigDict()).to_dict())
    s.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(s) - _DECODE_FIELDS - _GUIDANCE_FIELDS - set(masked.SCALE_NAMES)
    if unknown:
      raise PipelineError(f"unknown sampling settings {sorted(unknown)}.")
    try:
      decode = DecodeConfig(mask_id=self.model.config.mask_id, **{k: v for k, v in s.items() if k in _DECODE_FIELDS})
      guidance = masked.Guidance(**{k: v for k, v in s.items() if k in _GUIDANCE_FIELDS})
    except ValueError as e:
      raise PipelineError(str(e)) from None
    try:
      scales = {k: float(v) for k, v in s.items() if k in masked.SCALE_NAMES}
    except (TypeError, ValueError):
      bad = {k: v for k, v in s.items() if k in masked.SCALE_NAMES}
      raise PipelineError(f"guidance scales must be numbers; got {bad}.") from None
    return decode, guidance, scales

  def condition(self, prompts: Sequence[str | int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Prompts -> (cond, cond_mask): text embeddings [B, T, D] + mask [B, T], or class ids [B]."""
    prompts = check_prompts(prompts)
    if self.text_conditioned:
      return self.text([str(p) for p in prompts])
    return np.asarray([self._class_id(p) for p in prompts], np.int32), None

  def _class_id(self, prompt: str | int) -> int:
    num_classes = self.model.config.num_classes
    if isinstance(prompt, (int, np.integer)) or str(prompt).strip().isdigit():
      label = int(prompt)
    else:
      from stylejax.data import shapestyle as ss
      content, _ = ss.parse_caption(str(prompt))
      if content is None:
        raise PipelineError(f"cannot read {prompt!r} as a class: give a class id in [0, {num_classes}) "
                            f"or a content caption like 'two red stars'.")
      label = int(content_class(content.shape, content.color, content.count))
    if not 0 <= label < num_classes:
      raise PipelineError(f"class id {label} is out of range; use 0..{num_classes - 1}.")
    return label

  def generate_ids(self, prompts: Sequence[str | int], num: int = 1, seed: int = 0, *,
                   negative_prompt: str | None = None, params: Any = None, content_adapters: Any = None,
                   **overrides: Any) -> np.ndarray:
    """Token ids [len(prompts) * num, L]: each prompt repeated `num` times (prompt-major)."""
    if num < 1:
      raise PipelineError(f"num={num}; ask for at least one image.")
    decode, guidance, scales = self.settings(**overrides)
    prompts = [p for p in check_prompts(prompts) for _ in range(num)]
    cond, cond_mask = self.condition(prompts)
    uncond = uncond_mask = None
    if negative_prompt is not None:
      if not self.text_conditioned:
        raise PipelineError("negative prompts need a text-conditioned (muse) model.")
      guidance = dataclasses.replace(guidance, negative=True)
      uncond, uncond_mask = self.text([negative_prompt] * len(prompts))
    ids = masked.sample(self.model, self.params if params is None else params, cond, jax.random.key(seed),
                        decode=decode, guidance=guidance, scales=scales, cond_mask=cond_mask, uncond=uncond,
                        uncond_mask=uncond_mask, content_adapters=content_adapters)
    return np.asarray(ids)

  def generate(self, prompts: Sequence[str | int], num: int = 1, seed: int = 0, *, best_of: int = 1,
               best_of_clip: Any = None, best_of_rank: str = "cosine", **kw: Any) -> np.ndarray:
    """Images uint8 [len(prompts) * num, H, W, 3]; each the best of `best_of` candidates by CLIP(image,
    prompt) (`sample/best_of.py`; best_of_clip: a CLIP run or embedder, default the run's text encoder's;
    best_of_rank: "cosine" or "contrastive");
    other keyword arguments as in `generate_ids`."""
    draw = lambda p, k: self.tokenizer.decode(self.generate_ids(p, k, seed, **kw))
    clip = best_of_clip or self.config.get("text_encoder")
    return best_of_lib.generate(draw, check_prompts(prompts), num, best_of, clip, best_of_rank)
