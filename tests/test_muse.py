"""The masked token transformer (maskgit and muse layouts), its masked-token loss and task."""
import os

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from stylejax import config as config_lib
from stylejax import parallel
from stylejax.data import shapestyle as ss
from stylejax.models import muse
from stylejax.nn.adapters import AdapterConfig
from stylejax.train import losses
from configs.common import LOGICAL_AXIS_RULES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

K, L, C, DT, T = 16, 16, 5, 12, 3


def config(layout="maskgit", **kw):
  base = dict(layout=layout, codebook_size=K, seq_len=L, width=32, depth=2, heads=4, mlp_dim=64, num_classes=C,
              text_dim=DT, text_len=T, dropout=0.0)
  base.update(kw)
  return muse.MuseConfig(**base)


def inputs(c, batch=2, seed=0):
  r1, r2 = jax.random.split(jax.random.key(seed))
  ids = jax.random.randint(r1, (batch, L), 0, K)
  ids = ids.at[:, ::3].set(c.mask_id)
  if c.layout == "maskgit":
    return ids, jax.random.randint(r2, (batch,), 0, C)
  return ids, jax.random.normal(r2, (batch, T, DT))


def init(c, seed=0):
  ids, cond = muse.dummy_inputs(c)
  return muse.MaskedTransformer(c).init(jax.random.key(seed), ids, cond)["params"]


@pytest.mark.parametrize("layout", ["maskgit", "muse"])
def test_shapes_and_dtypes(layout):
  c = config(layout)
  params = nn.meta.unbox(init(c))
  ids, cond = inputs(c)
  logits, aux = muse.MaskedTransformer(c).apply({"params": params}, ids, cond)
  assert logits.shape == (2, L, K) and logits.dtype == jnp.float32 and aux == {}
  assert np.isfinite(np.asarray(logits)).all()
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  if layout == "muse":  # bf16 compute with the same fp32 params: close to the fp32 logits
    logits16, _ = jax.jit(muse.MaskedTransformer(c, dtype=jnp.bfloat16).apply)({"params": params}, ids, cond)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits, atol=0.15)
  with pytest.raises(ValueError, match="seq_len"):
    muse.MaskedTransformer(c).apply({"params": params}, ids[:, :-1], cond)


def test_vocab_and_mask_id():
  c = config("maskgit")
  assert c.vocab_size == K + C + 2 and c.mask_id == c.vocab_size - 1 and c.null_label == C
  ref = muse.MuseConfig(codebook_size=1024, num_classes=1000, null_class=False, width=32, heads=4)
  assert ref.vocab_size == 2025 and ref.mask_id == 2024  # the reference's layout
  assert config("muse").vocab_size == K + 1 and config("muse").mask_id == K
  params = nn.meta.unbox(init(c))
  assert params["embed"]["word_embeddings"]["embedding"].shape == (c.vocab_size, 32)
  assert params["embed"]["position_embeddings"].shape == (L + 1, 32)  # class token + image tokens


def test_maskgit_head_is_tied_to_the_embedding():
  c = config("maskgit")
  model = muse.MaskedTransformer(c)
  params = nn.meta.unbox(init(c))
  assert set(params["head"]) == {"transform", "transform_norm", "bias"}  # no output kernel of its own
  ids = jnp.full((2, L), c.mask_id)
  labels = jnp.array([0, 1])
  emb = params["embed"]["word_embeddings"]["embedding"]
  # Rows 3 and 7 never enter as inputs; make row 7 a copy of row 3 (and equal biases):
  tied = jax.tree.map(lambda x: x, params)
  tied["embed"]["word_embeddings"]["embedding"] = emb.at[7].set(emb[3])
  tied["head"]["bias"] = params["head"]["bias"].at[7].set(0.5).at[3].set(0.5)
  logits, _ = model.apply({"params": tied}, ids, labels)
  np.testing.assert_array_equal(logits[..., 7], logits[..., 3])
  base, _ = model.apply({"params": params}, ids, labels)
  assert not np.allclose(base[..., 7], base[..., 3])
  keep = [i for i in range(K) if i not in (3, 7)]
  np.testing.assert_array_equal(logits[..., keep], base[..., keep])


@pytest.mark.parametrize("layout,kind", [("maskgit", "styledrop"), ("muse", "lora")])
def test_scan_matches_unscanned(layout, kind):
  c = config(layout, adapters=AdapterConfig(kind=kind, rank=2, layers=(1,)))
  params = nn.meta.unbox(init(c))
  # Make adapters non-trivial so the comparison covers them too.
  params["adapters"] = jax.tree.map(lambda x: x + 0.1, params["adapters"])
  ids, cond = inputs(c)
  ref, _ = muse.MaskedTransformer(c).apply({"params": params}, ids, cond)
  stacked = muse.stack_layers(params, c.depth)
  cs = config(layout, adapters=c.adapters, scan_layers=True, remat=layout == "muse")
  out, _ = jax.jit(muse.MaskedTransformer(cs).apply)({"params": stacked}, ids, cond)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  # the scanned init has the same tree as the converted one, and the conversion round-trips
  scanned = nn.meta.unbox(jax.eval_shape(lambda: init(cs)))
  assert jax.tree.structure(scanned) == jax.tree.structure(stacked)
  assert jax.tree.map(jnp.shape, scanned) == jax.tree.map(jnp.shape, stacked)
  back = muse.unstack_layers(stacked)
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), back, params)))


def test_remat_unscanned_matches():
  c = config("muse")
  params = nn.meta.unbox(init(c))
  ids, cond = inputs(c)
  ref, _ = muse.MaskedTransformer(c).apply({"params": params}, ids, cond)
  out, _ = muse.MaskedTransformer(config("muse", remat=True)).apply({"params": params}, ids, cond)
  np.testing.assert_allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("layout", ["maskgit", "muse"])
def test_null_condition(layout):
  c = config(layout)
  model = muse.MaskedTransformer(c)
  params = nn.meta.unbox(init(c))
  ids, cond = inputs(c)
  cond_out, _ = model.apply({"params": params}, ids, cond)
  dropped, _ = model.apply({"params": params}, ids, cond, drop_cond=jnp.array([True, False]))
  uncond, _ = model.apply({"params": params}, ids, None)
  np.testing.assert_allclose(dropped[0], uncond[0], atol=1e-6)
  np.testing.assert_allclose(dropped[1], cond_out[1], atol=1e-6)
  assert not np.allclose(uncond[0], cond_out[0])
  if layout == "maskgit":
    by_label, _ = model.apply({"params": params}, ids, jnp.full((2,), c.null_label))
    np.testing.assert_allclose(by_label, uncond, atol=1e-6)
  else:
    assert params["embed"]["null_text"].shape == (T, DT)
    cz = config(layout, null_text="zeros")
    pz = nn.meta.unbox(init(cz))
    assert "null_text" not in pz["embed"]
    zero_out, _ = muse.MaskedTransformer(cz).apply({"params": pz}, ids, jnp.zeros_like(cond))
    drop_out, _ = muse.MaskedTransformer(cz).apply({"params": pz}, ids, cond, drop_cond=jnp.ones(2, bool))
    np.testing.assert_allclose(drop_out, zero_out, atol=1e-6)


def test_text_mask_hides_padding():
  c = config("muse")
  model = muse.MaskedTransformer(c)
  params = nn.meta.unbox(init(c))
  ids, text = inputs(c)
  mask = jnp.array([[True, True, False]] * 2)
  a, _ = model.apply({"params": params}, ids, text, mask)
  b, _ = model.apply({"params": params}, ids, text.at[:, 2].set(100.0), mask)
  np.testing.assert_allclose(a, b, atol=1e-6)
  c_, _ = model.apply({"params": params}, ids, text.at[:, 1].set(100.0), mask)
  assert not np.allclose(a, c_)


@pytest.mark.parametrize("layout,scan", [("maskgit", False), ("muse", True)])
def test_every_param_has_logical_names(layout, scan):
  kind = "lora" if layout == "muse" else "styledrop"
  c = config(layout, scan_layers=scan, gated_mlp=True, conv_blocks=1, conv_text_adaln=layout == "muse",
             adapters=AdapterConfig(kind=kind, targets=("query", "out", "mlp_in") if kind == "lora" else None))
  boxed = jax.eval_shape(lambda r: init(c), jax.random.key(0))
  leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  for path, leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), jax.tree_util.keystr(path)
    assert len(leaf.names) == len(leaf.value.shape), jax.tree_util.keystr(path)
    if scan and "layers" in jax.tree_util.keystr(path):
      assert leaf.names[0] == "layers"
  names = {n for _, leaf in leaves for n in leaf.names}
  assert {"embed", "heads", "kv", "mlp", "vocab", "norm", "adapter"} <= names


def test_conv_stage_is_local_and_translation_equivariant():
  # The token-grid ConvNeXt stage (conv_blocks): what it learns at one position holds at every other.
  c = config("muse", conv_blocks=2, width=8)
  stage = muse.ConvStage(c)
  x = jax.random.normal(jax.random.key(0), (1, 64, 8))
  params = stage.init(jax.random.key(1), x)["params"]
  params = nn.meta.unbox(params)  # GRN's gamma/beta start at 0 (identity); its global norm is not local
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: p if "grn" in jax.tree_util.keystr(path) else p + 0.1 * jax.random.normal(jax.random.key(2), p.shape),
      params)
  f = lambda v: np.asarray(stage.apply({"params": params}, v)).reshape(8, 8, 8)
  grid = np.asarray(x).reshape(8, 8, 8)
  shifted = np.roll(grid, (1, 2), axis=(0, 1))
  np.testing.assert_allclose(np.roll(f(x), (1, 2), axis=(0, 1))[3:6, 4:6], f(shifted.reshape(1, 64, 8))[3:6, 4:6],
                             rtol=1e-5, atol=1e-5)  # away from the zero-padded border
  poked = grid.copy()
  poked[0, 0] += 1.0
  changed = np.abs(f(poked.reshape(1, 64, 8)) - f(x)).max(-1) > 1e-6
  assert changed[0, 0] and not changed[3:, :].any() and not changed[:, 3:].any()  # 2 blocks x 3x3: radius 2
  with pytest.raises(ValueError, match="square token grid"):
    config("muse", conv_blocks=1, seq_len=15)


def test_conv_text_adaln_starts_as_the_text_blind_model_and_reads_only_the_unmasked_text():
  # aMUSEd's ConvNextBlock modulation, zero-initialised: a base grown with it computes what it computed before.
  blind, tuned = config("muse", conv_blocks=1), config("muse", conv_blocks=1, conv_text_adaln=True)
  old, new = nn.meta.unbox(init(blind)), nn.meta.unbox(init(tuned, seed=1))
  assert set(new) - set(old) == {"pooled_text"}
  assert "cond_mapper" in new["conv_in"]["block_0"] and "cond_mapper" not in old["conv_in"]["block_0"]
  flat_old, flat_new = traverse_util.flatten_dict(old), traverse_util.flatten_dict(new)
  assert set(flat_old) < set(flat_new)
  grown = traverse_util.unflatten_dict({**flat_new, **flat_old})  # old weights, new params at their init
  ids, text = inputs(tuned)
  mask = jnp.array([[True, True, False]] * 2)
  a, _ = muse.MaskedTransformer(blind).apply({"params": old}, ids, text, mask)
  b, _ = muse.MaskedTransformer(tuned).apply({"params": grown}, ids, text, mask)
  np.testing.assert_allclose(a, b, atol=1e-6)
  # Trained (non-zero) mappers: the text now reaches the conv stages, padding rows still do not.
  live = jax.tree_util.tree_map_with_path(
      lambda path, p: p + 0.5 * jax.random.normal(jax.random.key(3), p.shape)
      if "cond_mapper" in jax.tree_util.keystr(path) else p, grown)
  model = muse.MaskedTransformer(tuned)
  c_, _ = model.apply({"params": live}, ids, text, mask)
  assert not np.allclose(b, c_, atol=1e-4)
  d, _ = model.apply({"params": live}, ids, text.at[:, 2].set(100.0), mask)
  np.testing.assert_allclose(c_, d, atol=1e-5)
  with pytest.raises(ValueError, match="conv_text_adaln"):
    config("muse", conv_text_adaln=True)
  with pytest.raises(ValueError, match="conv_text_adaln"):
    config("maskgit", conv_blocks=1, conv_text_adaln=True)


def test_conv_block_grn_gradient_is_finite_on_a_dead_channel():
  # A GELU channel that is 0 at every grid cell (here: zero weights into it) made GRN's sqrt(sum y^2)
  # gradient NaN, which stopped a base run at step 2608; torch.norm's gradient there is 0, and so is ours.
  c = config("muse", conv_blocks=1, width=8)
  block = muse.ConvNeXtBlock(c)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  params = nn.meta.unbox(block.init(jax.random.key(1), x)["params"])
  params = jax.tree.map(lambda p: p + 0.1, params)  # GRN gamma/beta off zero so the norm is in the graph
  params["expand"]["kernel"] = params["expand"]["kernel"].at[:, 0].set(0.0)
  params["expand"]["bias"] = params["expand"]["bias"].at[0].set(0.0)
  loss = lambda p, v: jnp.sum(jnp.square(block.apply({"params": p}, v)))
  gp, gx = jax.grad(loss, argnums=(0, 1))(params, x)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves((gp, gx)))
  y = jnp.ones((1, 2, 2, 3)).at[..., 0].set(0.0)
  np.testing.assert_allclose(muse._spatial_l2_norm(y)[0, 0, 0], [0.0, 2.0, 2.0])


def test_sharded_forward_matches():
  """Born-sharded params on a (data, fsdp, tensor) = (2, 2, 2) mesh give the unsharded logits."""
  c = config("muse", depth=1, scan_layers=True, vocab_multiple=8, adapters=AdapterConfig(kind="styledrop"))
  assert c.embed_rows == 24 and c.mask_id == K
  model = muse.MaskedTransformer(c)
  ids, cond = inputs(c, batch=4)
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  params, shardings = parallel.init_sharded(lambda r: init(c), jax.random.key(0), mesh, LOGICAL_AXIS_RULES)
  spec = shardings["layers"]["self_attn"]["query"]["kernel"].spec
  assert tuple(spec) == (None, "fsdp", "tensor", None)
  ref, _ = model.apply({"params": jax.device_get(params)}, ids, cond)
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.as_rules(LOGICAL_AXIS_RULES)):
    out, _ = jax.jit(lambda p, i, t: model.apply({"params": p}, i, t))(params, ids, cond)
  np.testing.assert_allclose(out, ref, atol=1e-5)


# ------------------------------------------------------------------------------ losses

def test_loss_counts_only_masked_tokens():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 6, 5)), jnp.float32)
  targets = jnp.asarray(rng.integers(5, size=(2, 6)))
  mask = jnp.array([[1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]], bool)
  loss, aux = losses.masked_token_loss(logits, targets, mask, 0.1)
  changed = jnp.where(mask[..., None], logits, 50.0 * logits + 3.0)
  loss2, _ = losses.masked_token_loss(changed, targets, mask, 0.1)
  assert float(loss) == float(loss2)
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
  expected = (0.9 * nll - 0.1 * logp.mean(-1))[mask].mean()
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(aux["mask_rate"], 4 / 12)


def test_label_smoothing_hand_example():
  # logits (0, 0, ln 2): p = (1/4, 1/4, 1/2); target 2; ls 0.1 -> q = (1/30, 1/30, 0.9 + 1/30)
  logits = jnp.array([[[0.0, 0.0, np.log(2.0)]]])
  targets, mask = jnp.array([[2]]), jnp.array([[True]])
  q = np.array([0.1 / 3, 0.1 / 3, 0.9 + 0.1 / 3])
  expected = -(q * np.log([0.25, 0.25, 0.5])).sum()
  loss, aux = losses.masked_token_loss(logits, targets, mask, 0.1)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(losses.masked_token_loss(logits, targets, mask)[0], np.log(2.0), rtol=1e-6)
  assert float(aux["masked_accuracy"]) == 1.0


def test_token_weight_is_a_weighted_mean_over_masked_tokens():
  # two masked tokens with nll ln 2 and ln 4; weights 1 and 3 -> (ln 2 + 3 ln 4) / 4; the third is unmasked.
  logits = jnp.log(jnp.array([[[1.0, 1.0], [1.0, 3.0], [1.0, 1.0]]]))
  targets, mask = jnp.array([[0, 0, 0]]), jnp.array([[True, True, False]])
  weight = jnp.array([[1.0, 3.0, 100.0]])
  loss, aux = losses.masked_token_loss(logits, targets, mask, token_weight=weight)
  np.testing.assert_allclose(loss, (np.log(2.0) + 3 * np.log(4.0)) / 4, rtol=1e-6)
  np.testing.assert_allclose(aux["masked_accuracy"], 0.5)  # accuracy stays unweighted
  np.testing.assert_allclose(losses.masked_token_loss(logits, targets, mask, token_weight=jnp.ones((1, 3)))[0],
                             losses.masked_token_loss(logits, targets, mask)[0], rtol=1e-6)


def test_masking_counts_rates_and_ids():
  ids = jnp.zeros((64, 20), jnp.int32)
  masked, mask = losses.mask_tokens(jax.random.key(0), ids, 99, "arccos", 0.5)
  counts = mask.sum(-1)
  assert counts.min() >= 10 and counts.max() <= 20
  np.testing.assert_array_equal(masked, jnp.where(mask, 99, 0))
  rate = jnp.array([0.0, 0.26, 1.0])
  m = losses.random_mask(jax.random.key(1), (3, 10), rate)
  np.testing.assert_array_equal(m.sum(-1), [1, 3, 10])  # at least one, round(rate * L), at most L
  for method in losses.MASK_RATE_METHODS:
    r = losses.sample_mask_rate(jax.random.key(2), (4000,), method, 0.3)
    assert float(r.min()) >= 0.3 and float(r.max()) <= 1.0
  # arccos(min 0) == law of cos(pi/2 u): mean 2/pi
  r = losses.sample_mask_rate(jax.random.key(3), (20000,), "arccos", 0.0)
  assert abs(float(r.mean()) - 2 / np.pi) < 0.01
  with pytest.raises(ValueError, match="mask_schedule"):
    losses.sample_mask_rate(jax.random.key(0), (2,), "bogus")


def test_cond_dropout_rate():
  drop = losses.cond_dropout_mask(jax.random.key(0), 20000, 0.1)
  assert drop.dtype == jnp.bool_ and abs(float(drop.mean()) - 0.1) < 0.01
  assert not losses.cond_dropout_mask(jax.random.key(0), 100, 0.0).any()


# ------------------------------------------------------------------------------ task and data

def task_config(layout):
  cfg = ml_collections.ConfigDict()
  cfg.task = "stylejax.models.muse:MuseTask"
  cfg.compute_dtype = "float32"
  cfg.scan_layers = False
  cfg.remat = False
  cfg.model = dict(layout=layout, codebook_size=K, seq_len=L, width=32, depth=2, heads=4, mlp_dim=64,
                   num_classes=C, text_dim=DT, text_len=T, dropout=0.1, label_smoothing=0.1,
                   mask_schedule="cosine", min_mask_rate=0.5, cond_dropout=0.1, adapters=dict(kind="none"))
  cfg.data = dict(name="synthetic_tokens", num_examples=64, seed=0)
  return cfg


@pytest.mark.parametrize("layout", ["maskgit", "muse"])
def test_task_loss_and_source(layout):
  task = muse.MuseTask(task_config(layout))
  src = task.source("train")
  assert len(src) == 64
  ex = src[3]
  np.testing.assert_array_equal(ex["ids"], src[3]["ids"])  # deterministic
  assert ex["ids"].shape == (L,) and ex["ids"].dtype == np.int32 and ex["ids"].max() < K
  if layout == "muse":
    assert ex["text_emb"].shape == (T, DT) and ex["text_emb"].dtype == np.float32
  batch = {k: jnp.stack([src[i][k] for i in range(4)]) for k in ex}
  params = nn.meta.unbox(task.init(jax.random.key(0)))
  loss, aux = task.loss(params, batch, jax.random.key(1))
  assert np.isfinite(float(loss)) and 1.0 < float(loss) < 10.0
  assert set(aux) >= {"masked_accuracy", "mask_rate"} and float(aux["mask_rate"]) >= 0.5
  assert task.flops_per_example() > 0


def test_synthetic_tokens_are_class_structured():
  src = muse.SyntheticTokens(200, 16, 32, 4, seed=0, noise=0.0)
  by_class = {}
  for i in range(200):
    ex = src[i]
    by_class.setdefault(int(ex["label"]), set()).update(ex["ids"].tolist())
  assert len(by_class) == 4
  for c, codes in by_class.items():
    assert codes <= set(src.palettes[c].tolist())  # each class only uses its palette


def test_shapestyle_batches_mark_shape_tokens_and_foreground_weight_reweights_the_loss():
  config = config_lib.load_config(os.path.join(REPO, "configs/shapestyle.py:base,runlocal"))
  task = muse.MuseTask(config)
  src = task.source("train")
  exs = [src[i] for i in range(4)]
  batch = task.prepare_batch({k: np.stack([e[k] for e in exs]) for k in exs[0]})
  fg = ss.shape_token_mask(np.stack([e["mask"] for e in exs]), 4)  # runlocal: 32 px, 4x4 tokens
  np.testing.assert_array_equal(batch["foreground"], fg)
  assert 0 < fg.mean() < 1
  params = nn.meta.unbox(task.init(jax.random.key(0)))
  plain, aux = task.loss(params, batch, jax.random.key(1))
  assert 0.0 <= float(aux["shape_token_accuracy"]) <= 1.0
  config.model.foreground_weight = 4.0
  weighted, _ = muse.MuseTask(config).loss(params, batch, jax.random.key(1))
  assert abs(float(weighted) - float(plain)) > 1e-4
