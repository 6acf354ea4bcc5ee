"""ShapeStyle as a TFDS dataset (array_record files), readable without TensorFlow.

Features are only `Tensor` / `Scalar` / `Text`, which TFDS encodes and decodes with numpy, so
building and reading need no TensorFlow. Read back with `tfds.data_source` (or `load_source`)
and feed the result to `stylejax.data.pipeline.make_pipeline` like any random-access source.

    builder = build("/tmp/tfds", "tiny")                  # writes shape_style/tiny/1.0.0/*.array_record
    train = tfds.data_source("shape_style/tiny", data_dir="/tmp/tfds", split="train")
    custom = build("/tmp/tfds", ShapeStyleConfig(name="big64", image_size=64, num_train=100_000))

Example i of a split is `ShapeStyleSource(split, image_size, seed, styles)[i]` (shuffling is
disabled, so file order is index order); text fields come back as bytes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from stylejax.data import shapestyle


@dataclasses.dataclass
class ShapeStyleConfig(tfds.core.BuilderConfig):
  """Sizes of a ShapeStyle build; `styles` as in ShapeStyleSource ("named+plain", "heldout", ...)."""
  image_size: int = 32
  num_train: int = 512
  num_test: int = 128
  seed: int = 0
  styles: str = "named+plain"


class ShapeStyle(tfds.core.GeneratorBasedBuilder):
  """Procedural shapes x styles with labels, style parameters and shape masks (see stylejax.data.shapestyle)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      ShapeStyleConfig(name="tiny", description="32x32, 512 train / 128 test.", image_size=32,
                       num_train=512, num_test=128),
      ShapeStyleConfig(name="small", description="64x64, 4096 train / 512 test.", image_size=64,
                       num_train=4096, num_test=512),
      ShapeStyleConfig(name="heldout_tiny", description="32x32 held-out styles only, for one-shot eval.",
                       image_size=32, num_train=128, num_test=128, styles="heldout"),
  ]
  DEFAULT_CONFIG_NAME = "tiny"

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup touches the optional `importlib_resources` backport for package modules.
    return epath.Path(__file__)

  def __init__(self, *, file_format: Any = "array_record", **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    scalar = lambda dtype: tfds.features.Scalar(dtype=dtype)
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
        "mask": tfds.features.Tensor(shape=(s, s), dtype=np.uint8),
        "caption": tfds.features.Text(),
        "content_caption": tfds.features.Text(),
        "style_descriptor": tfds.features.Text(),
        "shape": scalar(np.int32),
        "color": scalar(np.int32),
        "count": scalar(np.int32),
        "style_id": scalar(np.int32),
        "style_params": tfds.features.Tensor(shape=(shapestyle.STYLE_PARAM_DIM,), dtype=np.float32),
        "index": scalar(np.int64),
    })
    # DatasetInfo directly: `dataset_info_from_configs` would read metadata files from this package's folder.
    return tfds.core.DatasetInfo(builder=self, description=shapestyle.__doc__.split("\n\n")[0],
                                 features=features, disable_shuffling=True,
                                 supervised_keys=None, homepage="https://github.com/stylejax")

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train), "test": self._generate_examples("test", c.num_test)}

  def _generate_examples(self, split: str, num_examples: int) -> Iterator[tuple[int, dict[str, Any]]]:
    c = self.builder_config
    source = shapestyle.ShapeStyleSource(split, image_size=c.image_size, seed=c.seed, styles=c.styles,
                                         num_examples=num_examples)
    for i in range(num_examples):
      ex = source[i]
      yield i, {k: (str(v) if np.asarray(v).dtype.kind == "U" else v) for k, v in ex.items()}


def build(data_dir: str, config: str | ShapeStyleConfig = "tiny", **overrides: Any) -> ShapeStyle:
  """Generates (once) and returns the prepared builder; `overrides` replace fields of a named config."""
  if isinstance(config, str):
    named = {c.name: c for c in ShapeStyle.BUILDER_CONFIGS}
    if config not in named:
      raise ValueError(f"unknown ShapeStyle config {config!r}; use one of {list(named)} or a ShapeStyleConfig.")
    config = named[config]
  if overrides:
    if "name" not in overrides:
      raise ValueError("overriding a named config changes its data; also pass name='...' for the new build.")
    config = dataclasses.replace(config, **overrides)
  builder = ShapeStyle(config=config, data_dir=data_dir)
  builder.download_and_prepare()
  return builder


def load_source(data_dir: str, split: str = "train", config: str | ShapeStyleConfig = "tiny") -> Any:
  """A prepared split as a random-access source (same as `tfds.data_source`), for grain."""
  if isinstance(config, str):
    return tfds.data_source(f"shape_style/{config}", data_dir=data_dir, split=split)
  return ShapeStyle(config=config, data_dir=data_dir).as_data_source(split=split)
