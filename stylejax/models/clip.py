"""CLIP (Radford et al. 2021) in Flax linen, laid out exactly like Hugging Face's `CLIPModel`.

Module and parameter names follow transformers' `modeling_clip.py` (`text_model.encoder.layers_0.
self_attn.q_proj`, `vision_model.pre_layrnorm`, ...) so `stylejax.weights.hf_clip` converts
checkpoints with a flat, explicit key map; only leaf names differ (`kernel`/`scale`/`embedding` for
HF's `weight`). Layers are unrolled (no scan) to keep HF's per-layer names.

Shapes: token ids [B, L] int32; pixels [B, H, W, 3] NHWC, already normalised (see
`preprocess_images`); hidden states [B, T, D]; features [B, P] (P = projection_dim).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from stylejax.config import ConfigError

# OpenAI CLIP pixel statistics (the `CLIPImageProcessor` defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)



# ----------------------------------------------------------------------------------- configs
@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """Text tower. Defaults are HF's `CLIPTextConfig` defaults (ViT-B/32 text side)."""
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  pad_token_id: int = 1
  bos_token_id: int = 49406
  eos_token_id: int = 49407
  initializer_range: float = 0.02
  initializer_factor: float = 1.0


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """Vision tower. Defaults are HF's `CLIPVisionConfig` defaults (ViT-B/32)."""
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int = 224
  patch_size: int = 32
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  initializer_range: float = 0.02
  initializer_factor: float = 1.0
  # Not in HF: widths of stride-2 3x3 conv layers before a (patch_size / 2**len) patch embedding, a convolutional
  # stem (Xiao et al. 2021, "Early Convolutions Help Transformers See Better"); () = HF's patchify stem.
  conv_stem: tuple[int, ...] = ()

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Whole model; `from_hf_dict`/`to_hf_dict` read and write HF's config.json layout."""
  text: CLIPTextConfig = CLIPTextConfig()
  vision: CLIPVisionConfig = CLIPVisionConfig()
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592  # log(1 / 0.07), CLIP paper's initial temperature
  initializer_factor: float = 1.0

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> "CLIPConfig":
    """Builds from a parsed HF `config.json` of a `CLIPModel` (missing keys take HF defaults)."""
    def sub(klass, raw):
      names = {f.name for f in dataclasses.fields(klass)}
      return klass(**{k: tuple(v) if isinstance(v, list) else v for k, v in (raw or {}).items() if k in names})
    top = {k: d[k] for k in ("projection_dim", "logit_scale_init_value", "initializer_factor") if k in d}
    return cls(text=sub(CLIPTextConfig, d.get("text_config")), vision=sub(CLIPVisionConfig, d.get("vision_config")),
               **top)

  def to_hf_dict(self) -> dict[str, Any]:
    """The `config.json` transformers' `CLIPModel.from_pretrained` reads."""
    if self.vision.conv_stem:
      raise ValueError("a CLIP with a conv_stem has no Hugging Face equivalent; export one with conv_stem=().")
    text = dict(dataclasses.asdict(self.text), model_type="clip_text_model", projection_dim=self.projection_dim)
    vision = dict(dataclasses.asdict(self.vision), model_type="clip_vision_model",
                  projection_dim=self.projection_dim)
    return {"architectures": ["CLIPModel"], "model_type": "clip", "text_config": text, "vision_config": vision,
            "projection_dim": self.projection_dim, "logit_scale_init_value": self.logit_scale_init_value,
            "initializer_factor": self.initializer_factor}

  @classmethod
  def tiny(cls, vocab_size: int = 100, hidden: int = 32, layers: int = 2, heads: int = 4, image_size: int = 32,
           patch_size: int = 8, projection_dim: int = 16, max_len: int = 16, eos_token_id: int = 1,
           hidden_act: str = "quick_gelu", conv_stem: tuple[int, ...] = ()) -> "CLIPConfig":
    """A small config for tests and the ShapeStyle world."""
    text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_len,
                          hidden_act=hidden_act, pad_token_id=2, bos_token_id=0, eos_token_id=eos_token_id)
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
                              hidden_act=hidden_act, conv_stem=tuple(conv_stem))
    return cls(text=text, vision=vision, projection_dim=projection_dim)


# ------------------------------------------------------------------------------- activations
def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI CLIP's sigmoid GELU approximation: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def _act(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ConfigError(f"hidden_act {name!r} is not supported; use one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def _init(init_fn, names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(init_fn, names)


_normal = nn.initializers.normal
_zeros = nn.initializers.zeros
_ones = nn.initializers.ones


def _dense(features: int, names: tuple[str | None, str | None], std: float, name: str, dtype, param_dtype,
           use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=_init(_normal(std), names), bias_init=_init(_zeros, (names[1],)))


def _layer_norm(eps: float, name: str, dtype, param_dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=_init(_ones, ("norm",)), bias_init=_init(_zeros, ("norm",)))


# ----------------------------------------------------------------------------------- modules
class CLIPAttention(nn.Module):
  """Multi-head self-attention with HF's q/k/v/out_proj (2-D kernels [D, D], with bias)."""
  hidden_size: int
  num_heads: int
  num_layers: int  # for HF's depth-scaled init
  factor: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x [B, T, D]; mask bool [B, 1, T, T] (True = attend) or None -> [B, T, D]."""
    d, h = self.hidden_size, self.num_heads
    if d % h:
      raise ConfigError(f"hidden_size {d} is not divisible by num_attention_heads {h}.")
    in_std = d ** -0.5 * (2 * self.num_layers) ** -0.5 * self.factor  # HF CLIP init
    out_std = d ** -0.5 * self.factor
    proj = lambda name, std, names: _dense(d, names, std, name, self.dtype, self.param_dtype)
    q = proj("q_proj", in_std, ("embed", "heads"))(x)
    k = proj("k_proj", in_std, ("embed", "heads"))(x)
    v = proj("v_proj", in_std, ("embed", "heads"))(x)
    split = lambda t: nn.with_logical_constraint(
        t.reshape(*t.shape[:-1], h, d // h), ("act_batch", "act_length", "act_heads", "act_kv"))
    out = jax.nn.dot_product_attention(split(q), split(k), split(v), mask=mask)  # scale 1/sqrt(d_head)
    out = out.reshape(*x.shape[:-1], d)
    return proj("out_proj", out_std, ("heads", "embed"))(out)


class CLIPMLP(nn.Module):
  hidden_size: int
  intermediate_size: int
  hidden_act: str
  num_layers: int
  factor: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, T, D]."""
    d = self.hidden_size
    in_std = d ** -0.5 * (2 * self.num_layers) ** -0.5 * self.factor
    fc_std = (2 * d) ** -0.5 * self.factor
    x = _dense(self.intermediate_size, ("embed", "mlp"), fc_std, "fc1", self.dtype, self.param_dtype)(x)
    x = nn.with_logical_constraint(_act(self.hidden_act)(x), ("act_batch", "act_length", "act_mlp"))
    return _dense(d, ("mlp", "embed"), in_std, "fc2", self.dtype, self.param_dtype)(x)


class CLIPEncoderLayer(nn.Module):
  """Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x))."""
  cfg: CLIPTextConfig | CLIPVisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _layer_norm(c.layer_norm_eps, "layer_norm1", **kw)(x)
    x = x + CLIPAttention(c.hidden_size, c.num_attention_heads, c.num_hidden_layers, c.initializer_factor,
                          name="self_attn", **kw)(h, mask)
    h = _layer_norm(c.layer_norm_eps, "layer_norm2", **kw)(x)
    x = x + CLIPMLP(c.hidden_size, c.intermediate_size, c.hidden_act, c.num_hidden_layers, c.initializer_factor,
                    name="mlp", **kw)(h)
    return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))


class CLIPEncoder(nn.Module):
  """Stack of `layers_i`; returns every hidden state like HF's `output_hidden_states`."""
  cfg: CLIPTextConfig | CLIPVisionConfig
  remat: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> list[jax.Array]:
    """x [B, T, D] -> [x, layer_1(x), ..., layer_N(...)] (N + 1 arrays [B, T, D])."""
    layer_cls = nn.remat(CLIPEncoderLayer) if self.remat else CLIPEncoderLayer
    states = [x]
    for i in range(self.cfg.num_hidden_layers):
      x = layer_cls(self.cfg, dtype=self.dtype, param_dtype=self.param_dtype, name=f"layers_{i}")(x, mask)
      states.append(x)
    return states


class CLIPTextEmbeddings(nn.Module):
  cfg: CLIPTextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    """ids [B, L] -> token + position embeddings [B, L, D]."""
    c = self.cfg
    if ids.shape[-1] > c.max_position_embeddings:
      raise ValueError(f"text length {ids.shape[-1]} exceeds max_position_embeddings {c.max_position_embeddings}.")
    f = c.initializer_factor
    tok = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                   embedding_init=_init(_normal(0.02 * f), ("vocab", "embed")), name="token_embedding")
    pos = nn.Embed(c.max_position_embeddings, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                   embedding_init=_init(_normal(0.02 * f), (None, "embed")), name="position_embedding")
    return tok(ids) + pos(jnp.arange(ids.shape[-1]))[None]


class CLIPVisionEmbeddings(nn.Module):
  cfg: CLIPVisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    """pixels [B, H, W, C] -> [class; patches] + positions, [B, 1 + patches, D]."""
    c = self.cfg
    if pixels.shape[1:3] != (c.image_size, c.image_size):
      raise ValueError(f"image size {pixels.shape[1:3]} does not match the model's {c.image_size}x{c.image_size}; "
                       "resize with stylejax.models.clip.preprocess_images.")
    d, p, f = c.hidden_size, c.patch_size, c.initializer_factor
    if p % 2 ** len(c.conv_stem):
      raise ConfigError(f"patch_size {p} is not divisible by 2**{len(c.conv_stem)} (one stride 2 per conv_stem "
                        "layer); use fewer stem layers or a larger patch.")
    x = pixels
    for i, width in enumerate(c.conv_stem):  # conv -> LayerNorm -> ReLU, stride 2 (Xiao et al. 2021)
      x = nn.Conv(width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                  param_dtype=self.param_dtype, name=f"stem_{i}",
                  kernel_init=_init(nn.initializers.he_normal(), (None, None, "conv_in", "conv_out")))(x)
      x = nn.relu(_layer_norm(c.layer_norm_eps, f"stem_norm_{i}", self.dtype, self.param_dtype)(x))
    p //= 2 ** len(c.conv_stem)
    patches = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="patch_embedding",
                      kernel_init=_init(_normal(c.initializer_range * f), (None, None, "conv_in", "embed")))(x)
    b = patches.shape[0]
    patches = patches.reshape(b, -1, d)  # row-major over the grid, like HF's flatten(2)
    cls = self.param("class_embedding", _init(_normal(d ** -0.5 * f), ("embed",)), (d,), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d)), patches], axis=1)
    pos = nn.Embed(c.num_patches + 1, d, dtype=self.dtype, param_dtype=self.param_dtype, name="position_embedding",
                   embedding_init=_init(_normal(c.initializer_range * f), (None, "embed")))
    return x + pos(jnp.arange(c.num_patches + 1))[None]


def eos_positions(ids: jax.Array, eos_token_id: int) -> jax.Array:
  """Pooling index per row, HF's rule: first `eos_token_id`; legacy configs (eos_token_id == 2,
  before transformers PR #24773) take the argmax of the ids (OpenAI's EOT was the largest id)."""
  if eos_token_id == 2:
    return jnp.argmax(ids, axis=-1)
  return jnp.argmax(ids == eos_token_id, axis=-1)


class CLIPTextTransformer(nn.Module):
  """HF `CLIPTextModel`: causal transformer, final LN, EOS pooling."""
  cfg: CLIPTextConfig
  remat: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, attention_mask: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array, list[jax.Array]]:
    """ids [B, L] (+ mask [B, L], 1 = token) -> (last [B, L, D], pooled [B, D], hidden states)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = CLIPTextEmbeddings(self.cfg, name="embeddings", **kw)(ids)
    length = ids.shape[-1]
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
    if attention_mask is not None:  # padding keys are never attended (HF create_causal_mask)
      mask = mask & attention_mask.astype(bool)[:, None, None, :]
    states = CLIPEncoder(self.cfg, remat=self.remat, name="encoder", **kw)(x, mask)
    last = _layer_norm(self.cfg.layer_norm_eps, "final_layer_norm", **kw)(states[-1])
    pooled = jnp.take_along_axis(last, eos_positions(ids, self.cfg.eos_token_id)[:, None, None], axis=1)[:, 0]
    return last, pooled, states


class CLIPVisionTransformer(nn.Module):
  """HF `CLIPVisionModel`: patch embed, pre_layrnorm, encoder, post_layernorm on the class token."""
  cfg: CLIPVisionConfig
  remat: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array, list[jax.Array]]:
    """pixels [B, H, W, 3] -> (last [B, 1+N, D], pooled [B, D], hidden states)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = CLIPVisionEmbeddings(self.cfg, name="embeddings", **kw)(pixels.astype(self.dtype))
    x = _layer_norm(self.cfg.layer_norm_eps, "pre_layrnorm", **kw)(x)  # sic: HF's spelling
    states = CLIPEncoder(self.cfg, remat=self.remat, name="encoder", **kw)(x)
    pooled = _layer_norm(self.cfg.layer_norm_eps, "post_layernorm", **kw)(states[-1][:, 0])
    return states[-1], pooled, states


class CLIPModel(nn.Module):
  """Dual encoder. `__call__` gives ((logits_per_image [B_img, B_txt], logits_per_text), aux)."""
  config: CLIPConfig
  remat: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    f = c.initializer_factor
    self.text_model = CLIPTextTransformer(c.text, remat=self.remat, **kw)
    self.vision_model = CLIPVisionTransformer(c.vision, remat=self.remat, **kw)
    self.visual_projection = _dense(c.projection_dim, ("embed", None), c.vision.hidden_size ** -0.5 * f,
                                    None, use_bias=False, **kw)
    self.text_projection = _dense(c.projection_dim, ("embed", None), c.text.hidden_size ** -0.5 * f,
                                  None, use_bias=False, **kw)
    self.logit_scale = self.param("logit_scale", _init(nn.initializers.constant(c.logit_scale_init_value), ()),
                                  (), self.param_dtype)

  def get_text_features(self, ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """ids [B, L] -> projected pooled text features [B, P] (not normalised)."""
    return self.text_projection(self.text_model(ids, attention_mask)[1])

  def get_image_features(self, pixels: jax.Array) -> jax.Array:
    """normalised pixels [B, H, W, 3] -> projected class-token features [B, P] (not normalised)."""
    return self.visual_projection(self.vision_model(pixels)[1])

  def encode_text_hidden(self, ids: jax.Array, attention_mask: jax.Array | None = None,
                         layer: int | None = None) -> jax.Array:
    """Text hidden states [B, L, D]: final-LN output when `layer` is None, else HF's
    `hidden_states[layer]` (index 0 = embeddings; -2 = penultimate, as SDXL/aMUSEd use)."""
    last, _, states = self.text_model(ids, attention_mask)
    return last if layer is None else states[layer]

  def encode_image_hidden(self, pixels: jax.Array, layer: int = -2) -> jax.Array:
    """HF's `vision_model(..., output_hidden_states=True).hidden_states[layer]`, [B, 1 + patches, D].
    Index 0 is the pre_layrnorm output, -1 the last layer; -2 (penultimate) is what StyleAR and
    IP-Adapter-plus feed their resamplers."""
    return self.vision_model(pixels)[2][layer]

  def __call__(self, ids: jax.Array, pixels: jax.Array, attention_mask: jax.Array | None = None
               ) -> tuple[tuple[jax.Array, jax.Array], dict[str, jax.Array]]:
    """ids [B_t, L], pixels [B_i, H, W, 3] -> ((logits_per_image [B_i, B_t], logits_per_text [B_t, B_i]), aux)."""
    img = _l2_normalize(self.get_image_features(pixels).astype(jnp.float32))
    txt = _l2_normalize(self.get_text_features(ids, attention_mask).astype(jnp.float32))
    scale = jnp.exp(self.logit_scale.astype(jnp.float32))
    logits_per_text = scale * txt @ img.T  # CLIP: cosine similarity times exp(t)
    return (logits_per_text.T, logits_per_text), {"logit_scale": scale}


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def clip_loss(logits_per_text: jax.Array) -> jax.Array:
  """Symmetric InfoNCE over a square [B, B] similarity matrix (CLIP paper, matched pairs on the diagonal)."""
  labels = jnp.arange(logits_per_text.shape[0])
  def ce(logits):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], -1))
  return 0.5 * (ce(logits_per_text) + ce(logits_per_text.T))


def preprocess_images(images: jax.Array, image_size: int, mean: tuple[float, ...] = CLIP_MEAN,
                      std: tuple[float, ...] = CLIP_STD) -> jax.Array:
  """Images [B, H, W, 3] in [0, 1] -> CLIP input [B, S, S, 3]: bicubic resize of the shorter
  side to S, centre crop, normalise with CLIP mean/std (as `CLIPImageProcessor` does)."""
  images = jnp.asarray(images, jnp.float32)
  b, h, w, c = images.shape
  scale = image_size / min(h, w)
  nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
  if (nh, nw) != (h, w):
    images = jax.image.resize(images, (b, nh, nw, c), method="bicubic", antialias=True)
  top, left = (nh - image_size) // 2, (nw - image_size) // 2
  images = jnp.clip(images[:, top:top + image_size, left:left + image_size], 0.0, 1.0)
  return (images - jnp.asarray(mean)) / jnp.asarray(std)


def perceptual_features(model: CLIPModel, params: Any, layers: Sequence[int] = (0, 1, 2)
                        ) -> Callable[[jax.Array], list[jax.Array]]:
  """A frozen CLIP vision tower as an LPIPS-style feature extractor for tokenizer training.

  Returns fn(images [B, H, W, 3] in [0, 1]) -> [hidden_states[l] for l in layers], each [B, 1 + N, D], every
  position's channels unit-normalised and scaled by sqrt(D), so a mean squared difference over channels is
  LPIPS' (Zhang et al. 2018) per-position sum ||phi(x)/|phi(x)| - phi(y)/|phi(y)|||^2. `params` are closed over
  (constants): the loss trains the images' producer, never the CLIP.
  """
  size = model.config.vision.image_size

  def fn(images: jax.Array) -> list[jax.Array]:
    pixels = preprocess_images(images, size)
    states = model.apply({"params": params}, pixels, method=lambda m, x: m.vision_model(x)[2])
    picked = [states[i].astype(jnp.float32) for i in layers]
    return [x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-6) * x.shape[-1] ** 0.5 for x in picked]

  return fn


def init_params(model: CLIPModel, rng: jax.Array, batch: int = 1) -> Any:
  """Boxed params (logical names on every leaf) from dummy inputs."""
  c = model.config
  ids = jnp.zeros((batch, c.text.max_position_embeddings), jnp.int32)
  pixels = jnp.zeros((batch, c.vision.image_size, c.vision.image_size, c.vision.num_channels), jnp.float32)
  return model.init(rng, ids, pixels)["params"]


def num_params(params: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params)))
