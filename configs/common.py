"""Defaults shared by every config: argument parsing, mesh, sharding rules, optimizer, trainer.

Configs call `parse_arg(arg, variant="", runlocal=False, ...)` to turn the `:variant,k=v`
string into a typed ConfigDict, then `base_config()` for the shared sections.
"""
from __future__ import annotations

import ml_collections

# Logical axis names used by every module in stylejax (MaxText style). Params and activations
# carry different names so a parameter axis can be FSDP-sharded while the batch is too.
LOGICAL_AXIS_RULES = (
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("adapter", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("codebook", None),
    ("norm", None),
)


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
  """Parses "variant,k=v,flag" into a ConfigDict typed by the defaults in `spec`.

  A bare word sets a bool default to True (`runlocal`), or fills the first str field
  (`variant`). Unknown keys raise a ValueError naming the valid ones.
  """
  out = ml_collections.ConfigDict(dict(spec))
  if not arg:
    return out
  positional = [k for k, v in spec.items() if isinstance(v, str)]
  for token in filter(None, (t.strip() for t in arg.split(","))):
    if "=" in token:
      key, value = (s.strip() for s in token.split("=", 1))
    elif token in spec and isinstance(spec[token], bool):
      key, value = token, "True"
    elif positional:
      key, value = positional.pop(0), token
    else:
      raise ValueError(f"config argument {token!r} is not one of {sorted(spec)}.")
    if key not in spec:
      raise ValueError(f"unknown config argument {key!r}; valid: {sorted(spec)}.")
    out[key] = _typed(value, spec[key], key)
  return out


def _typed(value: str, default, key: str):
  if isinstance(default, bool):
    if value.lower() in ("1", "true", "yes"):
      return True
    if value.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"config argument {key}={value!r} must be true or false.")
  try:
    return type(default)(value)
  except (TypeError, ValueError):
    raise ValueError(f"config argument {key}={value!r} must be a {type(default).__name__}.") from None


def base_config(runlocal: bool = False) -> ml_collections.ConfigDict:
  """Sections every training config has. Callers fill `task`, `model`, `data`."""
  c = ml_collections.ConfigDict()
  c.task = ""
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 64  # global
  c.grad_accum_steps = 1

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Lists, not tuples, so the config survives a JSON round trip unchanged.
  c.logical_axis_rules = [[n, list(a) if isinstance(a, tuple) else a] for n, a in LOGICAL_AXIS_RULES]

  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      schedule="cosine", warmup_steps=100, end_lr_frac=0.0,
      grad_clip_norm=1.0,
      # params whose '/'-joined path matches any regex get no update and no optimizer state
      freeze=[],
      # if non-empty, only params matching one of these are trained (all others frozen)
      trainable=[],
  ))
  c.ema_decay = 0.0  # 0 disables EMA
  # Start from another run's params (a workdir or shipped name like "shapestyle:base"): matching
  # paths are copied before step 0; params only this model has (adapters, LoRA) keep their init, and
  # so do paths matching a `dont_load` regex (big_vision's name; e.g. a resized decoder).
  c.init_from = ml_collections.ConfigDict(dict(workdir="", dont_load=[]))

  c.compute_dtype = "float32"  # "bfloat16" for bf16 compute with fp32 params
  c.scan_layers = False
  c.remat = False

  c.log_every = 10
  c.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=3, async_save=True))
  c.progress = True
  if runlocal:
    use_runlocal_schedule(c)
  return c


def use_runlocal_schedule(c: ml_collections.ConfigDict) -> None:
  """The runlocal trainer settings (4 steps, batch 8); configs call it again after their own."""
  c.total_steps = 4
  c.batch_size = 8
  c.log_every = 1
  c.checkpoint.every = 2
  c.optimizer.warmup_steps = 1


def sample_config(**overrides) -> ml_collections.ConfigDict:
  """Masked-decode settings (`DecodeConfig` fields + `Guidance` fields + guidance scales)."""
  s = dict(num_steps=12, schedule="cosine", mask_len_base="unknown", sampling="categorical",
           temperature=1.0, confidence="log_prob", choice_temperature=4.5,
           temperature_schedule="maskgit_linear",
           mode="cfg", form="muse", ramp="constant", scale=3.0)
  s.update(overrides)
  return ml_collections.ConfigDict(s)


# Ids of the shipped ShapeStyle tokenizer: trained with 4096 codes, then merged (configs/shapestyle.py
# MERGE_CODES). The generators' vocabulary must match it.
SHAPESTYLE_CODES = 128


def shapestyle_parts(runlocal: bool) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """(tokenizer, text_encoder) part specs of the ShapeStyle world: the shipped parts, or for runlocal
  a random init of their `config` (an empty `workdir` means random init; smoke runs only)."""
  if runlocal:
    return (ml_collections.ConfigDict(dict(workdir="", config="configs/shapestyle.py:tokenizer,runlocal")),
            ml_collections.ConfigDict(dict(workdir="", config="configs/shapestyle.py:clip,runlocal")))
  return (ml_collections.ConfigDict(dict(workdir="shapestyle:tokenizer", config="configs/shapestyle.py:tokenizer")),
          ml_collections.ConfigDict(dict(workdir="shapestyle:clip", config="configs/shapestyle.py:clip")))
