"""The smallest real task: an MLP classifier on Gaussian clusters.

It proves the trainer end to end (sharding, freezing, accumulation, checkpoints, resume) in
seconds, and stays as the fixture of the trainer's tests. Every weight carries logical axis
names, so meshes with fsdp and tensor axes really split it.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stylejax.train.task import Task


class ToyMLP(nn.Module):
  """x [B, D_in] -> logits [B, C]."""
  hidden: int
  depth: int
  num_classes: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.lecun_normal()
    x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=nn.with_logical_partitioning(init, ("conv_in", "embed")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), name="embed")(x)
    for i in range(self.depth):
      h = nn.Dense(4 * self.hidden, dtype=self.dtype, name=f"block{i}_in",
                   kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(x)
      h = nn.with_logical_constraint(nn.gelu(h), ("act_batch", "act_mlp"))
      x = x + nn.Dense(self.hidden, dtype=self.dtype, name=f"block{i}_out",
                       kernel_init=nn.with_logical_partitioning(init, ("mlp", "embed")),
                       bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(h)
      x = nn.with_logical_constraint(x, ("act_batch", "act_embed"))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                    kernel_init=nn.with_logical_partitioning(init, ("embed", "vocab")),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)))(x).astype(jnp.float32)


class ClusterSource:
  """Example i: a point near one of `num_classes` fixed centres, labelled by the centre."""

  def __init__(self, num_examples: int, dim: int, num_classes: int, seed: int):
    self.num_examples, self.dim, self.num_classes, self.seed = num_examples, dim, num_classes, seed
    self.centres = np.random.default_rng(seed).normal(size=(num_classes, dim)).astype(np.float32) * 2

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng((self.seed, int(index)))
    label = int(rng.integers(self.num_classes))
    x = self.centres[label] + rng.normal(size=self.dim).astype(np.float32)
    return {"x": x.astype(np.float32), "label": np.int32(label)}


class ToyTask(Task):
  """Cross-entropy classification with `ToyMLP`."""

  def __init__(self, config):
    super().__init__(config)
    m = config.model
    self.model = ToyMLP(m.hidden, m.depth, m.num_classes, dtype=jnp.dtype(config.compute_dtype))

  def init(self, rng):
    return self.model.init(rng, jnp.zeros((1, self.config.model.input_dim)))["params"]

  def loss(self, params, batch, rng):
    logits = self.model.apply({"params": params}, batch["x"])
    labels = batch["label"]
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, {"accuracy": accuracy}

  def source(self, split="train"):
    d, m = self.config.data, self.config.model
    seed = d.seed + (0 if split == "train" else 1)
    return ClusterSource(d.num_examples, m.input_dim, m.num_classes, seed)

  def flops_per_example(self):
    m = self.config.model
    forward = 2 * (m.input_dim * m.hidden + m.depth * 8 * m.hidden * m.hidden + m.hidden * m.num_classes)
    return 3.0 * forward
