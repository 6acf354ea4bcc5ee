"""Autoregressive sampling for `DecoderLM`: one prefill, then ONE jitted `lax.fori_loop` decode.

Per step (transformers' processor order): CFG combine -> repetition penalty -> additive logit
bias -> vocabulary masks -> temperature -> top-k -> top-p -> sample (temperature 0: greedy).
Greedy decoding compiles its own loop that is just an argmax. Sampling finds the top-k threshold
by bisection (no sort), sorts only inside a `lax.cond` taken when top-p is on, and draws by
inverse CDF (one uniform per row, not one Gumbel per vocabulary entry).

Prompts. A `Prompt` is [prefix_embeds (P); tokens (L)] with boolean masks (False = padding).
Padding may sit anywhere except the LAST token position, whose logits start generation (use
left padding for ragged prompts). 1D positions default to "number of real tokens before",
so padding never shifts a row's positions (as transformers' generate with attention_mask).

CFG (LlamaGen): the conditional and unconditional prompts are stacked into one [2B] batch and
one KV cache, logits are combined as `uncond + s * (cond - uncond)`, and both streams get the
same sampled token. The unconditional context is the caller's choice:
  * learned null prefix: `uncond = Prompt(tokens, prefix_embeds=null[None].repeat(B, 0))`;
  * prefix dropped (StyleAR: image tokens only): the same arrays with `prefix_mask` (and any
    text-token `mask` entries) False — dropped positions become padding the model never sees.
Prompts of different lengths are left-padded to a common length here.
Nested guidance: `uncond` may be a sequence of K progressively less-conditioned contexts c_1 ... c_K
(c_0 = the prompt) with K scales, `l_K + sum_k s_k (l_{k-1} - l_k)` over one [(K+1)B] batch; K = 2 is
InstructPix2Pix's two-scale form (e.g. style-only then image-only context: prompt and style scales).

Repetition penalty "seen" tokens: the conditional prompt's real tokens plus everything
generated (transformers also counts left-padding ids; we do not). A prompt-free generator
(CoTyle: first index uniform) samples its first token itself and passes it as a 1-token prompt.

Reproducibility: row i draws from `fold_in(fold_in(rng, i), step)`, so a row's tokens do not
depend on which other rows share the batch (pass a [B] key array to choose per-row keys, e.g.
CoTyle's "the style code is the seed").

Compilation: greedy (temperature <= 0) and sampling compile separately; within each, setting
values are traced, so new prompts, seeds, temperatures, top-k/top-p (on or off), penalties, CFG
scales and eos ids reuse the compiled loop. Shapes, `num_steps`, the model, and which optional
inputs are present (None or not) are static.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stylejax.config import ConfigError
from stylejax.models.ar import DecoderLM, init_cache

Array = jax.Array
NEG_INF = -jnp.inf

_TRACES = {"generate": 0}
_BITS = 32  # bisection steps for the top-k threshold: one per bit of a float32 sort key


def trace_count() -> int:
  """How many times the jitted decode loop has been traced in this process (for tests)."""
  return _TRACES["generate"]


class SampleSettings(NamedTuple):
  """Sampling knobs. Traced (change freely without recompiling), except that greedy
  (temperature <= 0) and sampling (> 0) compile separately."""
  temperature: Any = 1.0  # <= 0 -> greedy argmax
  top_k: Any = 0  # 0 -> off
  top_p: Any = 1.0  # 1 -> off
  repetition_penalty: Any = 1.0  # 1 -> off; transformers semantics (CoTyle uses 50)
  cfg_scale: Any = 1.0  # used only when an unconditional prompt is given; [K] scales for K of them
  eos_id: Any = -1  # >= 0: after a row emits it, the row keeps emitting it

  def as_arrays(self) -> "SampleSettings":
    f, i = jnp.float32, jnp.int32
    return SampleSettings(jnp.asarray(self.temperature, f), jnp.asarray(self.top_k, i), jnp.asarray(self.top_p, f),
                          jnp.asarray(self.repetition_penalty, f), jnp.asarray(self.cfg_scale, f),
                          jnp.asarray(self.eos_id, i))


class Prompt(NamedTuple):
  """One stream's context. Shapes: tokens [B, L]; mask [B, L]; prefix_embeds [B, P, D];
  prefix_mask [B, P]; positions [B, P+L] (rope 1d) or [B, P+L, 2] (2d);
  override = (mask [B, L] bool, vectors [B, K, hidden]) for placeholder tokens."""
  tokens: Any
  mask: Any = None
  prefix_embeds: Any = None
  prefix_mask: Any = None
  positions: Any = None
  override: Any = None


# ----------------------------------------------------------------------------- logit processing


def cfg_combine(cond: Array, uncond: Array, scale: Array) -> Array:
  """`uncond + s * (cond - uncond)` (LlamaGen / aMUSEd form)."""
  return uncond + scale * (cond - uncond)


def nested_cfg_combine(logits: Array, scales: Array) -> Array:
  """logits [K+1, B, V] from the full context (0) to the least (K) -> `l_K + sum_k s_k (l_{k-1} - l_k)`
  [B, V]; scales: one or [K]. K = 1 is `cfg_combine`; K = 2 InstructPix2Pix's two-scale guidance."""
  k = logits.shape[0] - 1
  s = jnp.broadcast_to(jnp.asarray(scales, logits.dtype), (k,))
  out = logits[k]
  for i in range(k):
    out = out + s[i] * (logits[i] - logits[i + 1])
  return out


def apply_repetition_penalty(logits: Array, seen: Array, penalty: Array) -> Array:
  """transformers' RepetitionPenaltyLogitsProcessor: seen tokens' logits are divided by the
  penalty when positive and multiplied when negative. logits, seen: [B, V]."""
  penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
  return jnp.where(seen, penalised, logits)


def _sort_key(x: Array) -> Array:
  """float32 -> uint32 with the same order (flip negatives, set the sign bit of non-negatives)."""
  u = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return jnp.where(u >> 31 == 1, ~u, u | jnp.uint32(1 << 31))


def top_k_mask(logits: Array, k: Array) -> Array:
  """Keeps the logits >= the k-th largest of each row (ties kept), -inf elsewhere. logits [B, V];
  k [] or [B] int in [1, V]. The exact k-th largest is found without a sort: bisection on the
  float's sort key, one bit per step, keeping the largest key m with count(key >= m) >= k."""
  keys = _sort_key(logits)
  # counts in float32 (exact below 2**24 entries): XLA:CPU sums f32 ~1.6x faster than int32 here
  k = jnp.broadcast_to(k, logits.shape[:-1])[..., None].astype(jnp.float32)

  def bit(i, m):
    cand = m | (jnp.uint32(1) << (_BITS - 1 - i).astype(jnp.uint32))
    enough = jnp.sum((keys >= cand).astype(jnp.float32), axis=-1, keepdims=True) >= k
    return jnp.where(enough, cand, m)
  kth = jax.lax.fori_loop(0, _BITS, bit, jnp.zeros(k.shape, jnp.uint32))
  return jnp.where(keys >= kth, logits, NEG_INF)


def top_p_mask(logits: Array, top_p: Array) -> Array:
  """transformers' TopP on [B, V]: keeps the smallest top set whose mass reaches p (a token is kept
  if the mass of the tokens sorted before it is < p; the top token always survives)."""
  sorted_desc = -jnp.sort(-logits, axis=-1)
  probs = jax.nn.softmax(sorted_desc, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  n_keep = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1, keepdims=True), 1)
  pth = jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1)
  return jnp.where(logits < pth, NEG_INF, logits)


def top_k_top_p_filter(logits: Array, top_k: Array, top_p: Array) -> Array:
  """transformers' TopK then TopP warpers on [B, V] logits; k and p are traced ([] or [B]).

  Each filter sits in a `lax.cond`, so it costs nothing when off (k = 0, p = 1); only top-p sorts.
  """
  v = logits.shape[-1]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)  # rows with k = 0 keep everything
  logits = jax.lax.cond(jnp.any(top_k > 0), lambda l: top_k_mask(l, k), lambda l: l, logits)
  p = top_p[..., None] if jnp.ndim(top_p) else top_p
  return jax.lax.cond(jnp.any(top_p < 1.0), lambda l: jnp.where(p < 1.0, top_p_mask(l, p), l), lambda l: l,
                      logits)


def process_logits(logits: Array, settings: SampleSettings, seen: Array | None = None, bias: Array | None = None,
                   allowed: Array | None = None) -> Array:
  """Penalty, bias and vocabulary mask on [B, V] logits (everything before temperature)."""
  if seen is not None:
    logits = apply_repetition_penalty(logits, seen, settings.repetition_penalty)
  if bias is not None:  # e.g. CoTyle high-frequency suppression as an additive penalty
    logits = logits + bias
  if allowed is not None:
    logits = jnp.where(allowed, logits, NEG_INF)
  return logits


def first_index(hit: Array) -> Array:
  """[B, V] bool -> [B] int32: index of the first True per row, V where none. (Two plain
  reductions; XLA:CPU's variadic argmax reduce is ~10x slower on [8, 4096].)"""
  v = hit.shape[-1]
  return jnp.min(jnp.where(hit, jnp.arange(v, dtype=jnp.int32), v), axis=-1)


def argmax(logits: Array) -> Array:
  """jnp.argmax(logits, -1) for [B, V] float logits (first of ties) as [B] int32, faster on CPU."""
  best = first_index(logits == jnp.max(logits, axis=-1, keepdims=True))
  return jnp.minimum(best, logits.shape[-1] - 1)  # all-NaN row: no hit


def draw(row_keys: Array, logits: Array) -> Array:
  """One sample per row of softmax(logits [B, V]) by inverse CDF: the first token whose
  cumulative probability reaches u * total, u ~ U(0, 1] from the row's key. Never returns a
  zero-probability token, even where float rounding makes the cumulative sum non-monotone."""
  probs = jax.nn.softmax(logits, axis=-1)
  cdf = jnp.cumsum(probs, axis=-1)
  u = 1.0 - jax.vmap(lambda key: jax.random.uniform(key, ()))(row_keys)  # (0, 1]
  first = first_index((cdf >= u[:, None] * cdf[:, -1:]) & (probs > 0))
  return jnp.where(first < logits.shape[-1], first, argmax(logits))


def sample_tokens(logits: Array, settings: SampleSettings, row_keys: Array, greedy: bool = False) -> Array:
  """[B, V] processed logits -> [B] int32 tokens. greedy=True (static): argmax only, no sampling
  ops at all. Otherwise a traced temperature <= 0 still yields the argmax."""
  best = argmax(logits)
  if greedy:
    return best
  scaled = logits / jnp.maximum(settings.temperature, 1e-6)
  scaled = top_k_top_p_filter(scaled, settings.top_k, settings.top_p)
  return jnp.where(settings.temperature <= 0, best, draw(row_keys, scaled))


def is_greedy(temperature: Any) -> bool:
  """Whether a (concrete) temperature selects the greedy loop; a traced one selects sampling,
  which still decodes greedily where it turns out <= 0."""
  try:
    return bool(np.all(np.asarray(temperature) <= 0))
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    return False


def row_keys(rng: Array, batch: int) -> Array:
  """A single key -> [B] keys fold_in(rng, i); a [B] batch of keys is returned as is."""
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    is_single = rng.ndim == 0
  else:
    rng = jax.random.wrap_key_data(rng)
    is_single = rng.ndim == 0
  if is_single:
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch))
  if rng.shape != (batch,):
    raise ValueError(f"rng must be one key or a [{batch}] batch of keys; got shape {rng.shape}.")
  return rng


# ----------------------------------------------------------------------------- prompts


def _normalise(p: Prompt) -> dict[str, Any]:
  tokens = jnp.asarray(p.tokens, jnp.int32)
  b, l = tokens.shape
  out = dict(tokens=tokens, mask=jnp.ones((b, l), bool) if p.mask is None else jnp.asarray(p.mask, bool),
             prefix=None, prefix_mask=None, positions=p.positions, override=p.override)
  if p.prefix_embeds is not None:
    pe = jnp.asarray(p.prefix_embeds)
    out["prefix"] = pe
    out["prefix_mask"] = jnp.ones(pe.shape[:2], bool) if p.prefix_mask is None else jnp.asarray(p.prefix_mask, bool)
  return out


def _left_pad(x: Array | None, n: int, axis: int = 1) -> Array | None:
  if x is None or n == 0:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (n, 0)
  return jnp.pad(x, pad)


def _stack_streams(streams: list[dict]) -> dict:
  """Left-pads every stream to common prefix/token lengths and concatenates them on batch."""
  b = streams[0]["tokens"].shape[0]
  if any(s["tokens"].shape[0] != b for s in streams):
    raise ValueError(f"cond and uncond prompts need the same batch; got {[s['tokens'].shape[0] for s in streams]}.")
  prefixes = [s["prefix"] for s in streams if s["prefix"] is not None]
  if prefixes:  # a missing prefix becomes an all-padding one of another's width
    for s in streams:
      if s["prefix"] is None:
        s["prefix"] = jnp.zeros_like(prefixes[0])
        s["prefix_mask"] = jnp.zeros(prefixes[0].shape[:2], bool)
    n = max(s["prefix"].shape[1] for s in streams)
    for s in streams:
      pad = n - s["prefix"].shape[1]
      s["prefix"], s["prefix_mask"] = _left_pad(s["prefix"], pad), _left_pad(s["prefix_mask"], pad)
      if s["positions"] is not None:
        s["positions"] = _left_pad(jnp.asarray(s["positions"]), pad)
  n = max(s["tokens"].shape[1] for s in streams)
  for s in streams:
    pad = n - s["tokens"].shape[1]
    s["tokens"], s["mask"] = _left_pad(s["tokens"], pad), _left_pad(s["mask"], pad)
    if s["override"] is not None:
      om, vec = s["override"]
      s["override"] = (_left_pad(jnp.asarray(om, bool), pad), vec)
    if s["positions"] is not None:
      s["positions"] = _left_pad(jnp.asarray(s["positions"]), pad)
  vectors = [s["override"][1] for s in streams if s["override"] is not None]
  if vectors:
    for s in streams:
      if s["override"] is None:
        s["override"] = (jnp.zeros(s["tokens"].shape, bool), jnp.zeros_like(vectors[0]))
  if len({s["positions"] is None for s in streams}) > 1:
    raise ValueError("give positions for all CFG streams or for none.")
  cat = lambda xs: None if xs[0] is None else jnp.concatenate(xs, axis=0)
  out = {k: cat([s[k] for s in streams]) for k in ("tokens", "mask", "prefix", "prefix_mask", "positions")}
  out["override"] = None if not vectors else tuple(cat([s["override"][i] for s in streams]) for i in range(2))
  return out


# ----------------------------------------------------------------------------- the loop


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "image_offset", "num_streams", "greedy"))
def _generate(model: DecoderLM, params: Any, stream: dict, settings: SampleSettings, keys: Array,
              vocab_mask: Array | None, step_vocab_mask: Array | None, logit_bias: Array | None,
              *, num_steps: int, image_offset: int, num_streams: int, greedy: bool) -> Array:
  _TRACES["generate"] += 1
  tokens, mask = stream["tokens"], stream["mask"]
  rows, l = tokens.shape
  b = rows // num_streams
  valid = mask if stream["prefix"] is None else jnp.concatenate([stream["prefix_mask"], mask], axis=1)
  t0 = valid.shape[1]
  positions = stream["positions"]
  if positions is None:
    if model.rope == "2d":
      positions = jnp.zeros((rows, t0, 2), jnp.int32)  # prefix at (0, 0): LlamaGen's zero table
    else:
      positions = jnp.maximum(jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
  positions = jnp.asarray(positions, jnp.int32)
  vocab = model.vocab_size

  def allowed_at(step):
    allowed = None if vocab_mask is None else jnp.broadcast_to(vocab_mask, (b, vocab))
    if step_vocab_mask is not None:
      m = jnp.broadcast_to(step_vocab_mask[step], (b, vocab))
      allowed = m if allowed is None else allowed & m
    return allowed

  bias = None if logit_bias is None else jnp.broadcast_to(logit_bias.astype(jnp.float32), (b, vocab))

  def pick(logits, seen, done, step):
    logits = logits[:, -1]
    if num_streams > 1:
      logits = nested_cfg_combine(logits.reshape(num_streams, b, -1), settings.cfg_scale)
    logits = process_logits(logits, settings, seen, bias, allowed_at(step))
    step_keys = None if greedy else jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    tok = sample_tokens(logits, settings, step_keys, greedy)
    tok = jnp.where(done, settings.eos_id, tok)
    done = done | ((settings.eos_id >= 0) & (tok == settings.eos_id))
    seen = seen.at[jnp.arange(b), tok].set(True)
    return tok, seen, done

  # Seen tokens for the repetition penalty: the (conditional) prompt's real tokens, as transformers.
  seen = jnp.zeros((b, vocab), jnp.int32).at[jnp.arange(b)[:, None], tokens[:b]].max(mask[:b].astype(jnp.int32)) > 0
  done = jnp.zeros((b,), bool)

  cache = init_cache(model, rows, t0 + num_steps)
  logits, cache = model.apply({"params": params}, tokens, positions, cache, prefix_embeds=stream["prefix"],
                              attention_mask=valid, input_embeds_override=stream["override"], last_only=True)
  tok, seen, done = pick(logits, seen, done, 0)
  out = jnp.zeros((b, num_steps), jnp.int32).at[:, 0].set(tok)
  last_pos = positions[:, -1]

  def body(step, carry):
    cache, out, seen, done = carry
    prev = out[:, step - 1]
    feed = jnp.tile(prev, num_streams)
    if model.rope == "2d":
      j = image_offset + step - 1
      pos = jnp.broadcast_to(jnp.stack([j // model.grid[1], j % model.grid[1]]), (rows, 1, 2))
    else:
      pos = (last_pos + step)[:, None]
    logits, cache = model.apply({"params": params}, feed[:, None], pos, cache, last_only=True)
    tok, seen, done = pick(logits, seen, done, step)
    return cache, out.at[:, step].set(tok), seen, done

  _, out, _, _ = jax.lax.fori_loop(1, num_steps, body, (cache, out, seen, done))
  return out


def _generate_args(model: DecoderLM, params: Any, prompt: Prompt, rng: Array, num_steps: int, settings: SampleSettings,
                   uncond: Prompt | Sequence[Prompt] | None, vocab_mask: Array | None, step_vocab_mask: Array | None,
                   logit_bias: Array | None, image_offset: int) -> tuple[tuple, dict]:
  """Validates and packs `generate`'s inputs as (args, static kwargs) of `_generate`."""
  if model.rope == "2d" and (model.grid[0] <= 0 or model.grid[1] <= 0):
    raise ConfigError("rope='2d' sampling needs model.grid = (rows, cols).")
  if step_vocab_mask is not None and step_vocab_mask.shape[0] != num_steps:
    raise ValueError(f"step_vocab_mask must be [num_steps={num_steps}, V]; got {step_vocab_mask.shape}.")
  stream = _normalise(prompt)
  b = stream["tokens"].shape[0]
  unconds = [] if uncond is None else [uncond] if isinstance(uncond, Prompt) else list(uncond)
  scales = np.shape(settings.cfg_scale)
  if scales and scales != (len(unconds),):
    raise ValueError(f"cfg_scale has shape {scales}; give one scale or one per unconditional stream "
                     f"({len(unconds)}).")
  if unconds:
    stream = _stack_streams([stream] + [_normalise(u) for u in unconds])
  keys = row_keys(rng, b)
  as_arr = lambda x, dt: None if x is None else jnp.asarray(x, dt)
  args = (model, params, stream, settings.as_arrays(), keys, as_arr(vocab_mask, bool), as_arr(step_vocab_mask, bool),
          as_arr(logit_bias, jnp.float32))
  return args, dict(num_steps=num_steps, image_offset=image_offset, num_streams=1 + len(unconds),
                    greedy=is_greedy(settings.temperature))


def generate(model: DecoderLM, params: Any, prompt: Prompt, rng: Array, num_steps: int, *,
             settings: SampleSettings = SampleSettings(), uncond: Prompt | Sequence[Prompt] | None = None,
             vocab_mask: Array | None = None, step_vocab_mask: Array | None = None,
             logit_bias: Array | None = None, image_offset: int = 0) -> Array:
  """Samples `num_steps` tokens after `prompt`. Returns [B, num_steps] int32.

  params: unboxed DecoderLM params. rng: one key (row i uses fold_in(rng, i)) or [B] keys.
  uncond: the unconditional stream for CFG (see module docstring), or K nested ones with K scales in
    `settings.cfg_scale`; None disables CFG.
  vocab_mask: [V] or [B, V] bool, True = may be sampled (e.g. image tokens only).
  step_vocab_mask: [num_steps, V] bool per generated position (e.g. force row-end tokens).
  logit_bias: [V] or [B, V] float added to the logits every step.
  image_offset: rope '2d' only: the grid index of the first generated token.
  """
  args, static = _generate_args(model, params, prompt, rng, num_steps, settings, uncond, vocab_mask,
                                step_vocab_mask, logit_bias, image_offset)
  return _generate(*args, **static)


def lower_generate(model: DecoderLM, params: Any, prompt: Prompt, rng: Array, num_steps: int, *,
                   settings: SampleSettings = SampleSettings(), uncond: Prompt | Sequence[Prompt] | None = None,
                   vocab_mask: Array | None = None, step_vocab_mask: Array | None = None,
                   logit_bias: Array | None = None, image_offset: int = 0) -> jax.stages.Lowered:
  """`generate`'s jitted loop lowered for these inputs (`.as_text()`, `.compile()`), for
  inspecting what a call would run; same arguments as `generate`."""
  args, static = _generate_args(model, params, prompt, rng, num_steps, settings, uncond, vocab_mask,
                                step_vocab_mask, logit_bias, image_offset)
  return _generate.lower(*args, **static)
