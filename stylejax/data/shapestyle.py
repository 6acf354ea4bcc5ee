"""ShapeStyle: a procedural world of shapes x styles with exact ground truth.

An image shows 1-3 shapes of one kind and one color (the *content*, e.g. "two red stars") drawn
in a *style*: a parametric recipe for background, fill, strokes, tone, blur, pixelation, sketchy
jitter and paper texture. Everything is deterministic in (seed, split, index), numpy + PIL only,
and fast (a 64x64 image renders in about 2 ms on one CPU core).

Style ids (the `style_id` label):
  * named styles: 0 .. len(NAMED_STYLES)-1 (their index in NAMED_STYLES);
  * the plain style (the "original", no style words in the caption): PLAIN_STYLE_ID = -1;
  * held-out style k (fresh random styles for one-shot eval): HELDOUT_ID_OFFSET + k.
`style_class(style_id)` maps in-world ids to classifier classes 0..len(NAMED_STYLES) (plain last).

Captions: content "two red stars"; styled "two red stars in neon outline style" (StyleDrop's
"{content} in {descriptor} style" template); plain images use the content caption alone.
"""
from __future__ import annotations

import colorsys
import dataclasses
import functools
import math
import re
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image, ImageFilter

from stylejax.config import ConfigError

# ----------------------------------------------------------------------------------------------
# Content vocabulary

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "hexagon", "ring")
SHAPE_PLURALS = ("circles", "squares", "triangles", "stars", "hearts", "crosses", "diamonds", "hexagons", "rings")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")
# Base (hue degrees, saturation, value); far enough apart that style tone shifts keep the names.
_COLOR_HSV = ((0, 0.85, 0.90), (28, 0.90, 1.00), (52, 0.90, 1.00), (125, 0.75, 0.70),
              (220, 0.80, 0.90), (280, 0.65, 0.75), (330, 0.45, 1.00), (25, 0.70, 0.50))
COUNT_WORDS = ("one", "two", "three")  # COUNT_WORDS[count - 1]
MAX_COUNT = len(COUNT_WORDS)
MIN_IMAGE_SIZE = 24  # below this three shapes no longer stay countable

# Background colors get their own words (never a COLORS word) so style descriptors do not name content colors.
BG_COLORS = {
    "white": (1.0, 1.0, 1.0), "ivory": (1.0, 0.98, 0.92), "cream": (0.98, 0.94, 0.84),
    "sand": (0.90, 0.84, 0.70), "beige": (0.93, 0.89, 0.80), "ash": (0.86, 0.86, 0.86),
    "silver": (0.74, 0.75, 0.78), "stone": (0.60, 0.58, 0.55), "slate": (0.27, 0.31, 0.37),
    "charcoal": (0.16, 0.16, 0.17), "ink": (0.05, 0.06, 0.09), "navy": (0.08, 0.11, 0.25),
    "mint": (0.88, 0.96, 0.91), "lavender": (0.93, 0.91, 0.98), "sky": (0.88, 0.94, 0.99),
    "blush": (0.99, 0.92, 0.92),
}
BACKGROUNDS = ("solid", "gradient", "stripes", "dots", "checker", "grid", "noise")
FILLS = ("flat", "outline", "hatched", "crosshatched", "dotted", "shaded")

PLAIN_STYLE_ID = -1
HELDOUT_ID_OFFSET = 1000
_SPLITS = {"train": 0, "test": 1, "heldout_prompts": 2}
_HELDOUT_STREAM = 0x5EED_0001  # held-out styles draw from their own RNG stream
RGB = tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class Content:
  """What an image shows: `count` (1..3) shapes of kind SHAPES[shape] in color COLORS[color]."""
  shape: int
  color: int
  count: int

  def __post_init__(self):
    if not (0 <= self.shape < len(SHAPES) and 0 <= self.color < len(COLORS) and 1 <= self.count <= MAX_COUNT):
      raise ValueError(f"invalid content {self}; shape in [0,{len(SHAPES)}), color in [0,{len(COLORS)}), "
                       f"count in [1,{MAX_COUNT}].")

  @property
  def caption(self) -> str:
    noun = SHAPES[self.shape] if self.count == 1 else SHAPE_PLURALS[self.shape]
    return f"{COUNT_WORDS[self.count - 1]} {COLORS[self.color]} {noun}"


def random_content(rng: np.random.Generator, avoid_shape: int | None = None) -> Content:
  """A uniform content (shape, color, count drawn in that order); with `avoid_shape`, the shape is
  redrawn uniformly among the other shapes."""
  shape = int(rng.integers(len(SHAPES)))
  if avoid_shape is not None:
    shape = (avoid_shape + 1 + int(rng.integers(len(SHAPES) - 1))) % len(SHAPES)
  return Content(shape, int(rng.integers(len(COLORS))), int(rng.integers(1, MAX_COUNT + 1)))


def all_contents() -> list[Content]:
  """Every (shape, color, count) of the world, in a fixed order."""
  return [Content(s, c, n) for s in range(len(SHAPES)) for c in range(len(COLORS)) for n in range(1, MAX_COUNT + 1)]


# ----------------------------------------------------------------------------------------------
# Styles


@dataclasses.dataclass(frozen=True)
class Style:
  """A rendering recipe. Lengths are in pixels of a 64x64 image (scaled with image_size)."""
  name: str
  descriptor: str            # words for the caption: "{content} in {descriptor} style"; "" for plain
  id: int = PLAIN_STYLE_ID
  background: str = "solid"  # one of BACKGROUNDS
  bg_color: RGB = (1.0, 1.0, 1.0)
  bg_color2: RGB = (0.9, 0.9, 0.9)
  bg_scale: float = 8.0      # pattern period
  bg_angle: float = 45.0     # degrees, stripes and gradient direction
  fill: str = "flat"         # one of FILLS
  stroke: float = 2.5        # outline / hatch line width
  hatch_period: float = 5.0
  hatch_angle: float = 45.0
  edge: float = 0.0          # ink contour width drawn on the boundary (0 = none)
  edge_color: RGB = (0.08, 0.08, 0.10)
  hue_shift: float = 0.0     # degrees; small so color names survive
  saturation: float = 1.0    # multiplier
  brightness: float = 1.0    # multiplier
  blur: float = 0.0          # Gaussian radius
  glow: float = 0.0          # 0..1 strength of a colored halo
  shadow: float = 0.0        # drop-shadow offset (0 = none)
  pixelate: int = 1          # block size (1 = none)
  jitter: float = 0.0        # sketchy wobble amplitude of the contours
  paper: float = 0.0         # paper-grain texture strength
  posterize: int = 0         # brightness levels (0 = off); hue and saturation are kept

  def __post_init__(self):
    if self.background not in BACKGROUNDS:
      raise ValueError(f"style {self.name!r}: background {self.background!r} not in {BACKGROUNDS}.")
    if self.fill not in FILLS:
      raise ValueError(f"style {self.name!r}: fill {self.fill!r} not in {FILLS}.")

  @property
  def is_plain(self) -> bool:
    return self.id == PLAIN_STYLE_ID

  def vector(self) -> np.ndarray:
    """The parameters as a float32 [STYLE_PARAM_DIM] vector, each entry roughly in [0, 1]."""
    return _style_vector(self).copy()


@functools.lru_cache(maxsize=4096)
def _style_vector(style: Style) -> np.ndarray:
  def onehot(value, options):
    return [float(value == o) for o in options]

  def angle(deg):  # orientation is mod 180 degrees
    return [0.5 + 0.5 * math.cos(math.radians(2 * deg)), 0.5 + 0.5 * math.sin(math.radians(2 * deg))]

  v = (onehot(style.background, BACKGROUNDS) + list(style.bg_color) + list(style.bg_color2) + [style.bg_scale / 16]
       + angle(style.bg_angle) + onehot(style.fill, FILLS) + [style.stroke / 5, style.hatch_period / 8]
       + angle(style.hatch_angle) + [style.edge / 4] + list(style.edge_color)
       + [0.5 + style.hue_shift / 24, style.saturation, style.brightness, style.blur / 2, style.glow, style.shadow / 4,
          (style.pixelate - 1) / 7, style.jitter / 2, style.paper / 0.3, style.posterize / 4])
  return np.asarray(v, np.float32)


STYLE_PARAM_NAMES = (tuple(f"bg_{b}" for b in BACKGROUNDS) + ("bg_r", "bg_g", "bg_b", "bg2_r", "bg2_g", "bg2_b",
                     "bg_scale", "bg_angle_cos", "bg_angle_sin") + tuple(f"fill_{f}" for f in FILLS)
                     + ("stroke", "hatch_period", "hatch_angle_cos", "hatch_angle_sin", "edge", "edge_r", "edge_g",
                        "edge_b", "hue_shift", "saturation", "brightness", "blur", "glow", "shadow", "pixelate",
                        "jitter", "paper", "posterize"))
STYLE_PARAM_DIM = len(STYLE_PARAM_NAMES)

PLAIN_STYLE = Style(name="plain", descriptor="", id=PLAIN_STYLE_ID)

_C = BG_COLORS
_INK, _WHITE = (0.06, 0.06, 0.08), (0.97, 0.97, 0.95)
_NAMED_SPECS: tuple[dict[str, Any], ...] = (
    dict(name="neon outline", background="solid", bg_color=_C["ink"], fill="outline", stroke=2.5, glow=0.8,
         saturation=1.25, brightness=1.12),
    dict(name="pastel hatched", background="solid", bg_color=_C["cream"], fill="hatched", stroke=1.5,
         hatch_period=4.5, hatch_angle=45, saturation=0.6, brightness=1.1),
    dict(name="comic ink", background="dots", bg_color=_C["ivory"], bg_color2=_C["ash"], bg_scale=6, fill="flat",
         edge=3.0, saturation=1.2),
    dict(name="pencil sketch", background="solid", bg_color=_C["ivory"], fill="outline", stroke=1.2, jitter=1.4,
         paper=0.18, saturation=0.7, edge_color=_INK),
    dict(name="watercolor wash", background="solid", bg_color=_C["white"], fill="flat", blur=1.4, jitter=1.2,
         paper=0.22, saturation=0.7, brightness=1.08),
    dict(name="pixel art", background="solid", bg_color=_C["sky"], fill="flat", pixelate=4, saturation=1.2,
         posterize=4),
    dict(name="retro stripes", background="stripes", bg_color=_C["cream"], bg_color2=_C["sand"], bg_scale=8,
         bg_angle=0, fill="flat", edge=1.5, edge_color=(0.25, 0.18, 0.12), saturation=0.85, brightness=0.95),
    dict(name="checkerboard pop", background="checker", bg_color=_C["white"], bg_color2=_C["ash"], bg_scale=8,
         fill="flat", saturation=1.25, shadow=2.5),
    dict(name="chalkboard", background="noise", bg_color=_C["slate"], bg_color2=(0.22, 0.26, 0.30), bg_scale=10,
         fill="hatched", stroke=1.6, hatch_period=3.5, hatch_angle=120, jitter=1.0, paper=0.15, brightness=1.1),
    dict(name="sunset gradient", background="gradient", bg_color=_C["cream"], bg_color2=_C["blush"], bg_angle=90,
         fill="flat", hue_shift=6, saturation=1.1),
    dict(name="night glow", background="gradient", bg_color=_C["navy"], bg_color2=_C["ink"], bg_angle=90,
         fill="flat", glow=0.6, brightness=1.1),
    dict(name="newsprint halftone", background="noise", bg_color=_C["beige"], bg_color2=_C["ash"], bg_scale=4,
         fill="dotted", hatch_period=3.5, saturation=0.65, paper=0.12),
    dict(name="soft focus", background="gradient", bg_color=_C["lavender"], bg_color2=_C["sky"], bg_angle=30,
         fill="flat", blur=2.0, saturation=0.9),
    dict(name="film grain", background="noise", bg_color=_C["ash"], bg_color2=_C["silver"], bg_scale=12,
         fill="flat", paper=0.3, saturation=0.8, brightness=0.9),
    dict(name="bold poster", background="solid", bg_color=_C["charcoal"], fill="flat", edge=2.5, edge_color=_WHITE,
         posterize=3, saturation=1.3),
    dict(name="faded vintage", background="solid", bg_color=_C["sand"], fill="flat", hue_shift=8, saturation=0.65,
         brightness=0.85, paper=0.2, blur=0.6),
    dict(name="crosshatch ink", background="solid", bg_color=_C["white"], fill="crosshatched", stroke=1.1,
         hatch_period=4.0, hatch_angle=30, edge=1.2),
    dict(name="drop shadow", background="solid", bg_color=_C["ash"], fill="flat", shadow=3.5),
    dict(name="dark mode outline", background="solid", bg_color=_C["charcoal"], fill="outline", stroke=1.5),
    dict(name="mosaic", background="grid", bg_color=_C["stone"], bg_color2=_C["silver"], bg_scale=8, fill="flat",
         pixelate=6, saturation=1.1),
    dict(name="glossy 3d", background="gradient", bg_color=_C["white"], bg_color2=_C["silver"], bg_angle=90,
         fill="shaded", shadow=2.0, saturation=1.15),
    dict(name="crayon scribble", background="solid", bg_color=_C["white"], fill="hatched", stroke=2.0,
         hatch_period=3.5, hatch_angle=75, jitter=1.8, paper=0.25),
    dict(name="polka dot", background="dots", bg_color=_C["mint"], bg_color2=_C["white"], bg_scale=10,
         fill="flat", edge=1.2),
    dict(name="graph paper", background="grid", bg_color=_C["white"], bg_color2=(0.62, 0.78, 0.9), bg_scale=6,
         fill="outline", stroke=2.0, edge_color=_INK),
    dict(name="candy stripes", background="stripes", bg_color=_C["white"], bg_color2=_C["blush"], bg_scale=6,
         bg_angle=135, fill="shaded", saturation=1.2, brightness=1.05),
    dict(name="stippled", background="solid", bg_color=_C["ivory"], fill="dotted", hatch_period=3.0,
         saturation=0.9, jitter=0.6),
    dict(name="blurry dots", background="dots", bg_color=_C["charcoal"], bg_color2=_C["slate"], bg_scale=12,
         fill="dotted", hatch_period=4.0, blur=1.0, brightness=1.1),
    dict(name="thick marker", background="solid", bg_color=_C["beige"], fill="outline", stroke=4.5, jitter=0.8,
         saturation=1.1),
)
NAMED_STYLES: tuple[Style, ...] = tuple(Style(descriptor=s["name"], id=i, **s) for i, s in enumerate(_NAMED_SPECS))
_STYLE_BY_NAME = {s.name: s for s in NAMED_STYLES} | {PLAIN_STYLE.name: PLAIN_STYLE}


def style_class(style_id: int) -> int:
  """In-world style id -> class in [0, len(NAMED_STYLES)] (plain is the last class)."""
  if style_id == PLAIN_STYLE_ID:
    return len(NAMED_STYLES)
  if 0 <= style_id < len(NAMED_STYLES):
    return style_id
  raise ValueError(f"style id {style_id} is a held-out style and has no class; classes cover named + plain.")


def get_style(style: Union[Style, str, int]) -> Style:
  """A Style from itself, a name ("neon outline", "plain", "heldout-3") or an id (-1, 0.., 1000+k)."""
  if isinstance(style, Style):
    return style
  if isinstance(style, (int, np.integer)):
    style = int(style)
    if style == PLAIN_STYLE_ID:
      return PLAIN_STYLE
    if 0 <= style < len(NAMED_STYLES):
      return NAMED_STYLES[style]
    if style >= HELDOUT_ID_OFFSET:
      return heldout_style(style - HELDOUT_ID_OFFSET)
    raise ValueError(f"unknown style id {style}; use -1 (plain), 0..{len(NAMED_STYLES) - 1} (named) "
                     f"or >= {HELDOUT_ID_OFFSET} (held-out).")
  if isinstance(style, str):
    if style in _STYLE_BY_NAME:
      return _STYLE_BY_NAME[style]
    m = re.fullmatch(r"heldout-(\d+)", style)
    if m:
      return heldout_style(int(m.group(1)))
    raise ConfigError(f"unknown style {style!r}; use 'plain', 'heldout-K' or one of: {', '.join(_STYLE_BY_NAME)}.")
  raise TypeError(f"style must be a Style, name or id; got {type(style).__name__}.")


def _nearest_bg_name(rgb: RGB) -> str:
  return min(BG_COLORS, key=lambda n: sum((a - b) ** 2 for a, b in zip(BG_COLORS[n], rgb)))


def _luma(rgb: Sequence[float]) -> float:
  return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _heldout_descriptor(s: dict[str, Any]) -> str:
  words = []
  for key, word in (("glow", "glowing"), ("jitter", "sketchy"), ("blur", "soft"), ("paper", "grainy"),
                    ("shadow", "shadowed"), ("posterize", "posterized")):
    if s[key] and len(words) < 2:
      words.append(word)
  if s["pixelate"] > 1:
    words.append("pixelated")
  words.append({"flat": "flat", "outline": "outlined", "hatched": "hatched", "crosshatched": "crosshatched",
                "dotted": "dotted", "shaded": "shaded"}[s["fill"]])
  if s["edge"]:
    words.append("inked")
  bg = _nearest_bg_name(s["bg_color"])
  if s["background"] == "solid":
    words.append(f"on {bg}")
  elif s["background"] == "gradient":
    words.append(f"on {bg}-to-{_nearest_bg_name(s['bg_color2'])}")
  else:
    words.append(f"on {bg} {s['background']}")
  return " ".join(words)


def _sample_style_params(rng: np.random.Generator) -> dict[str, Any]:
  """One random point of the style space (the same space the named styles live in)."""
  names = list(BG_COLORS)
  jit = lambda c: tuple(float(np.clip(x + rng.uniform(-0.03, 0.03), 0, 1)) for x in c)
  bg1 = jit(BG_COLORS[names[rng.integers(len(names))]])
  dark = _luma(bg1) < 0.5
  # A second background color of the same lightness family keeps shapes readable on every patch.
  family = [n for n in names if (_luma(BG_COLORS[n]) < 0.5) == dark and BG_COLORS[n] != bg1]
  bg2 = jit(BG_COLORS[family[rng.integers(len(family))]])
  maybe = lambda p, lo, hi: float(rng.uniform(lo, hi)) if rng.random() < p else 0.0
  return dict(
      background=BACKGROUNDS[rng.integers(len(BACKGROUNDS))], bg_color=bg1, bg_color2=bg2,
      bg_scale=float(rng.uniform(4, 14)), bg_angle=float(rng.uniform(0, 180)),
      fill=FILLS[rng.integers(len(FILLS))], stroke=float(rng.uniform(1.2, 4.5)),
      hatch_period=float(rng.uniform(3.0, 6.5)), hatch_angle=float(rng.uniform(0, 180)),
      edge=maybe(0.4, 1.0, 3.0), edge_color=_WHITE if dark else _INK,
      hue_shift=float(rng.uniform(-10, 10)), saturation=float(rng.uniform(0.6, 1.3)),
      brightness=float(rng.uniform(0.85, 1.15)), blur=maybe(0.3, 0.5, 1.8), glow=maybe(0.25, 0.3, 0.9),
      shadow=maybe(0.25, 1.5, 4.0), pixelate=int(rng.choice([2, 3, 4])) if rng.random() < 0.2 else 1,
      jitter=maybe(0.3, 0.6, 2.0), paper=maybe(0.35, 0.05, 0.28),
      posterize=int(rng.choice([3, 4])) if rng.random() < 0.15 else 0)


_NAMED_VECTORS = np.stack([s.vector() for s in NAMED_STYLES + (PLAIN_STYLE,)])
_MIN_HELDOUT_DISTANCE = 0.5  # L2 in vector() space from every named style and plain


def heldout_style(k: int, seed: int = 0) -> Style:
  """Held-out style k (k >= 0): a fresh random style from an RNG stream disjoint from everything else.

  Re-drawn until its parameter vector is at least 0.5 (L2) from every named style and plain, so no
  held-out style equals an in-world one. Its id is HELDOUT_ID_OFFSET + k and its descriptor is built
  from its parameters ("sketchy hatched on sand stripes").
  """
  if k < 0:
    raise ValueError(f"held-out style index must be >= 0; got {k}.")
  rng = np.random.default_rng([_HELDOUT_STREAM, seed, k])
  named_descriptors = {s.descriptor for s in NAMED_STYLES}
  while True:
    params = _sample_style_params(rng)
    style = Style(name=f"heldout-{k}", descriptor=_heldout_descriptor(params), id=HELDOUT_ID_OFFSET + k, **params)
    far = np.min(np.linalg.norm(_NAMED_VECTORS - style.vector(), axis=-1)) >= _MIN_HELDOUT_DISTANCE
    if far and style.descriptor not in named_descriptors:
      return style


def training_style(index: int, stream: int, seed: int = 0, split_id: int = 0) -> Style:
  """A fresh held-out-family style for training example `index`: `heldout_style(index)` on seed
  `stream + 2 * seed + split_id` (split_id 0 train, 1 test). Each training source passes its own
  `stream` (far from 0), so these never equal an eval held-out style (seed 0)."""
  return heldout_style(index, seed=stream + 2 * int(seed) + int(split_id))


# ----------------------------------------------------------------------------------------------
# Rendering


def _tone(rgb: Sequence[float], style: Style, jitter: Sequence[float] = (0.0, 1.0, 1.0)) -> np.ndarray:
  """Style palette shift (hue / saturation / brightness) of one color; `jitter` is a per-image nudge."""
  h, s, v = colorsys.rgb_to_hsv(*rgb)
  h = (h + (style.hue_shift + jitter[0]) / 360.0) % 1.0
  s = min(1.0, s * style.saturation * jitter[1])
  v = min(1.0, v * style.brightness * jitter[2])
  return np.asarray(colorsys.hsv_to_rgb(h, s, v), np.float32)


def _shape_color(color: int, style: Style, rng: np.random.Generator) -> np.ndarray:
  h, s, v = _COLOR_HSV[color]
  base = colorsys.hsv_to_rgb(h / 360.0, s, v)
  return _tone(base, style, (rng.uniform(-4, 4), rng.uniform(0.92, 1.08), rng.uniform(0.93, 1.05)))


def _box(u: np.ndarray, v: np.ndarray, hx: float, hy: float) -> np.ndarray:
  qx, qy = np.abs(u) - hx, np.abs(v) - hy
  return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


_S3 = math.sqrt(3) / 2
_STAR_TIP, _STAR_INNER = 1.0, 0.5  # outer and inner radius of the 5-point star (times r)
_STAR_I = (_STAR_INNER * math.sin(math.pi / 5), _STAR_INNER * math.cos(math.pi / 5))
_HEART_H = 1.0 / 1.345  # diamond half-diagonal so that the heart's circumradius is r


def _sdf(kind: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
  """Signed distance in pixels (negative inside) of a shape of circumradius ~r; (u, v) image-oriented (v down)."""
  if kind == "circle":
    return np.hypot(u, v) - r
  if kind == "ring":  # annulus from 0.4 r to r
    return np.abs(np.hypot(u, v) - 0.7 * r) - 0.3 * r
  if kind == "square":
    return _box(u, v, 0.7 * r, 0.7 * r)
  if kind == "cross":
    return np.minimum(_box(u, v, 0.92 * r, 0.33 * r), _box(u, v, 0.33 * r, 0.92 * r))
  if kind == "diamond":  # rhombus taller than wide, so it never reads as a rotated square
    a, b = 0.62 * r, r
    return (np.abs(u) * b + np.abs(v) * a - a * b) / math.hypot(a, b)
  if kind == "hexagon":  # pointy-top, inradius r*sqrt(3)/2
    au, av = np.abs(u), np.abs(v)
    return np.maximum(au, 0.5 * au + _S3 * av) - _S3 * r
  if kind == "triangle":  # pointing up, centroid at the origin
    return np.maximum.reduce([v - 0.5 * r, _S3 * u - 0.5 * v - 0.5 * r, -_S3 * u - 0.5 * v - 0.5 * r])
  if kind == "star":
    # Fold into one of the 10 mirror wedges, then the boundary is the segment tip -> inner vertex.
    rho = np.hypot(u, v) / r
    sector = 2 * math.pi / 5
    phi = np.abs(np.mod(np.arctan2(u, -v) + sector / 2, sector) - sector / 2)
    qx, qy = rho * np.sin(phi), rho * np.cos(phi)
    ex, ey = _STAR_I[0], _STAR_I[1] - _STAR_TIP
    wx, wy = qx, qy - _STAR_TIP
    h = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0, 1)
    dist = np.hypot(wx - ex * h, wy - ey * h) * r
    return np.where(ex * wy - ey * wx < 0, -dist, dist)
  if kind == "heart":  # a 45-degree square with two discs on its upper sides
    h = _HEART_H * r
    c = 0.1035 * h
    vc = v - c
    diamond = _box((u + vc) / math.sqrt(2), (u - vc) / math.sqrt(2), h / math.sqrt(2), h / math.sqrt(2))
    disc_r = h / math.sqrt(2)
    left = np.hypot(u + h / 2, vc + h / 2) - disc_r
    right = np.hypot(u - h / 2, vc + h / 2) - disc_r
    return np.minimum(diamond, np.minimum(left, right))
  raise ValueError(f"unknown shape {kind!r}; use one of {SHAPES}.")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  """Band-limited noise in [-1, 1], [size, size] float32 (a random cells x cells grid, bicubic-upsampled)."""
  cells = int(min(max(cells, 2), size))
  grid = Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32))
  return np.asarray(grid.resize((size, size), Image.BICUBIC))


def _blur_alpha(a: np.ndarray, radius: float) -> np.ndarray:
  im = Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))
  return np.asarray(im.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0


def _aa(x: np.ndarray) -> np.ndarray:
  """Coverage of a pixel by {x < 0} for x a distance in pixels (one-pixel antialiasing ramp)."""
  return np.clip(0.5 - x, 0.0, 1.0)


def _layout(count: int, size: int, rng: np.random.Generator, margin: float) -> list[tuple[float, float, float]]:
  """`count` non-touching (cx, cy, r) inside the image; r is each shape's circumradius in pixels."""
  lo, hi = {1: (0.22, 0.36), 2: (0.16, 0.24), 3: (0.13, 0.19)}[count]
  for attempt in range(200):
    shrink = 0.93 ** (attempt // 10)  # crowded (small) images: retry with smaller shapes and gaps
    gap = 2.0 + 0.06 * size * shrink  # >= 2 px keeps every shape its own connected blob in the mask
    base = rng.uniform(lo, hi) * size * shrink
    shapes = []
    for _ in range(count):
      r = base * rng.uniform(0.88, 1.0)
      pad = r + margin
      if pad * 2 >= size:
        r, pad = size / 2 - margin - 1, size / 2 - 1
      cx, cy = rng.uniform(pad, size - pad, 2)
      if all(math.hypot(cx - x, cy - y) >= r + q + gap for x, y, q in shapes):
        shapes.append((float(cx), float(cy), float(r)))
    if len(shapes) == count:
      return shapes
  raise RuntimeError(f"could not place {count} shapes in a {size}x{size} image; use image_size >= {MIN_IMAGE_SIZE}.")


def _background(style: Style, xs: np.ndarray, ys: np.ndarray, scale: float, rng: np.random.Generator,
                c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
  """[S, S, 3] background; xs, ys are pixel centers in 64-px units, `scale` = pixels per unit."""
  kind, p = style.background, max(style.bg_scale, 2.0)
  ox, oy = rng.uniform(0, p, 2)
  if kind == "solid":
    return np.broadcast_to(c1, xs.shape + (3,)).copy()
  a = math.radians(style.bg_angle)
  if kind == "gradient":
    t = np.clip(((xs - 32) * math.cos(a) + (ys - 32) * math.sin(a)) / 64 + 0.5, 0, 1)
  elif kind == "stripes":
    tt = xs * math.cos(a) + ys * math.sin(a) + ox
    t = np.clip((np.abs(np.mod(tt, p) - p / 2) - p / 4) * scale + 0.5, 0, 1)
  elif kind == "dots":
    dd = np.hypot(np.mod(xs + ox, p) - p / 2, np.mod(ys + oy, p) - p / 2)
    t = _aa((dd - 0.25 * p) * scale)
  elif kind == "checker":
    t = np.mod(np.floor((xs + ox) / p) + np.floor((ys + oy) / p), 2)
  elif kind == "grid":
    dl = np.minimum(np.abs(np.mod(xs + ox, p) - p / 2), np.abs(np.mod(ys + oy, p) - p / 2))
    t = _aa((p / 2 - dl) * scale - 0.6)
  elif kind == "noise":
    t = 0.5 + 0.5 * _smooth_noise(rng, xs.shape[0], round(64 / p))
  else:
    raise ValueError(kind)
  t = t.astype(np.float32)[..., None]
  return c1 * (1 - t) + c2 * t


def render(content: Content | tuple[int, int, int], style: Style | str | int, image_size: int = 64,
           rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Draws `content` in `style`.

  Returns (image [S, S, 3] uint8, mask [S, S] uint8 in {0, 1}). The mask is the exact silhouette of
  the shapes before style effects (jitter, blur, pixelation), one connected blob per shape.
  """
  if not isinstance(content, Content):
    content = Content(*map(int, content))
  style = get_style(style)
  if image_size < MIN_IMAGE_SIZE:
    raise ConfigError(f"image_size={image_size} is too small to draw countable shapes; use >= {MIN_IMAGE_SIZE}.")
  rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
  S, scale = int(image_size), image_size / 64.0
  kind = SHAPES[content.shape]

  ij = (np.arange(S, dtype=np.float32) + 0.5)
  X, Y = np.meshgrid(ij, ij)  # pixel centers; Y grows downward
  stroke = max(style.stroke * scale, 1.0)
  edge = max(style.edge * scale, 1.0) if style.edge > 0 else 0.0
  margin = 1.0 + edge / 2 + style.jitter * scale + (2.0 if style.glow else 0.0)

  # Geometry: union of per-shape signed distances; `nearest` remembers which shape owns each pixel.
  shapes = _layout(content.count, S, rng, margin)
  max_rot = 12.0 if kind in ("square", "diamond", "cross") else 25.0
  dists = []
  for cx, cy, r in shapes:
    t = math.radians(rng.uniform(-max_rot, max_rot)) if kind not in ("circle", "ring") else 0.0
    px, py = X - cx, Y - cy
    u, v = px * math.cos(t) + py * math.sin(t), -px * math.sin(t) + py * math.cos(t)
    dists.append(_sdf(kind, u, v, r))
  d_clean = np.minimum.reduce(dists) if len(dists) > 1 else dists[0]
  mask = (d_clean < 0).astype(np.uint8)
  d = d_clean
  if style.jitter > 0:
    d = d + style.jitter * scale * _smooth_noise(rng, S, 7)

  # Fill alpha and color.
  color = _shape_color(content.color, style, rng)
  inside = _aa(d)
  thin = max(1.0, 0.6 * stroke)
  if style.fill == "flat" or style.fill == "shaded":
    alpha = inside
  elif style.fill == "outline":
    alpha = inside * np.clip(d + stroke + 0.5, 0, 1)
  else:
    rim = inside * np.clip(d + thin + 0.5, 0, 1)
    period = max(style.hatch_period * scale, 2.5)
    if style.fill == "dotted":
      ox, oy = rng.uniform(0, period, 2)
      dd = np.hypot(np.mod(X + ox, period) - period / 2, np.mod(Y + oy, period) - period / 2)
      pattern = _aa(dd - max(0.3 * period, 0.8))
    else:
      angles = [style.hatch_angle] + ([style.hatch_angle + 90] if style.fill == "crosshatched" else [])
      phase = rng.uniform(0, period)
      pattern = 0
      for ang in angles:
        a = math.radians(ang)
        tt = X * math.cos(a) + Y * math.sin(a) + phase
        dl = np.abs(np.mod(tt, period) - period / 2)
        pattern = np.maximum(pattern, _aa(dl - thin / 2))
    alpha = np.maximum(rim, inside * pattern)
  alpha = alpha[..., None]
  fg = np.broadcast_to(color, (S, S, 3))
  if style.fill == "shaded":  # light from the upper left of each shape
    owner = np.argmin(np.stack(dists), axis=0) if len(dists) > 1 else np.zeros((S, S), np.int64)
    cs = np.asarray(shapes, np.float32)
    cx, cy, r = cs[owner, 0], cs[owner, 1], cs[owner, 2]
    light = np.clip(np.hypot(X - (cx - 0.35 * r), Y - (cy - 0.35 * r)) / (1.5 * r), 0, 1)
    fg = np.clip(color * (1.3 - 0.6 * light)[..., None], 0, 1)

  # Background, shadow, glow, then the shapes and their ink contour.
  c1, c2 = _tone(style.bg_color, style), _tone(style.bg_color2, style)
  img = _background(style, X / scale, Y / scale, scale, rng, c1, c2)
  if style.shadow > 0:
    off = max(1, round(style.shadow * scale))
    sh = np.zeros_like(inside)
    sh[off:, off:] = inside[:-off, :-off]
    img = img * (1 - 0.45 * _blur_alpha(sh, 1.2 * scale)[..., None])
  if style.glow > 0:
    halo = np.clip(_blur_alpha(alpha[..., 0], 3.0 * scale) * 1.8 * style.glow, 0, 1)[..., None]
    img = img * (1 - halo) + color * halo
  img = img * (1 - alpha) + fg * alpha
  if edge > 0:
    e = _aa(np.abs(d) - edge / 2)[..., None]
    img = img * (1 - e) + np.asarray(style.edge_color, np.float32) * e
  if style.paper > 0:
    grain = 0.6 * rng.uniform(-1, 1, (S, S)).astype(np.float32) + 0.4 * _smooth_noise(rng, S, S // 4)
    img = img * (1 + style.paper * grain)[..., None]

  out = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
  if style.blur > 0 or style.pixelate > 1:
    im = Image.fromarray(out)
    if style.blur > 0:
      im = im.filter(ImageFilter.GaussianBlur(style.blur * scale))
    block = round(style.pixelate * scale)
    if block > 1:
      small = max(1, S // block)
      im = im.resize((small, small), Image.BOX).resize((S, S), Image.NEAREST)
    out = np.asarray(im)
  if style.posterize > 1:  # quantize luma only, keeping each pixel's chroma (per-channel levels turn brown olive)
    f = out.astype(np.float32) / 255.0
    luma = f @ np.asarray([0.299, 0.587, 0.114], np.float32)
    levels = float(style.posterize)
    q = (np.floor(np.minimum(luma, 0.999) * levels) + 0.5) / levels
    out = np.round(np.clip(f * (q / np.maximum(luma, 1e-3))[..., None], 0, 1) * 255).astype(np.uint8)
  return np.ascontiguousarray(out), mask


# ----------------------------------------------------------------------------------------------
# Captions and examples


def caption_for(content: Content, style: Style) -> str:
  """StyleDrop's template: "{content} in {descriptor} style"; plain style -> the content caption."""
  return content.caption if not style.descriptor else f"{content.caption} in {style.descriptor} style"


_CAPTION_RE = re.compile(r"^\s*(\w+)\s+(\w+)\s+(\w+)(?:\s+in\s+(.+?)\s+style)?\s*$")


def parse_caption(text: str) -> tuple[Content | None, str]:
  """"two red stars in neon outline style" -> (Content, "neon outline"); unparseable content -> (None, ...)."""
  m = _CAPTION_RE.match(text.lower())
  if not m:
    return None, ""
  count_w, color_w, noun, descriptor = m.groups()
  descriptor = descriptor or ""
  if count_w not in COUNT_WORDS or color_w not in COLORS:
    return None, descriptor
  count = COUNT_WORDS.index(count_w) + 1
  nouns = SHAPES if count == 1 else SHAPE_PLURALS
  if noun not in nouns:
    return None, descriptor
  return Content(nouns.index(noun), COLORS.index(color_w), count), descriptor


def caption_swaps(text: str) -> list[tuple[list[str], int]] | None:
  """Per content word of a caption (shape, color, count), every caption that differs from it in that word alone,
  the style phrase kept: [(captions, index of the text's own value)] * 3; None if `text` does not parse.

  "two red stars in neon outline style" -> ([... "two red circles in neon outline style", ...], 3), ..."""
  content, descriptor = parse_caption(text)
  if content is None:
    return None
  tail = f" in {descriptor} style" if descriptor else ""
  out = []
  for slot, values in (("shape", range(len(SHAPES))), ("color", range(len(COLORS))),
                       ("count", range(1, MAX_COUNT + 1))):
    captions = [dataclasses.replace(content, **{slot: v}).caption + tail for v in values]
    out.append((captions, list(values).index(getattr(content, slot))))
  return out


def _as_content(content: Content | tuple[int, int, int] | str) -> Content:
  if isinstance(content, Content):
    return content
  if isinstance(content, str):
    parsed, _ = parse_caption(content)
    if parsed is None:
      raise ValueError(f"cannot parse content {content!r}; write it like 'two red stars' "
                       f"(count in {COUNT_WORDS}, color in {COLORS}, shape in {SHAPES}).")
    return parsed
  shape, color, count = content
  shape = SHAPES.index(shape) if isinstance(shape, str) else int(shape)
  color = COLORS.index(color) if isinstance(color, str) else int(color)
  return Content(shape, color, int(count))


def shape_token_mask(masks: np.ndarray, grid: int) -> np.ndarray:
  """[B, S, S] shape masks -> [B, grid*grid] bool: the token cells that hold any shape pixel."""
  b, s, _ = masks.shape
  cell = s // grid
  return (masks.reshape(b, grid, cell, grid, cell).max((2, 4)) > 0).reshape(b, grid * grid)


def make_example(content: Content | tuple | str, style: Style | str | int, image_size: int = 64,
                 rng: np.random.Generator | int | None = None, image_dtype: str = "uint8",
                 index: int = -1) -> dict[str, np.ndarray]:
  """Renders one example dict (the fields of ShapeStyleSource) for a given content and style.

  `content`: Content, (shape, color, count) with ids or names, or a caption like "two red stars".
  For evaluation prompts: `make_example("two red stars", "neon outline", rng=0)`.
  """
  content, style = _as_content(content), get_style(style)
  image, mask = render(content, style, image_size, rng)
  if image_dtype == "float32":
    image = image.astype(np.float32) / 255.0
  elif image_dtype != "uint8":
    raise ValueError(f"image_dtype={image_dtype!r}; use 'uint8' or 'float32'.")
  return {
      "image": image,                                            # [S, S, 3]
      "mask": mask,                                              # [S, S] uint8 {0, 1}
      "caption": np.str_(caption_for(content, style)),
      "content_caption": np.str_(content.caption),
      "style_descriptor": np.str_(style.descriptor),
      "shape": np.int32(content.shape),
      "color": np.int32(content.color),
      "count": np.int32(content.count),
      "style_id": np.int32(style.id),
      "style_params": style.vector(),                            # [STYLE_PARAM_DIM] float32
      "index": np.int64(index),
  }


def _resolve_styles(styles: Any, num_heldout_styles: int) -> list[Style]:
  if isinstance(styles, Style):
    return [styles]
  if isinstance(styles, str):
    if styles == "named+plain":
      return list(NAMED_STYLES) + [PLAIN_STYLE]
    if styles == "named":
      return list(NAMED_STYLES)
    if styles == "plain":
      return [PLAIN_STYLE]
    if styles == "heldout":
      return [heldout_style(k) for k in range(num_heldout_styles)]
    return [get_style(styles)]
  out = [get_style(s) for s in styles]
  if not out:
    raise ConfigError("styles is empty; pass 'named+plain', 'named', 'plain', 'heldout', a name, or a list.")
  return out


def is_heldout_prompt(content: Content, style: Style, fraction: float) -> bool:
  """True for a fixed pseudo-random `fraction` of (content, style) prompts, kept out of training
  when a source has `heldout_prompts > 0`: text-to-image models are scored on these unseen combos."""
  if fraction <= 0:
    return False
  key = (content.shape * 31 + content.color) * 7 + content.count
  return ((key * 2654435761 + (style.id + 1) * 40503) % 10007) < fraction * 10007


class ShapeStyleSource:
  """Random-access ShapeStyle examples, generated on the fly from (seed, split, index).

  `styles`: "named+plain" (default), "named", "plain", "heldout" (the first `num_heldout_styles`
  held-out styles), one style name/id/Style, or a list of them. Each index draws its content
  uniformly and its style uniformly from that list (or plain with probability `plain_fraction`
  when given and plain is in the list). Train and test use disjoint RNG streams; contents
  (the 216 classes) are shared by design. `heldout_prompts` > 0 keeps that fraction of
  (content, style) prompts (`is_heldout_prompt`) out of the train split; the "heldout_prompts"
  split draws only those. `random_style_fraction` > 0 draws that share of indices as a random content in
  a fresh held-out-family style (`training_style` on the consumer's `random_style_stream`; never an eval
  held-out style), as CLIP and the tokenizer train for unseen styles.

  `__getitem__(i)` -> dict of numpy arrays (see `make_example`): image [S, S, 3] uint8 (or float32
  in [0, 1]), mask [S, S] uint8, caption / content_caption / style_descriptor (numpy str), shape,
  color, count, style_id (int32), style_params [STYLE_PARAM_DIM] float32, index (int64).
  """

  def __init__(self, split: str = "train", image_size: int = 64, seed: int = 0, styles: Any = "named+plain",
               num_examples: int = 100_000, image_dtype: str = "uint8", plain_fraction: float | None = None,
               num_heldout_styles: int = 16, heldout_prompts: float = 0.0, random_style_fraction: float = 0.0,
               random_style_stream: int = 0):
    if split not in _SPLITS:
      raise ValueError(f"split={split!r}; use one of {tuple(_SPLITS)}.")
    if num_examples <= 0:
      raise ConfigError(f"num_examples={num_examples}; use a positive count.")
    if image_dtype not in ("uint8", "float32"):
      raise ConfigError(f"image_dtype={image_dtype!r}; use 'uint8' or 'float32'.")
    if image_size < MIN_IMAGE_SIZE:
      raise ConfigError(f"image_size={image_size} is too small to draw countable shapes; use >= {MIN_IMAGE_SIZE}.")
    self.split, self.image_size, self.seed = split, int(image_size), int(seed)
    self.num_examples, self.image_dtype = int(num_examples), image_dtype
    self.styles = _resolve_styles(styles, num_heldout_styles)
    self.plain_fraction, self.heldout_prompts = plain_fraction, float(heldout_prompts)
    if split == "heldout_prompts" and not 0 < self.heldout_prompts < 1:
      raise ConfigError("split='heldout_prompts' needs 0 < heldout_prompts < 1.")
    self._styled = [s for s in self.styles if not s.is_plain]
    for name, value in (("plain_fraction", plain_fraction), ("random_style_fraction", random_style_fraction)):
      if value is not None and not 0 <= value <= 1:
        raise ConfigError(f"{name}={value}; use a value in [0, 1].")
    if random_style_fraction and not random_style_stream:
      raise ConfigError("random_style_fraction > 0 needs the consumer's own random_style_stream (a nonzero int), "
                        "so its fresh styles never equal an eval held-out style.")
    if random_style_fraction and split == "heldout_prompts":
      raise ConfigError("split='heldout_prompts' draws held-out (content, named style) prompts only; "
                        "set random_style_fraction=0 for it.")
    self.random_style_fraction, self.random_style_stream = float(random_style_fraction), int(random_style_stream)

  def __len__(self) -> int:
    return self.num_examples

  def _pick_style(self, rng: np.random.Generator) -> Style:
    has_plain = len(self._styled) < len(self.styles)
    if self.plain_fraction is not None and has_plain and self._styled:
      return PLAIN_STYLE if rng.random() < self.plain_fraction else self._styled[rng.integers(len(self._styled))]
    return self.styles[rng.integers(len(self.styles))]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if index < 0:
      index += self.num_examples
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self.num_examples} examples.")
    if self.random_style_fraction:  # a fresh held-out-family style (`training_style`) for this share
      rng = np.random.default_rng([self.seed, _SPLITS[self.split], index, 0x5A7])
      if rng.random() < self.random_style_fraction:
        style = training_style(index, self.random_style_stream, self.seed, _SPLITS[self.split])
        return make_example(random_content(rng), style, self.image_size, rng, self.image_dtype, index)
    rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
    want_heldout = self.split == "heldout_prompts"
    while True:  # rejection sampling; deterministic in (seed, split, index)
      content = random_content(rng)
      style = self._pick_style(rng)
      if self.split == "test" or is_heldout_prompt(content, style, self.heldout_prompts) == want_heldout:
        break
    return make_example(content, style, self.image_size, rng, self.image_dtype, index)

  def __repr__(self) -> str:
    return (f"ShapeStyleSource(split={self.split!r}, image_size={self.image_size}, seed={self.seed}, "
            f"styles={len(self.styles)}, num_examples={self.num_examples})")
