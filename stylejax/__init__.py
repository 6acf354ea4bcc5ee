"""stylejax: style-aligned image generation (StyleDrop, StyleAR, CoTyle, InstantStyle) in JAX/Flax.

Notebook API (imports are lazy, so `import stylejax` stays cheap):

  pipe = stylejax.load("shapestyle:base")                       # a MusePipeline
  style = stylejax.styledrop.tune("shapestyle:base", image, "watercolor", rounds=2)
  images = style.generate(["two red stars"], style_guidance=2.0, content_guidance=5.0)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"


def load(workdir: str) -> Any:
  """A trained workdir or shipped name -> a ready sampler: `StyleDrop` for StyleDrop workdirs, else
  `MusePipeline` (text-to-image Muse / class-conditional MaskGIT)."""
  from stylejax.methods import styledrop as _styledrop
  if _styledrop.is_styledrop_workdir(workdir):
    return _styledrop.load(workdir)
  from stylejax.models.muse_pipeline import MusePipeline
  return MusePipeline.load(workdir)


def __getattr__(name: str) -> Any:
  if name in ("styledrop",):
    return importlib.import_module(f"stylejax.methods.{name}")
  raise AttributeError(f"module 'stylejax' has no attribute {name!r}")
