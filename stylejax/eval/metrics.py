"""Evaluation metrics with 95% confidence intervals (DESIGN §4).

Every metric returns `{"mean": x, "ci95": [lo, hi], "n": count}` with plain Python floats, so the
dict goes straight into the eval / demo JSON. Two kinds of interval:

  * means of continuous per-item scores (cosines): normal approximation
    `mean ± 1.96 · sd / sqrt(n)` with the sample sd (ddof=1); undefined (None) when n < 2.
  * rates of binary outcomes (text fidelity, content leakage): Wilson score interval
    (Wilson 1927; Newcombe 1998), which stays inside [0, 1] and behaves at rates of 0 or 1 where
    the normal interval collapses to a point. Undefined (None) when n == 0.

Items that share a reference or prompt are not independent draws: `cluster_ci` resamples whole
clusters (cluster bootstrap), and the evaluation protocol adds that interval, by (style, prompt) cell,
as `ci95_clustered` (launch/eval_replication.py measured why).

An empty metric (n == 0, e.g. leakage when every prompt shares the reference's shape) has
`mean` None. Inputs may be numpy or jax arrays; everything is computed in float64 numpy.

Names are stable across runs: text_fidelity, style_fidelity, content_leakage, clip_t, clip_i, dino,
style_consistency, style_diversity.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

Metric = dict[str, Any]  # {"mean": float | None, "ci95": [lo, hi], "n": int}
Z95 = 1.959963984540054  # two-sided 95% normal quantile
LABEL_HEADS = ("shape", "color", "count")


# ------------------------------------------------------------------------------ intervals
def _metric(mean: float | None, lo: float | None, hi: float | None, n: int) -> Metric:
  f = lambda v: None if v is None else float(v)
  return {"mean": f(mean), "ci95": [f(lo), f(hi)], "n": int(n)}


def mean_ci(values: Any, z: float = Z95) -> Metric:
  """Mean of continuous scores [N] with the normal-approximation interval mean ± z·sd/√n."""
  v = np.asarray(values, np.float64).reshape(-1)
  n = v.size
  if n == 0:
    return _metric(None, None, None, 0)
  m = float(v.mean())
  if n < 2:
    return _metric(m, None, None, 1)
  half = z * float(v.std(ddof=1)) / math.sqrt(n)
  return _metric(m, m - half, m + half, n)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval for a binomial rate k/n (Wilson 1927, eq. in Newcombe 1998 method 3)."""
  if n <= 0:
    raise ValueError(f"wilson_interval needs n > 0 trials; got n={n}.")
  if not 0 <= successes <= n:
    raise ValueError(f"successes={successes} must lie in [0, n={n}].")
  p, z2 = successes / n, z * z
  denom = 1.0 + z2 / n
  centre = (p + z2 / (2 * n)) / denom
  half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
  return max(0.0, centre - half), min(1.0, centre + half)


def rate_ci(outcomes: Any, z: float = Z95) -> Metric:
  """Rate of binary outcomes [N] (bool or {0, 1}) with the Wilson interval."""
  o = np.asarray(outcomes).reshape(-1)
  if o.size and not np.isin(o, (0, 1)).all():
    raise ValueError("rate_ci expects binary outcomes (bool or 0/1).")
  n, k = int(o.size), int(np.sum(o))
  if n == 0:
    return _metric(None, None, None, 0)
  lo, hi = wilson_interval(k, n, z)
  return _metric(k / n, lo, hi, n)


def mcnemar_exact(gained: int, lost: int) -> float:
  """Two-sided exact McNemar p-value of a paired comparison from its discordant counts (McNemar 1947): the
  items only the second system gets right vs only the first, tested as Binomial(gained + lost, 1/2)."""
  n = gained + lost
  if n == 0:
    return 1.0
  tail = sum(math.comb(n, i) for i in range(min(gained, lost) + 1)) / 2 ** n
  return min(1.0, 2 * tail)


def _clustered_difference(diff: np.ndarray, clusters: Any) -> str:
  d = cluster_ci(diff, clusters)
  return f", clustered [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]" if d["ci95"][0] is not None else ""


def paired_report(ref_hits: Any, hits: Any, clusters: Any = None) -> str:
  """One line for two systems' binary outcomes [N] on the same items: means, discordant counts, McNemar p
  and, given `clusters` [N], the 95% interval of the rate difference under the cluster bootstrap (McNemar
  takes the items as independent)."""
  a, b = np.asarray(ref_hits, bool).reshape(-1), np.asarray(hits, bool).reshape(-1)
  gained, lost = int((~a & b).sum()), int((a & ~b).sum())
  extra = "" if clusters is None else _clustered_difference(b.astype(np.float64) - a, clusters)
  return (f"{a.mean():.3f} -> {b.mean():.3f} (+{gained} / -{lost}, McNemar p = "
          f"{mcnemar_exact(gained, lost):.3g}{extra})")


def paired_difference(ref_scores: Any, scores: Any, clusters: Any = None) -> str:
  """One line for two systems' continuous scores [N] on the same items: means and the mean per-item
  difference with its normal 95% interval (and, given `clusters` [N], the cluster-bootstrap one)."""
  a, b = np.asarray(ref_scores, np.float64).reshape(-1), np.asarray(scores, np.float64).reshape(-1)
  d = mean_ci(b - a)
  ci = f" [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]" if d["ci95"][0] is not None else ""
  extra = "" if clusters is None else _clustered_difference(b - a, clusters)
  return f"{a.mean():.3f} -> {b.mean():.3f} (difference {d['mean']:.3f}{ci}{extra})"


def cluster_bootstrap_se(values: Any, clusters: Any, n_boot: int = 4000, seed: int = 0) -> float:
  """Standard error of the pooled mean of `values` [N] (NaN skipped) when whole clusters [N] (ids; e.g.
  the reference style of each image) are resampled with replacement (the cluster bootstrap, Davison &
  Hinkley 1997 sec. 3.8). Items of one cluster share a reference or prompt, so they are not independent
  draws; with one item per cluster this is the usual sd / sqrt(n)."""
  v = np.asarray(values, np.float64).reshape(-1)
  ids = np.unique(np.asarray(clusters).reshape(-1), return_inverse=True)[1]
  if ids.size != v.size:
    raise ValueError(f"cluster_bootstrap_se needs one cluster id per value; got {ids.size} for {v.size}.")
  ok = ~np.isnan(v)
  sums = np.bincount(ids, np.where(ok, v, 0.0))
  counts = np.bincount(ids, ok.astype(np.float64))
  k = sums.size
  draw = np.random.default_rng(seed).integers(0, k, (n_boot, k))
  means = sums[draw].sum(1) / np.maximum(counts[draw].sum(1), 1.0)
  return float(means.std(ddof=1))


def cluster_ci(values: Any, clusters: Any, rate: bool = False, z: float = Z95) -> Metric:
  """Mean of `values` [N] (NaN skipped) with the interval mean ± z·SE, SE from `cluster_bootstrap_se`
  (clipped to [0, 1] for a `rate`). Undefined with fewer than 2 clusters."""
  v = np.asarray(values, np.float64).reshape(-1)
  ok = ~np.isnan(v)
  if not ok.any():
    return _metric(None, None, None, 0)
  m, c = float(v[ok].mean()), np.asarray(clusters).reshape(-1)
  if np.unique(c[ok]).size < 2:
    return _metric(m, None, None, int(ok.sum()))
  half = z * cluster_bootstrap_se(v[ok], c[ok])
  lo, hi = (max(0.0, m - half), min(1.0, m + half)) if rate else (m - half, m + half)
  return _metric(m, lo, hi, int(ok.sum()))


# ------------------------------------------------------------------------------ similarity
def cosine(a: Any, b: Any, eps: float = 1e-12) -> np.ndarray:
  """Row-wise cosine of a [N, D] and b [N, D] (either may be [D], broadcast) -> [N]."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), eps)
  b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), eps)
  return np.atleast_1d(np.sum(a * b, axis=-1))


def _normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def image_similarity(a: Any, b: Any) -> Metric:
  """Mean cosine between paired image features a [N, D] and b [N, D] (or one reference b [D]).

  Generic over the feature extractor: CLIP-I with CLIP image embeddings, DINO with DINO features,
  style similarity with style-encoder embeddings.
  """
  return mean_ci(cosine(a, b))


def clip_t(img_emb: Any, text_emb: Any, scale: float = 1.0) -> Metric:
  """CLIP-T: cosine of each image's CLIP embedding [N, P] with its content prompt's text embedding [N, P].

  The text is the content prompt without style words (StyleDrop §4.2 / StyleAR protocol). Raw
  cosine by default; `scale=100` gives the CLIPScore-style ×100 number (interval scaled alike).
  """
  return _scaled(mean_ci(cosine(img_emb, text_emb)), scale)


def clip_i(img_emb: Any, ref_img_emb: Any, scale: float = 1.0) -> Metric:
  """CLIP-I: cosine of each generated image's CLIP embedding [N, P] with its reference's [N, P] or [P]."""
  return _scaled(image_similarity(img_emb, ref_img_emb), scale)


def dino(feat: Any, ref_feat: Any) -> Metric:
  """DINO score: `image_similarity` on features from any provided extractor (DINO by convention)."""
  return image_similarity(feat, ref_feat)


def _scaled(m: Metric, scale: float) -> Metric:
  if scale == 1.0 or m["mean"] is None:
    return m
  lo, hi = m["ci95"]
  return _metric(m["mean"] * scale, None if lo is None else lo * scale, None if hi is None else hi * scale, m["n"])


# ------------------------------------------------------------------------------ ShapeStyle metrics
def _labels(labels: Any) -> dict[str, np.ndarray]:
  """{"shape","color","count"} -> [N] int arrays, from a mapping or an [N, 3] array in that order."""
  if isinstance(labels, Mapping):
    missing = [h for h in LABEL_HEADS if h not in labels]
    if missing:
      raise ValueError(f"labels are missing {missing}; need keys {LABEL_HEADS}.")
    return {h: np.asarray(labels[h]).reshape(-1) for h in LABEL_HEADS}
  arr = np.asarray(labels)
  if arr.ndim != 2 or arr.shape[1] != 3:
    raise ValueError(f"labels must be a mapping with {LABEL_HEADS} or an [N, 3] array; got shape {arr.shape}.")
  return {h: arr[:, i] for i, h in enumerate(LABEL_HEADS)}


def text_fidelity_agreement(pred_labels: Any, prompt_labels: Any) -> dict[str, np.ndarray]:
  """Per-item agreement of classified and prompted labels: {"shape","color","count"} -> [N] bool."""
  pred, want = _labels(pred_labels), _labels(prompt_labels)
  for h in LABEL_HEADS:
    if pred[h].shape != want[h].shape:
      raise ValueError(f"{h}: {pred[h].shape[0]} predictions for {want[h].shape[0]} prompts.")
  return {h: pred[h] == want[h] for h in LABEL_HEADS}


def text_fidelity(pred_labels: Any, prompt_labels: Any) -> Metric:
  """Rate of images whose classified shape, color AND count all match the prompt's.

  Labels: mappings {"shape": [N], "color": [N], "count": [N]} or [N, 3] arrays. Counts must use
  the same convention on both sides (ShapeStyle uses 1..3). Wilson interval.
  """
  agree = text_fidelity_agreement(pred_labels, prompt_labels)
  return rate_ci(np.logical_and.reduce([agree[h] for h in LABEL_HEADS]))


def text_fidelity_per_head(pred_labels: Any, prompt_labels: Any) -> dict[str, Metric]:
  """Side report: per-head agreement rates {"shape": Metric, "color": Metric, "count": Metric}."""
  return {h: rate_ci(a) for h, a in text_fidelity_agreement(pred_labels, prompt_labels).items()}


def style_fidelity(gen_style_emb: Any, ref_style_emb: Any) -> Metric:
  """Mean cosine between style-encoder embeddings of generated images [N, D] and their references [N, D]."""
  return image_similarity(gen_style_emb, ref_style_emb)


def content_leakage(pred_shape: Any, prompt_shape: Any, ref_shape: Any) -> Metric:
  """Rate at which the classifier sees the REFERENCE's shape where the prompt asked for another.

  Only images whose prompt shape differs from the reference shape count (n); an image whose
  prompt shape equals the reference's cannot reveal leakage and is excluded. Wilson interval.
  """
  pred, prompt, ref = (np.asarray(x).reshape(-1) for x in (pred_shape, prompt_shape, ref_shape))
  if not pred.shape == prompt.shape == ref.shape:
    raise ValueError(f"content_leakage: lengths differ ({pred.size}, {prompt.size}, {ref.size}).")
  eligible = prompt != ref
  return rate_ci(pred[eligible] == ref[eligible])


# ------------------------------------------------------------------------------ structure adherence
def _otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
  """Otsu (1979): the threshold that maximises the between-class variance of a 1D sample."""
  hist, edges = np.histogram(values, bins=bins)
  centers = 0.5 * (edges[1:] + edges[:-1])
  w0 = np.cumsum(hist)[:-1].astype(np.float64)
  w1 = hist.sum() - w0
  s0 = np.cumsum(hist * centers)[:-1]
  valid = (w0 > 0) & (w1 > 0)
  if not valid.any():
    return float(edges[-1])  # flat image: nothing is foreground
  m0 = s0 / np.maximum(w0, 1)
  m1 = (float((hist * centers).sum()) - s0) / np.maximum(w1, 1)
  between = np.where(valid, w0 * w1 * (m0 - m1) ** 2, -1.0)
  return float(edges[1:-1][int(np.argmax(between))])  # upper edge of the best lower class


def foreground_mask(images: Any) -> np.ndarray:
  """Where the shapes are, estimated without a model: images [B, S, S, 3] -> bool [B, S, S].

  A pixel is foreground when its RGB distance to the background colour (the median of the image's
  one-pixel border, where ShapeStyle never draws shapes) is above the image's Otsu threshold; holes
  are filled (outline and hatched fills draw only part of the shape: IoU on true renders of held-out
  styles 0.65 -> 0.75). Textured backgrounds still leak into it: measure its ceiling on true renders.
  """
  from scipy import ndimage
  x = np.asarray(images, np.float64)
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"foreground_mask takes images [B, S, S, 3], got {x.shape}.")
  border = np.concatenate([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)  # [B, 4S-4, 3]
  dist = np.linalg.norm(x - np.median(border, axis=1)[:, None, None], axis=-1)
  return np.stack([ndimage.binary_fill_holes(d > _otsu_threshold(d.reshape(-1))) for d in dist])


def mask_iou(pred: Any, target: Any) -> np.ndarray:
  """Per-item intersection over union of boolean masks [B, S, S] -> [B] (1 where both are empty)."""
  p, t = np.asarray(pred) > 0.5, np.asarray(target) > 0.5
  if p.shape != t.shape:
    raise ValueError(f"mask_iou: shapes differ ({p.shape} vs {t.shape}).")
  inter = np.logical_and(p, t).sum(axis=(1, 2))
  union = np.logical_or(p, t).sum(axis=(1, 2))
  return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def structure_adherence(images: Any, masks: Any) -> np.ndarray:
  """Per image [B]: IoU of the estimated foreground of images [B, S, S, 3] with the given structure
  masks [B, S, S]. Compare with the same images against other images' masks (chance level)."""
  return mask_iou(foreground_mask(images), masks)


# ------------------------------------------------------------------------------ CoTyle metrics
def _groups(embs: Any) -> list[np.ndarray]:
  """[G, K, D] array or a sequence of [K_g, D] arrays -> list of L2-normalised [K_g, D] arrays."""
  if isinstance(embs, np.ndarray) or hasattr(embs, "shape"):
    arr = np.asarray(embs)
    if arr.ndim == 2:  # one embedding per group
      arr = arr[:, None]
    if arr.ndim != 3:
      raise ValueError(f"grouped embeddings must be [G, K, D] or a list of [K, D]; got shape {arr.shape}.")
    return [_normalise(g) for g in arr]
  out = []
  for g in embs:
    g = np.asarray(g)
    out.append(_normalise(g[None] if g.ndim == 1 else g))
  return out


def _mean_pairwise_cosine(x: np.ndarray) -> float:
  """Mean cosine over the K(K-1)/2 unordered pairs of rows of a normalised [K, D] array (K >= 2)."""
  k = x.shape[0]
  sims = x @ x.T
  return float((sims.sum() - np.trace(sims)) / (k * (k - 1)))


def style_consistency(embs_grouped: Any) -> Metric:
  """CoTyle style consistency: mean pairwise cosine among images generated from the SAME style code.

  `embs_grouped`: [G, K, D] or a list of [K_g, D] style embeddings (CoTyle uses CSD features; we
  use the style encoder). Per group g: c_g = mean over pairs i<j of cos(e_i, e_j); the metric is the
  mean of c_g over groups with K_g >= 2, and the interval treats groups (not pairs, which share
  images) as the independent units, so n = number of groups.
  """
  per_group = [_mean_pairwise_cosine(g) for g in _groups(embs_grouped) if g.shape[0] >= 2]
  return mean_ci(per_group)


def style_diversity(embs_per_code: Any) -> Metric:
  """CoTyle style diversity: 1 - mean pairwise cosine between style centroids of DIFFERENT codes.

  `embs_per_code`: [C, K, D], a list of [K_c, D], or [C, D] (one embedding per code). Centroid
  mu_c = mean of the L2-normalised embeddings of code c. Diversity = 1 - mean_{c<c'} cos(mu_c, mu_c').
  Identical codes give 0; orthogonal styles give 1. For the interval we write it as the mean over
  codes of d_c = 1 - mean_{c' != c} cos(mu_c, mu_c') (the same number) and use the normal
  approximation over the C codes (approximate: the d_c share pairs); n = C.
  """
  cents = _normalise(np.stack([g.mean(axis=0) for g in _groups(embs_per_code)]))
  c = cents.shape[0]
  if c < 2:
    return _metric(None, None, None, c)
  sims = cents @ cents.T
  per_code = 1.0 - (sims.sum(axis=1) - np.diag(sims)) / (c - 1)
  return mean_ci(per_code)


# ------------------------------------------------------------------------------ protocol
def _style_key(style: Any) -> str:
  return str(getattr(style, "name", style))


@dataclasses.dataclass(frozen=True)
class EvalJob:
  """One generated image of the protocol: `style` × `prompt`, sample `sample` with RNG seed `seed`."""
  style: Any
  prompt: Any
  seed: int
  style_index: int
  prompt_index: int
  sample: int

  @property
  def style_key(self) -> str:
    return _style_key(self.style)


# Binary per-image outcomes (best of N's oracle: any of the N candidates right)
RATES = ("text_fidelity", "content_leakage", "text_fidelity_oracle")


@dataclasses.dataclass(frozen=True)
class EvaluationProtocol:
  """StyleAR-style protocol: N styles × M prompts × K samples (StyleAR: 10 × 20 × 4).

  `jobs()` lists every (style, prompt, seed) to generate, style-major; seeds depend only on
  (base seed, style index, prompt index, sample), so adding styles or prompts keeps old jobs'
  seeds. `aggregate(scores)` turns per-job score arrays into metrics overall and per style.
  """
  styles: tuple
  prompts: tuple
  samples_per_prompt: int = 4
  seed: int = 0
  # per-image scores that are binary outcomes (Wilson interval); the rest are means (normal)
  rates: tuple[str, ...] = RATES

  def __post_init__(self):
    if not self.styles or not self.prompts or self.samples_per_prompt < 1:
      raise ValueError(f"protocol needs >= 1 style, prompt and sample; got {len(self.styles)} styles, "
                       f"{len(self.prompts)} prompts, {self.samples_per_prompt} samples.")

  def __len__(self) -> int:
    return len(self.styles) * len(self.prompts) * self.samples_per_prompt

  def jobs(self) -> list[EvalJob]:
    out = []
    for (si, s), (pi, p), k in itertools.product(enumerate(self.styles), enumerate(self.prompts),
                                                 range(self.samples_per_prompt)):
      seed = int(np.random.SeedSequence([self.seed, si, pi, k]).generate_state(1)[0])
      out.append(EvalJob(style=s, prompt=p, seed=seed, style_index=si, prompt_index=pi, sample=k))
    return out

  def aggregate(self, scores: Mapping[str, Any],
                group_metrics: Mapping[str, Callable[[Sequence[int]], Metric]] | None = None) -> dict[str, Any]:
    """Per-image scores -> {"overall": {name: Metric}, "per_style": {style: {name: Metric}}}.

    Each per-image metric also carries `ci95_clustered`: the interval with whole (style, prompt) cells
    resampled (`cluster_ci`); the K samples of a prompt are not independent draws, and across two
    evaluation sets these intervals held where the per-image ones were too narrow
    (launch/eval_replication.py; launch/STYLEAR_ABLATIONS.md).

    `scores[name]`: [len(self)] per-job values in `jobs()` order; NaN marks a job that does not
    count for that metric (e.g. leakage where the prompt shares the reference's shape). Names in
    `self.rates` are binary (Wilson), others continuous (normal). `group_metrics[name]`, if given,
    is called with the job indices of a set (all jobs, then each style's) and returns a Metric:
    how set-level metrics such as style_consistency join the report.
    """
    n = len(self)
    arrays = {}
    for name, v in scores.items():
      v = np.asarray(v, np.float64).reshape(-1)
      if v.size != n:
        raise ValueError(f"scores[{name!r}] has {v.size} values for {n} jobs.")
      arrays[name] = v
    per = len(self.prompts) * self.samples_per_prompt

    def summarise(idx: np.ndarray) -> dict[str, Metric]:
      out = {}
      for name, v in arrays.items():
        x = v[idx]
        x = x[~np.isnan(x)]
        out[name] = rate_ci(x.astype(np.int64)) if name in self.rates else mean_ci(x)
        # the K samples of one (reference, prompt) share it: their cell is the unit of resampling
        out[name]["ci95_clustered"] = cluster_ci(v[idx], idx // self.samples_per_prompt, name in self.rates)["ci95"]
      for name, fn in (group_metrics or {}).items():
        out[name] = fn([int(i) for i in idx])
      return out

    report = {"overall": summarise(np.arange(n)), "per_style": {}}
    for si, s in enumerate(self.styles):
      report["per_style"][_style_key(s)] = summarise(np.arange(si * per, (si + 1) * per))
    return report


def evaluation_protocol(styles: Iterable[Any], prompts: Iterable[Any], samples_per_prompt: int = 4,
                        seed: int = 0, rates: Sequence[str] = RATES) -> EvaluationProtocol:
  """Builds the N styles × M prompts × K samples protocol (see `EvaluationProtocol`)."""
  return EvaluationProtocol(tuple(styles), tuple(prompts), samples_per_prompt, seed, tuple(rates))
