"""Best of N: draw N candidates per wanted image and keep the one a CLIP scores closest to its prompt.

DALL·E's CLIP re-ranking (Ramesh et al. 2021, §2.5) as a sampling setting of every pipeline (`best_of=N`);
StyleDrop's round-2 feedback selects its training images the same way (§3.3, `methods/styledrop.select_clip`).
The selecting CLIP is a model, not an evaluation scorer: by default the run's own text encoder's CLIP (on
ShapeStyle the shipped tiny CLIP), while text_fidelity is judged by the separate content classifiers.

Two rankings (`rank`): "cosine", DALL·E's CLIP(image, prompt); "contrastive", the CLIP's zero-shot log-probability
that the image shows the prompt's value of each content word against every other value of that word (NegCLIP-style
swapped captions, Yuksekgonul et al. 2023; ShapeStyle captions by default, `shapestyle.caption_swaps`), summed
over the words, so style and the other words' similarity cancel out of each word's choice.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

RANKS = ("cosine", "contrastive")
Alternatives = Callable[[str], "list[tuple[list[str], int]] | None"]


class BestOfError(ValueError):
  """A best-of-N request that cannot be served (bad N, prompts without text, no CLIP to rank with)."""


def check(n: Any) -> int:
  """`n` if it is a usable candidate count (a whole number >= 1), else a BestOfError."""
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise BestOfError(f"best_of={n!r}: ask for a whole number >= 1 of candidates per image.")
  return int(n)


def _require_text_and_clip(prompts: Sequence[Any], clip: Any, rank: str = "cosine") -> None:
  if not all(isinstance(p, str) for p in prompts):
    raise BestOfError("best_of > 1 ranks candidates by CLIP(image, prompt text); class-id prompts have no text.")
  if clip is None or clip == "":
    raise BestOfError("best_of ranks candidates with a CLIP and this run has no CLIP text encoder; pass best_of_clip.")
  if rank == "contrastive":
    for p in dict.fromkeys(prompts):
      _swaps(p)


def _swaps(text: str, alternatives: Alternatives | None = None) -> list[tuple[list[str], int]]:
  if alternatives is None:
    from stylejax.data.shapestyle import caption_swaps as alternatives
  groups = alternatives(text)
  if not groups:
    raise BestOfError(f"best_of_rank='contrastive' needs each prompt's alternative captions and {text!r} has none "
                      "(ShapeStyle captions: 'two red stars [in ... style]'); use best_of_rank='cosine'.")
  return groups


def best_per_group(group: np.ndarray, score: np.ndarray) -> list[int]:
  """Index of the highest finite score within each group id (ascending ids); groups with none are skipped.

  group, score: [N]."""
  out = []
  for g in np.unique(group):
    idx = np.flatnonzero(group == g)
    best = idx[np.argmax(score[idx])]
    if np.isfinite(score[best]):
      out.append(int(best))
  return out


def clip_text_scores(clip: Any, images: np.ndarray, texts: Sequence[str]) -> np.ndarray:
  """CLIP cosine of image i with text i: images [N, H, W, 3], texts [N] -> [N]. Each distinct text is
  embedded once."""
  unique, inverse = np.unique(np.asarray(list(texts), dtype=object), return_inverse=True)
  return np.sum(clip.embed_images(images) * clip.embed_texts(list(unique))[inverse.reshape(-1)], -1)


def contrastive_scores(clip: Any, images: np.ndarray, texts: Sequence[str],
                       alternatives: Alternatives | None = None) -> np.ndarray:
  """Sum over a text's content words of log softmax(logit_scale * CLIP cosine) of the text's own value among the
  word's alternatives: images [N, H, W, 3], texts [N] -> [N] (<= 0).

  alternatives(text) -> [(captions, index of the text's own)] per word, None if it has none (default: ShapeStyle's
  `caption_swaps`)."""
  img, texts = clip.embed_images(images), np.asarray(list(texts), dtype=object)
  out = np.zeros(len(texts))
  for text in dict.fromkeys(texts):
    rows = np.flatnonzero(texts == text)
    for captions, own in _swaps(text, alternatives):
      logits = clip.logit_scale * img[rows] @ clip.embed_texts(captions).T  # [rows, A]
      top = logits.max(-1, keepdims=True)
      out[rows] += logits[:, own] - (top[:, 0] + np.log(np.exp(logits - top).sum(-1)))
  return out


def check_rank(rank: Any) -> str:
  """`rank` if it names a ranking in RANKS, else a BestOfError."""
  if rank not in RANKS:
    raise BestOfError(f"best_of_rank={rank!r}: rank candidates by one of {', '.join(RANKS)}.")
  return rank


def select(images: np.ndarray, texts: Sequence[str], n: int, clip: Any, rank: str = "cosine") -> np.ndarray:
  """Indices [N / n] of the best candidate of each consecutive run of `n` rows by CLIP(image, text) (`rank`).

  images [N, H, W, 3] with N = G * n (rows g * n ... g * n + n - 1 are group g's candidates), texts [N];
  `clip`: a `parts.ClipEmbedder` or a CLIP part spec (workdir / shipped name)."""
  check_rank(rank)
  if check(n) == 1:
    return np.arange(len(images))
  _require_text_and_clip(texts, clip, rank)
  if not hasattr(clip, "embed_images"):
    from stylejax.models.parts import load_clip_embedder
    try:
      clip = load_clip_embedder(clip)
    except ValueError as e:  # e.g. a T5 text encoder: nothing to score images with
      raise BestOfError(f"best_of ranks candidates with a CLIP ({e}); pass best_of_clip=a CLIP run.") from e
  scores = clip_text_scores if rank == "cosine" else contrastive_scores
  score = scores(clip, images, texts).reshape(-1, n)
  return np.arange(score.shape[0]) * n + score.argmax(-1)


def generate(draw: Callable[[Sequence[Any], int], np.ndarray], prompts: Sequence[Any], num: int, n: int,
             clip: Any, rank: str = "cosine") -> np.ndarray:
  """`num` images per prompt, each the best of `n` candidates: images [len(prompts) * num, H, W, 3], prompt-major.

  draw(prompts, k) -> images [len(prompts) * k, H, W, 3], prompt-major (a pipeline's `generate`)."""
  check_rank(rank)
  if check(n) > 1:
    _require_text_and_clip(prompts, clip, rank)
  images = draw(prompts, num * n)
  return images if n == 1 else images[select(images, [p for p in prompts for _ in range(num * n)], n, clip, rank)]
