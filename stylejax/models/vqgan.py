"""MaskGIT-style VQGAN image tokenizer: encoder -> vector quantizer -> decoder, plus its losses and Task.

Structure follows google-research/maskgit `nets/vqgan_tokenizer.py` (REFERENCE.md §1): no attention,
GroupNorm + swish res blocks, avg-pool downsampling, nearest upsampling + 3x3 conv, a squared-Euclidean
(or cosine) codebook, commitment 0.25 and MaskGIT's entropy loss. Images are NHWC floats in [0, 1].

Param names mirror MaskGIT's auto-generated Flax names (`encoder/ResBlock_3/Conv_1/kernel`,
`quantizer/codebook`, ...) so its msgpack checkpoints map one-to-one; a MaskGIT checkpoint needs
`maskgit_shortcut_quirk=True` (its 1x1 shortcut kernels are [1, 1, C_out, C_out]).

Training with one optax optimizer (the house trainer): the optional PatchGAN discriminator's params live
in the same tree under 'discriminator'; stop-gradients route the generator loss to the VQGAN only and
the hinge discriminator loss to the discriminator only, so one summed loss trains both (see `VQGANTask`).

Small codebooks collapse; three remedies, all optional:
  * `VQGANTask.revive(params, batch, rng)` / `revive_dead_codes`: re-seed codes unused in a batch from
    random encoder features (call it every few hundred steps; `init_codebook_from_batch` seeds all codes);
  * `dead_code_weight`: an always-on loss pulling codes unused in the batch toward their nearest
    (stop-gradient) encoder feature, so a plain optax step revives them with no trainer hook;
  * `entropy_weight` (MaskGIT 0.1) and `quantizer="cosine"` (l2-normalised codes).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stylejax.config import ConfigError
from stylejax.train.task import Task

Array = jax.Array
Dtype = Any
_TRAIN_STYLE_STREAM = 0x70C_0000  # `shapestyle.training_style` stream of the tokenizer's fresh training styles
FeatureFn = Callable[[Array], Any]  # images [B, H, W, 3] in [0, 1] -> array or sequence of arrays

_HIGHEST = jax.lax.Precision.HIGHEST  # argmin over codes must not run at bf16 matmul precision on TPU


# ----------------------------------------------------------------------------------------------
# Building blocks


def num_groups(channels: int, max_groups: int = 32, min_group_channels: int = 4) -> int:
  """Largest group count <= max_groups dividing `channels` with >= `min_group_channels` channels per group.

  32 for every MaskGIT width (>= 128 filters). Narrow CPU-sized models must not get one channel per group:
  that is instance norm, which erases a flat region's absolute color (a 32-filter ShapeStyle tokenizer
  reconstructed every background gray and every shape brown)."""
  limit = max(1, min(max_groups, channels // min_group_channels))
  return next(g for g in range(limit, 0, -1) if channels % g == 0)


def _conv(features: int, kernel: int, name: str, *, use_bias: bool = True, strides: int = 1,
          dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, shard_out: bool = True,
          zero_init: bool = False) -> nn.Conv:
  """`shard_out=False` for the RGB / logit heads, whose 3 or 1 channels no tensor axis divides."""
  # Flax's Conv default, as in MaskGIT; zeros make a residual branch start as the identity.
  init = nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()
  out = "conv_out" if shard_out else None
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides), use_bias=use_bias, dtype=dtype,
                 param_dtype=param_dtype, name=name,
                 kernel_init=nn.with_logical_partitioning(init, (None, None, "conv_in", out)),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (out,)))


def _group_norm(channels: int, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=num_groups(channels), dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def downsample(x: Array) -> Array:
  """2x2 average pool, stride 2: [B, H, W, C] -> [B, H/2, W/2, C] (H, W even)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample(x: Array) -> Array:
  """Nearest-neighbour 2x: [B, H, W, C] -> [B, 2H, 2W, C] (equals jax.image.resize 'nearest')."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _act(x: Array) -> Array:
  return nn.with_logical_constraint(x, ("act_batch", None, None, "act_embed"))


class ResBlock(nn.Module):
  """GN -> swish -> conv3x3 -> GN -> swish -> conv3x3, plus a 1x1 projection when channels change.

  x [B, H, W, C_in] -> [B, H, W, filters]. `maskgit_shortcut_quirk=True` projects the block *output*
  (MaskGIT's code; kernel [1, 1, filters, filters]) instead of the input residual (kernel
  [1, 1, C_in, filters]). The projection is created last either way so it is always `Conv_2`.
  """
  filters: int
  maskgit_shortcut_quirk: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  identity_init: bool = False  # zero last conv: a block added to a trained network starts as the identity

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    residual = x
    h = nn.swish(_group_norm(x.shape[-1], "GroupNorm_0", **kw)(x))
    h = _conv(self.filters, 3, "Conv_0", use_bias=False, **kw)(h)
    h = nn.swish(_group_norm(self.filters, "GroupNorm_1", **kw)(h))
    h = _conv(self.filters, 3, "Conv_1", use_bias=False, zero_init=self.identity_init, **kw)(h)
    if x.shape[-1] != self.filters:
      source = h if self.maskgit_shortcut_quirk else residual
      residual = _conv(self.filters, 1, "Conv_2", use_bias=False, **kw)(source)
    return _act(h + residual)


class _Stack(nn.Module):
  """Shared fields and naming counters of Encoder and Decoder."""
  filters: int = 128
  channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  maskgit_shortcut_quirk: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _res_blocks(self, x: Array, filters: int, start: int) -> tuple[Array, int]:
    block = nn.remat(ResBlock) if self.remat else ResBlock
    for _ in range(self.num_res_blocks):
      x = block(filters, self.maskgit_shortcut_quirk, self.dtype, self.param_dtype, name=f"ResBlock_{start}")(x)
      start += 1
    return x, start


class Encoder(_Stack):
  """images [B, H, W, 3] -> latents [B, H/f, W/f, embedding_dim], f = 2**(len(channel_multipliers)-1)."""
  embedding_dim: int = 256

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = _conv(self.filters, 3, "Conv_0", use_bias=False, **kw)(x.astype(self.dtype))
    n, levels = 0, len(self.channel_multipliers)
    for i, mult in enumerate(self.channel_multipliers):
      x, n = self._res_blocks(x, self.filters * mult, n)
      if i < levels - 1:
        x = downsample(x)
    x, n = self._res_blocks(x, self.filters * self.channel_multipliers[-1], n)
    x = nn.swish(_group_norm(x.shape[-1], "GroupNorm_0", **kw)(x))
    return _act(_conv(self.embedding_dim, 1, "Conv_1", **kw)(x))


class Decoder(_Stack):
  """latents [B, h, w, D] -> images [B, h*f, w*f, output_dim] (unclipped; ~[0, 1] once trained).

  `extra_blocks[i]` identity-initialised res blocks (`Extra_{i}_{j}`) follow level i's blocks (level 0 is
  full resolution): capacity grown onto a trained decoder without renaming or changing its params.
  """
  output_dim: int = 3
  extra_blocks: Sequence[int] = ()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    filters = self.filters * self.channel_multipliers[-1]
    x = _conv(filters, 3, "Conv_0", **kw)(x.astype(self.dtype))
    x, n = self._res_blocks(x, filters, 0)
    conv = 1
    for i in reversed(range(len(self.channel_multipliers))):
      filters = self.filters * self.channel_multipliers[i]
      x, n = self._res_blocks(x, filters, n)
      for j in range(self.extra_blocks[i] if i < len(self.extra_blocks) else 0):
        x = ResBlock(filters, dtype=self.dtype, param_dtype=self.param_dtype, identity_init=True,
                     name=f"Extra_{i}_{j}")(x)
      if i > 0:
        x = _conv(filters, 3, f"Conv_{conv}", **kw)(upsample(x))
        conv += 1
    x = nn.swish(_group_norm(x.shape[-1], "GroupNorm_0", **kw)(x))
    return _conv(self.output_dim, 3, f"Conv_{conv}", shard_out=False, **kw)(x)


# ----------------------------------------------------------------------------------------------
# Quantizer


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + eps)


def squared_distances(z: Array, codes: Array) -> Array:
  """z [N, D], codes [K, D] -> ||z_n - e_k||^2 [N, K] (float32, full precision)."""
  cross = jnp.einsum("nd,kd->nk", z, codes, precision=_HIGHEST)
  return jnp.sum(z * z, -1, keepdims=True) - 2.0 * cross + jnp.sum(codes * codes, -1)[None, :]


def entropy_loss(affinity: Array, temperature: float = 0.01) -> Array:
  """MaskGIT's entropy loss (libml/losses.py, 'softmax' form): mean per-sample entropy minus the
  entropy of the batch-averaged code distribution. affinity [..., K] (-distance or cosine)."""
  logits = affinity.reshape(-1, affinity.shape[-1]) / temperature
  probs = jax.nn.softmax(logits, axis=-1)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  sample_entropy = -jnp.mean(jnp.sum(probs * log_probs, axis=-1))
  avg_probs = jnp.mean(probs, axis=0)
  avg_entropy = -jnp.sum(avg_probs * jnp.log(avg_probs + 1e-5))
  return sample_entropy - avg_entropy


def code_counts(ids: Array, codebook_size: int) -> Array:
  """ids (any shape) -> how often each code occurs [K] float32."""
  return jnp.zeros((codebook_size,), jnp.float32).at[ids.reshape(-1)].add(1.0)


class VectorQuantizer(nn.Module):
  """Nearest-code quantizer with a straight-through estimator.

  kind="euclidean": argmin ||z - e||^2 (MaskGIT). kind="cosine": z and codes l2-normalised, argmax
  cosine (ViT-VQGAN / CoTyle); the decoder then sees unit-norm codes.
  """
  codebook_size: int
  embedding_dim: int
  kind: str = "euclidean"
  entropy_temperature: float = 0.01  # MaskGIT default
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    if self.kind not in ("euclidean", "cosine"):
      raise ConfigError(f"quantizer={self.kind!r}; use 'euclidean' or 'cosine'.")
    init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")  # MaskGIT's codebook init
    # Replicated by default (small; a sharded feature axis makes XLA re-gather it for every lookup).
    self.codebook = self.param("codebook", nn.with_logical_partitioning(init, ("codebook", None)),
                               (self.codebook_size, self.embedding_dim), self.param_dtype)

  def codes(self) -> Array:
    """The codebook as used for lookup [K, D] float32 (unit rows for cosine)."""
    e = jnp.asarray(self.codebook, jnp.float32)
    return l2_normalize(e) if self.kind == "cosine" else e

  def lookup(self, ids: Array) -> Array:
    """ids [...] int -> code vectors [..., D] in `dtype`."""
    return jnp.take(self.codes(), ids, axis=0).astype(self.dtype)

  def __call__(self, z: Array, train: bool = False) -> tuple[Array, Array, dict[str, Array]]:
    """z [B, h, w, D] -> (quantized [B, h, w, D] with straight-through grads, ids [B, h, w] int32, aux).

    aux: commitment_loss ||sg(e) - z||^2 and codebook_loss ||e - sg(z)||^2 (means, unweighted),
    entropy_loss and dead_code_loss (0 unless train), perplexity, codebook_usage.
    """
    lead = z.shape[:-1]
    flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
    codes = self.codes()
    if self.kind == "cosine":
      flat = l2_normalize(flat)
      affinity = jnp.einsum("nd,kd->nk", flat, codes, precision=_HIGHEST)
    else:
      affinity = -squared_distances(flat, codes)
    ids = jnp.argmax(affinity, axis=-1).astype(jnp.int32)
    q = jnp.take(codes, ids, axis=0)
    sg = jax.lax.stop_gradient
    aux = {"commitment_loss": jnp.mean((sg(q) - flat) ** 2),  # VQ-VAE: beta ||sg(e) - z||^2 (beta in the loss)
           "codebook_loss": jnp.mean((q - sg(flat)) ** 2)}    #         + ||e - sg(z)||^2
    counts = code_counts(ids, self.codebook_size)
    probs = counts / counts.sum()
    aux["perplexity"] = jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10)))
    aux["codebook_usage"] = jnp.mean((counts > 0).astype(jnp.float32))
    zero = jnp.zeros((), jnp.float32)
    aux["entropy_loss"] = entropy_loss(affinity, self.entropy_temperature) if train else zero
    if train:
      # Codes nobody picked move toward their nearest (fixed) feature; only the codebook gets this gradient.
      nearest = jnp.min(squared_distances(sg(flat), codes), axis=0)  # [K]
      dead = (counts == 0).astype(jnp.float32)
      aux["dead_code_loss"] = jnp.sum(dead * nearest) / jnp.maximum(dead.sum(), 1.0)
    else:
      aux["dead_code_loss"] = zero
    quantized = flat + sg(q - flat)  # straight-through: forward e, backward identity to z
    return quantized.reshape(lead + (-1,)).astype(self.dtype), ids.reshape(lead), aux


# ----------------------------------------------------------------------------------------------
# The tokenizer


class VQGAN(nn.Module):
  """MaskGIT-style VQGAN tokenizer. Images are NHWC in [0, 1]; f = 2**(len(channel_multipliers)-1).

  Param tree: {'encoder': ..., 'quantizer': {'codebook': [K, D]}, 'decoder': ...} (MaskGIT's layout).
  """
  filters: int = 128
  channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  embedding_dim: int = 256
  codebook_size: int = 1024
  quantizer_kind: str = "euclidean"
  maskgit_shortcut_quirk: bool = False
  entropy_temperature: float = 0.01
  # Muse's decoder fine-tuning (Chang et al. 2023, "Decoder finetuning"): a decoder with more channels /
  # residual layers than the encoder, trained on the frozen encoder's codes. None = the encoder's (MaskGIT).
  decoder_channel_multipliers: Sequence[int] | None = None
  decoder_res_blocks: int | None = None
  decoder_extra_blocks: Sequence[int] = ()  # per level, identity-initialised (Decoder.extra_blocks)
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    dec_mults = tuple(self.decoder_channel_multipliers or self.channel_multipliers)
    if len(dec_mults) != len(self.channel_multipliers):
      raise ConfigError(f"decoder_channel_multipliers {dec_mults} must have as many levels as channel_multipliers "
                        f"{tuple(self.channel_multipliers)} (the same downsampling factor).")
    stack = dict(filters=self.filters, maskgit_shortcut_quirk=self.maskgit_shortcut_quirk,
                 remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = Encoder(embedding_dim=self.embedding_dim, channel_multipliers=tuple(self.channel_multipliers),
                           num_res_blocks=self.num_res_blocks, **stack)
    self.decoder = Decoder(output_dim=3, channel_multipliers=dec_mults,
                           extra_blocks=tuple(self.decoder_extra_blocks),
                           num_res_blocks=self.decoder_res_blocks or self.num_res_blocks, **stack)
    self.quantizer = VectorQuantizer(self.codebook_size, self.embedding_dim, self.quantizer_kind,
                                     self.entropy_temperature, self.dtype, self.param_dtype)

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.channel_multipliers) - 1)

  def _check(self, images: Array) -> None:
    f = self.downsample_factor
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] % f or images.shape[2] % f:
      raise ValueError(f"VQGAN expects images [B, H, W, 3] with H, W divisible by {f}; got {images.shape}.")

  def encode_features(self, images: Array) -> Array:
    """images [B, H, W, 3] -> pre-quantization latents z [B, H/f, W/f, D]."""
    self._check(images)
    return self.encoder(images)

  def encode(self, images: Array) -> tuple[Array, Array]:
    """images [B, H, W, 3] in [0, 1] -> (ids [B, h, w] int32, quantized latents [B, h, w, D])."""
    quantized, ids, _ = self.quantizer(self.encode_features(images))
    return ids, quantized

  def decode(self, quantized: Array) -> Array:
    """latents [B, h, w, D] -> raw decoder output [B, h*f, w*f, 3] float32 (not clipped)."""
    return self.decoder(quantized).astype(jnp.float32)

  def decode_ids(self, ids: Array) -> Array:
    """ids [B, h, w] -> images [B, h*f, w*f, 3] float32, clipped to [0, 1]."""
    return jnp.clip(self.decode(self.quantizer.lookup(ids)), 0.0, 1.0)

  def __call__(self, images: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
    """images [B, H, W, 3] -> (reconstruction [B, H, W, 3] float32 unclipped, aux of scalars)."""
    quantized, _, aux = self.quantizer(self.encode_features(images), train=train)
    return self.decode(quantized), aux


# ----------------------------------------------------------------------------------------------
# Discriminator and losses


class PatchDiscriminator(nn.Module):
  """PatchGAN (pix2pix-style): images [B, H, W, 3] in [0, 1] -> patch logits [B, H/2^n, W/2^n, 1]."""
  filters: int = 64
  num_layers: int = 2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = images.astype(self.dtype) * 2.0 - 1.0
    x = nn.leaky_relu(_conv(self.filters, 4, "Conv_0", strides=2, **kw)(x), 0.2)
    for i in range(1, self.num_layers + 1):
      features = self.filters * min(2 ** i, 8)
      x = _conv(features, 4, f"Conv_{i}", strides=2 if i < self.num_layers else 1, use_bias=False, **kw)(x)
      x = nn.leaky_relu(_group_norm(features, f"GroupNorm_{i}", **kw)(x), 0.2)
    return _conv(1, 4, f"Conv_{self.num_layers + 1}", shard_out=False, **kw)(x).astype(jnp.float32)


def reconstruction_loss(recon: Array, target: Array, kind: str = "l1", weight: Array | None = None) -> Array:
  """Mean L1 or L2 pixel error; `weight` [B, H, W] makes it a weighted mean over pixels."""
  if kind == "l1":
    err = jnp.abs(recon - target)
  elif kind == "l2":
    err = (recon - target) ** 2
  else:
    raise ConfigError(f"recon_loss={kind!r}; use 'l1' or 'l2'.")
  if weight is None:
    return jnp.mean(err)
  return jnp.mean(err * weight[..., None]) / jnp.mean(weight)


def hinge_discriminator_loss(real_logits: Array, fake_logits: Array) -> Array:
  """E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_generator_loss(fake_logits: Array) -> Array:
  """-E[D(x_hat)]."""
  return -jnp.mean(fake_logits)


def perceptual_loss(feature_fn: FeatureFn, recon: Array, target: Array,
                    layer_weights: Sequence[float] | None = None) -> Array:
  """sum_l w_l * mean((phi_l(x_hat) - sg(phi_l(x)))^2) for a user feature extractor phi (any callable)."""
  fake, real = feature_fn(recon), feature_fn(target)
  fake = list(fake) if isinstance(fake, (list, tuple)) else [fake]
  real = list(real) if isinstance(real, (list, tuple)) else [real]
  weights = list(layer_weights) if layer_weights is not None else [1.0] * len(fake)
  if not len(fake) == len(real) == len(weights):
    raise ConfigError(f"perceptual features: {len(fake)} layers but {len(weights)} weights.")
  terms = [w * jnp.mean((a.astype(jnp.float32) - jax.lax.stop_gradient(b).astype(jnp.float32)) ** 2)
           for w, a, b in zip(weights, fake, real)]
  return sum(terms)


# ----------------------------------------------------------------------------------------------
# Dead-code revival


def revive_dead_codes(codebook: Array, usage_counts: Array, batch_features: Array, rng: Array,
                      threshold: float) -> Array:
  """Re-seeds every code whose usage is below `threshold` with a random encoder feature.

  codebook [K, D], usage_counts [K] (batch counts or an EMA), batch_features [N, D] -> codebook [K, D].
  Features are drawn without replacement when N >= K, so revived codes start distinct. Pure, jittable.
  """
  k, n = codebook.shape[0], batch_features.shape[0]
  if n >= k:
    pick = jax.random.permutation(rng, n)[:k]
  else:
    pick = jax.random.randint(rng, (k,), 0, n)
  seeds = batch_features[pick].astype(codebook.dtype)
  dead = (usage_counts < threshold)[:, None]
  return jnp.where(dead, seeds, codebook)


def merge_codebook(codebook: np.ndarray, ids: np.ndarray, num_codes: int, seed: int = 0,
                   iters: int = 30) -> np.ndarray:
  """Shrinks a trained codebook [K, D] to [num_codes, D] by k-means over the code vectors of `ids`.

  ids: token ids of representative images (any shape); each code weighs by how often it is used, so
  unused codes vanish and near-duplicate codes (one visual patch spread over many ids by the entropy
  and dead-code terms) merge into one. k-means++ init (Arthur & Vassilvitskii 2007), `seed` fixed, so
  the result is deterministic. The encoder and decoder are unchanged: re-quantizing with the merged
  codes is nearest-centroid lookup. Host-side numpy/scipy (a one-off build step, not a train step).
  """
  from scipy.cluster.vq import kmeans2
  ids = np.asarray(ids).reshape(-1)
  used = len(np.unique(ids))
  if used < num_codes:
    raise ValueError(f"only {used} codes are used by these ids; merging to {num_codes} needs at least that "
                     f"many distinct codes (encode more images).")
  centroids, _ = kmeans2(np.asarray(codebook, np.float64)[ids], num_codes, iter=iters, minit="++", seed=seed)
  return centroids.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Data: a tiny deterministic procedural world (until ShapeStyle is wired in)


class ProceduralImageSource:
  """Example i: coloured rectangles and circles on a plain background, from (seed, i) alone.

  Returns {"image": float32 [S, S, 3] in [0, 1]}.
  """

  def __init__(self, num_examples: int, image_size: int, seed: int = 0):
    self.num_examples, self.image_size, self.seed = int(num_examples), int(image_size), int(seed)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= int(index) < self.num_examples:
      raise IndexError(f"index {index} out of range [0, {self.num_examples}).")
    rng = np.random.default_rng((self.seed, int(index)))
    s = self.image_size
    image = np.broadcast_to(rng.uniform(0.0, 1.0, 3), (s, s, 3)).copy()
    yy, xx = np.mgrid[0:s, 0:s] + 0.5
    for _ in range(int(rng.integers(1, 4))):
      colour = rng.uniform(0.0, 1.0, 3)
      cy, cx = rng.uniform(0.15 * s, 0.85 * s, 2)
      ry, rx = rng.uniform(0.1 * s, 0.35 * s, 2)
      if rng.random() < 0.5:
        mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
      else:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= ry ** 2
      image[mask] = colour
    return {"image": image.astype(np.float32)}


class _ImageAdapter:
  """Wraps a source so every example is {"image": float32 [H, W, 3] in [0, 1]} (uint8 is rescaled), plus
  the source's foreground "mask" [H, W] as float32 when it has one (ShapeStyle's shape mask)."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    example = self.source[index]
    image = np.asarray(example["image"])
    if image.dtype == np.uint8:
      image = image.astype(np.float32) / 255.0
    out = {"image": image.astype(np.float32)}
    if "mask" in example:
      out["mask"] = np.asarray(example["mask"], np.float32)
    return out


# ----------------------------------------------------------------------------------------------
# Task


def _clip_perceptual_fn(spec: Any) -> FeatureFn:
  """config.perceptual {workdir | config, layers}: a frozen CLIP vision tower as the perceptual network (the
  LPIPS analogue where no VGG weights can be downloaded; `clip.perceptual_features`)."""
  from stylejax.models import clip  # lazy: only a perceptual run needs the CLIP
  from stylejax.train.trainer import load_part  # lazy: avoids a models <-> train import cycle
  task, params = load_part(workdir=spec.get("workdir", ""), config=spec.get("config", ""))
  if not isinstance(getattr(task, "model", None), clip.CLIPModel):
    raise ConfigError(f"config.perceptual must name a CLIP run, got a {type(task).__name__} one.")
  layers, depth = tuple(spec.get("layers", (0, 1, 2))), task.model.config.vision.num_hidden_layers
  if not layers or any(not -depth - 1 <= i <= depth for i in layers):
    raise ConfigError(f"config.perceptual.layers={list(layers)}: the CLIP has hidden states 0..{depth}; "
                      "pick from them.")
  return clip.perceptual_features(task.model, params, layers)


class VQGANTask(Task):
  """Trains `VQGAN` with reconstruction + VQ (+ entropy, dead-code, PatchGAN, perceptual) losses.

  config.model: filters, channel_multipliers, num_res_blocks, embedding_dim, codebook_size,
    quantizer ("euclidean"|"cosine"), maskgit_shortcut_quirk, recon_loss ("l1"|"l2"), commitment (0.25),
    entropy_weight (0; MaskGIT 0.1), gan_weight (0 = no discriminator), image_size; optional:
    entropy_temperature (0.01), dead_code_weight (0), perceptual_weight (0), foreground_weight (0: pixels
    under the data's shape mask weigh 1 + w in the reconstruction loss), disc_filters (64),
    disc_layers (2), disc_weight (1.0), revive_threshold (1.0); Muse's decoder fine-tuning:
    decoder_channel_multipliers ([] = channel_multipliers), decoder_res_blocks (0 = num_res_blocks),
    decoder_extra_blocks (per level, identity-initialised: grows a trained decoder),
    frozen_codes (False; True trains the decoder on stop-gradient codes, with the encoder and codebook
    also in optimizer.freeze).
  config.data: name ("procedural"|"shapestyle"), image_size, num_examples, seed; shapestyle: styles,
    random_style_fraction (0: that share of images in fresh held-out-family styles).

  GAN with one optimizer: loss = G-terms + gan_weight * hinge_G(D_sg(x_hat)) + disc_weight * hinge_D(D(x),
  D(sg(x_hat))), where D_sg uses stop-gradient discriminator params. The VQGAN gets gradients only from
  the G-terms and the discriminator only from hinge_D, so a single step updates both (same lr).
  `perceptual_fn` (constructor argument): images [B, H, W, 3] in [0, 1] -> features (array or list); without
  it, `config.perceptual` {workdir | config, layers (0, 1, 2)} names a frozen CLIP whose vision hidden states
  are the features (LPIPS-normalised, `clip.perceptual_features`).
  """

  def __init__(self, config: ml_collections.ConfigDict, perceptual_fn: FeatureFn | None = None,
               perceptual_layer_weights: Sequence[float] | None = None):
    super().__init__(config)
    m = config.model
    dtype = jnp.dtype(config.get("compute_dtype", "float32"))
    self.model = VQGAN(
        filters=m.filters, channel_multipliers=tuple(m.channel_multipliers), num_res_blocks=m.num_res_blocks,
        embedding_dim=m.embedding_dim, codebook_size=m.codebook_size, quantizer_kind=m.quantizer,
        maskgit_shortcut_quirk=m.maskgit_shortcut_quirk, entropy_temperature=m.get("entropy_temperature", 0.01),
        decoder_channel_multipliers=tuple(m.get("decoder_channel_multipliers", None) or ()) or None,
        decoder_res_blocks=m.get("decoder_res_blocks", None) or None,
        decoder_extra_blocks=tuple(m.get("decoder_extra_blocks", None) or ()),
        remat=bool(config.get("remat", False)), dtype=dtype)
    # Decoder fine-tuning: the encoder and codebook are frozen (optimizer.freeze), and stopping gradients at
    # the codes keeps XLA from computing the encoder's backward pass at all.
    self.frozen_codes = bool(m.get("frozen_codes", False))
    self.gan_weight = float(m.get("gan_weight", 0.0))
    self.discriminator = (PatchDiscriminator(m.get("disc_filters", 64), m.get("disc_layers", 2), dtype=dtype)
                          if self.gan_weight > 0 else None)
    self.perceptual_weight = float(m.get("perceptual_weight", 0.0))
    spec = config.get("perceptual") or {}
    # Loaded on the first loss, so a trained run used as a frozen tokenizer never loads its CLIP.
    self._perceptual_spec = spec if (spec.get("workdir") or spec.get("config")) else None
    if self.perceptual_weight > 0 and perceptual_fn is None and self._perceptual_spec is None:
      raise ConfigError("model.perceptual_weight > 0 needs a feature extractor: set config.perceptual.workdir to a "
                        "CLIP run (e.g. shapestyle:clip_style), or VQGANTask(config, perceptual_fn=fn).")
    self.perceptual_fn = perceptual_fn
    self.perceptual_layer_weights = perceptual_layer_weights

  def _image_size(self) -> int:
    return int(self.config.model.get("image_size", None) or self.config.data.image_size)

  def init(self, rng: jax.Array) -> dict[str, Any]:
    """Boxed params {'encoder', 'quantizer', 'decoder'[, 'discriminator']}."""
    vq_rng, d_rng = jax.random.split(rng)
    s = self._image_size()
    dummy = jnp.zeros((1, s, s, 3), jnp.float32)
    params = dict(self.model.init(vq_rng, dummy)["params"])
    if self.discriminator is not None:
      params["discriminator"] = self.discriminator.init(d_rng, dummy)["params"]
    return params

  @staticmethod
  def vqgan_params(params: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer's own params (everything but the discriminator)."""
    return {k: v for k, v in params.items() if k != "discriminator"}

  def exported_params(self, params: dict[str, Any]) -> dict[str, Any]:
    return self.vqgan_params(params)

  def loss(self, params, batch, rng):
    m = self.config.model
    images = batch["image"].astype(jnp.float32)
    if self.frozen_codes:
      vq = jax.lax.stop_gradient(self.vqgan_params(params))
      _, quantized = self.model.apply({"params": vq}, images, method=VQGAN.encode)
      recon = self.model.apply({"params": self.vqgan_params(params)}, quantized, method=VQGAN.decode)
      zero = jnp.zeros((), jnp.float32)
      aux = {k: zero for k in ("commitment_loss", "codebook_loss", "entropy_loss", "dead_code_loss")}
    else:
      recon, aux = self.model.apply({"params": self.vqgan_params(params)}, images, train=True)
    fg = float(m.get("foreground_weight", 0.0))
    if fg > 0 and "mask" not in batch:
      raise ConfigError("model.foreground_weight > 0 needs a data source with a foreground 'mask' "
                        "(config.data.name='shapestyle'); set it to 0 for other data.")
    weight = 1.0 + fg * batch["mask"].astype(jnp.float32) if fg > 0 else None
    rec = reconstruction_loss(recon, images, m.get("recon_loss", "l1"), weight)
    total = (rec + m.get("commitment", 0.25) * aux["commitment_loss"] + aux["codebook_loss"]
             + m.get("entropy_weight", 0.0) * aux["entropy_loss"]
             + m.get("dead_code_weight", 0.0) * aux["dead_code_loss"])
    metrics = dict(aux, recon_loss=rec)
    if self.perceptual_weight > 0:
      if self.perceptual_fn is None:
        with jax.ensure_compile_time_eval():  # first call is inside the jitted loss: load concretely
          self.perceptual_fn = _clip_perceptual_fn(self._perceptual_spec)
      p = perceptual_loss(self.perceptual_fn, recon, images, self.perceptual_layer_weights)
      total += self.perceptual_weight * p
      metrics["perceptual_loss"] = p
    if self.discriminator is not None:
      d_params = params["discriminator"]
      apply_d = lambda p, x: self.discriminator.apply({"params": p}, x)
      g_loss = hinge_generator_loss(apply_d(jax.lax.stop_gradient(d_params), recon))
      d_loss = hinge_discriminator_loss(apply_d(d_params, images), apply_d(d_params, jax.lax.stop_gradient(recon)))
      total += self.gan_weight * g_loss + m.get("disc_weight", 1.0) * d_loss
      metrics.update(gan_generator_loss=g_loss, gan_discriminator_loss=d_loss)
    return total, metrics

  def revive(self, params: dict[str, Any], batch: dict[str, jax.Array], rng: jax.Array,
             threshold: float | None = None) -> dict[str, Any]:
    """Codes used fewer than `threshold` times in `batch` are re-seeded from its encoder features.

    Pure and jittable (unboxed params in, unboxed params out). Call it every few hundred steps with a
    batch large enough that a healthy code shows up (batch * h * w >> codebook_size).
    """
    if threshold is None:
      threshold = float(self.config.model.get("revive_threshold", 1.0))
    vq = self.vqgan_params(params)
    z = self.model.apply({"params": vq}, batch["image"].astype(jnp.float32), method=VQGAN.encode_features)
    _, ids, _ = self.model.apply({"params": vq}, z, method=lambda mdl, x: mdl.quantizer(x))
    counts = code_counts(ids, self.config.model.codebook_size)
    features = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
    codebook = params["quantizer"]["codebook"]
    new_codebook = revive_dead_codes(codebook, counts, features, rng, threshold)
    return dict(params, quantizer=dict(params["quantizer"], codebook=new_codebook))

  def init_codebook_from_batch(self, params: dict[str, Any], batch: dict[str, jax.Array],
                               rng: jax.Array) -> dict[str, Any]:
    """Seeds every code from the batch's encoder features (k-means++-free data init)."""
    return self.revive(params, batch, rng, threshold=float("inf"))

  def source(self, split: str = "train"):
    d = self.config.data
    name = d.get("name", "procedural")
    seed = int(d.get("seed", 0)) + (0 if split == "train" else 1)
    if name == "procedural":
      return ProceduralImageSource(d.num_examples, d.image_size, seed)
    if name == "shapestyle":
      try:
        shapestyle = importlib.import_module("stylejax.data.shapestyle")  # lazy: only this branch needs it
      except ImportError as e:
        raise ConfigError(f"config.data.name='shapestyle' but stylejax.data.shapestyle cannot be imported ({e}); "
                          f"install the package fully or use config.data.name='procedural'.") from None
      # ShapeStyle keeps train and test on disjoint RNG streams itself, so it gets the base seed.
      return _ImageAdapter(shapestyle.ShapeStyleSource(
          split=split, image_size=d.image_size, seed=int(d.get("seed", 0)), num_examples=d.num_examples,
          styles=d.get("styles", "named+plain"), image_dtype="float32",
          random_style_fraction=d.get("random_style_fraction", 0.0), random_style_stream=_TRAIN_STYLE_STREAM))
    raise ConfigError(f"config.data.name={name!r}; use 'procedural' or 'shapestyle'.")
