"""StyleDrop bottleneck adapters and LoRA: zero-init identity, separate subtree, freezing, config."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from stylejax.models import muse
from stylejax.nn import adapters as ad
from stylejax.train.optim import make_optimizer, path_str

K, L, C, DT, T = 16, 16, 5, 12, 3


def config(layout="maskgit", **adapter_kw):
  return muse.MuseConfig(layout=layout, codebook_size=K, seq_len=L, width=32, depth=2, heads=4, mlp_dim=64,
                         num_classes=C, text_dim=DT, text_len=T, dropout=0.0, gated_mlp=True,
                         adapters=ad.AdapterConfig(**adapter_kw))


def inputs(c, batch=2):
  r1, r2 = jax.random.split(jax.random.key(1))
  ids = jax.random.randint(r1, (batch, L), 0, K).at[:, ::2].set(c.mask_id)
  cond = jax.random.randint(r2, (batch,), 0, C) if c.layout == "maskgit" else jax.random.normal(r2, (batch, T, DT))
  return ids, cond


def init(c, seed=0):
  ids, cond = muse.dummy_inputs(c)
  return nn.meta.unbox(muse.MaskedTransformer(c).init(jax.random.key(seed), ids, cond)["params"])


def forward(c, params, ids, cond, **kw):
  return muse.MaskedTransformer(c).apply({"params": params}, ids, cond, **kw)[0]


def randomize(tree, scale=1.0):
  """Non-zero, non-constant weights (a constant W_up would be undone by a following LayerNorm)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  return treedef.unflatten([x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


CASES = [("maskgit", dict(kind="styledrop", rank=4)),
         ("muse", dict(kind="styledrop", rank=4, mode="shared")),
         ("maskgit", dict(kind="lora", rank=2, alpha=4.0, targets=("query", "value", "out", "mlp_in", "mlp_out"))),
         ("muse", dict(kind="lora", rank=2, mode="shared", layers=(1,)))]


@pytest.mark.parametrize("layout,kw", CASES)
def test_zero_init_is_exactly_the_base_model(layout, kw):
  tuned_cfg, base_cfg = config(layout, **kw), config(layout)
  tuned = init(tuned_cfg)
  base, adapter_params = muse.split_adapters(tuned)
  # The base part of a tuned tree is the base model's tree: base checkpoints load as they are.
  assert jax.tree.structure(base) == jax.tree.structure(init(base_cfg))
  assert adapter_params is not None and muse.with_adapters(base, adapter_params)["embed"] is tuned["embed"]
  ids, cond = inputs(tuned_cfg)
  ref = forward(base_cfg, base, ids, cond)
  np.testing.assert_array_equal(forward(tuned_cfg, tuned, ids, cond), ref)
  np.testing.assert_array_equal(forward(tuned_cfg, tuned, ids, cond, adapters=False), ref)
  # Every adapter leaf lives under adapters/ and the base regex leaves them out.
  paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tuned)]
  frozen = [p for p in paths if re.search(r"^(?!.*adapter).*", p)]
  assert set(paths) - set(frozen) == {p for p in paths if p.startswith("adapters/")} != set()


@pytest.mark.parametrize("layout,kw", CASES[:1] + CASES[3:])
def test_nonzero_adapter_changes_output_and_adapters_false_ignores_it(layout, kw):
  c = config(layout, **kw)
  params = init(c)
  params["adapters"] = randomize(params["adapters"])
  ids, cond = inputs(c)
  base = forward(c, params, ids, cond, adapters=False)
  assert not np.allclose(forward(c, params, ids, cond), base, atol=1e-4)
  np.testing.assert_array_equal(base, forward(config(layout), muse.split_adapters(params)[0], ids, cond))


def test_adapter_only_optax_step_changes_only_adapters():
  c = config("muse", kind="styledrop", rank=4)
  params = init(c)
  ids, cond = inputs(c)
  opt = ml_collections.ConfigDict(dict(name="adam", lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                                       schedule="constant", warmup_steps=0, grad_clip_norm=0.0,
                                       freeze=[], trainable=["^adapters/"]))
  tx, mask, _ = make_optimizer(opt, params, total_steps=10)
  state = tx.init(params)
  # frozen params carry no optimizer state at all
  n_state = sum(x.size for x in jax.tree.leaves(state))
  n_adapters = sum(x.size for x in jax.tree.leaves(params["adapters"]))
  assert n_state <= 2 * n_adapters + 8

  def loss_fn(p):
    logits = forward(c, p, ids, cond)
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  grads = jax.jit(jax.grad(loss_fn))(params)
  updates, _ = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  for path, old in jax.tree_util.tree_leaves_with_path(params):
    name = path_str(path)
    changed = not np.array_equal(old, _get(new, path))
    if name.startswith("adapters/"):
      # W_up moves at once; W_down only once W_up is non-zero (its gradient is zero at init)
      assert changed == name.endswith("/up"), name
    else:
      assert not changed, name


def _get(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree


def test_scanned_and_unscanned_share_adapter_params():
  kw = dict(kind="lora", rank=2, targets=("key", "mlp_gate"), layers=(0,))
  c = config("maskgit", **kw)
  params = init(c)
  params["adapters"] = randomize(params["adapters"])
  ids, cond = inputs(c)
  ref = forward(c, params, ids, cond)
  cs = muse.MuseConfig(**{**c.__dict__, "scan_layers": True})
  out = jax.jit(muse.MaskedTransformer(cs).apply)({"params": muse.stack_layers(params, c.depth)}, ids, cond)[0]
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_bank_layout_layers_and_modes():
  sites = (ad.Site("self_attn", "adapter", (8,), ("embed",), (8,), ("embed",), aliases=("self_attn",)),)
  bank = ad.AdapterBank(ad.AdapterConfig(kind="styledrop", rank=3, layers=(2,)), depth=4, sites=sites)
  v = bank.init(jax.random.key(0))
  p = nn.meta.unbox(v["params"])
  assert p["self_attn"]["adapter"]["down"].shape == (1, 8, 3) and p["self_attn"]["adapter"]["up"].shape == (1, 3, 8)
  assert not np.any(p["self_attn"]["adapter"]["up"])
  boxed = v["params"]["self_attn"]["adapter"]["down"]
  assert boxed.names == ("layers", "embed", "adapter")
  down, up = bank.apply({"params": p})["self_attn"]["adapter"]
  assert down.shape == (4, 8, 3)
  assert not np.any(np.asarray(down)[[0, 1, 3]]) and np.any(down[2])  # only layer 2 is tuned
  shared = ad.AdapterBank(ad.AdapterConfig(kind="styledrop", rank=3, mode="shared"), depth=4, sites=sites)
  sp = nn.meta.unbox(shared.init(jax.random.key(0))["params"])["self_attn"]["adapter"]
  assert set(sp) == {"down_shared", "down_offset", "up_shared", "up_offset"}
  assert sp["down_shared"].shape == (8, 3) and sp["down_offset"].shape == (4, 8, 3)
  assert not np.any(sp["down_offset"]) and not np.any(sp["up_offset"]) and not np.any(sp["up_shared"])
  sp = dict(sp, down_offset=sp["down_offset"].at[1].set(1.0))
  down, _ = shared.apply({"params": {"self_attn": {"adapter": sp}}})["self_attn"]["adapter"]
  np.testing.assert_allclose(down[0], sp["down_shared"])
  np.testing.assert_allclose(down[1], sp["down_shared"] + 1.0)


def test_formulas_by_hand():
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  down, up = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32), jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
  expected = a + jnp.asarray(nn.gelu(a @ down) @ up)
  np.testing.assert_allclose(ad.bottleneck(a, (down, up)), expected, rtol=1e-6)
  # LoRA onto a head-shaped output: x [.., D] A [D, r] B [r, H, Dh], scale alpha / r
  A, B = jnp.asarray(rng.normal(size=(4, 2))), jnp.asarray(rng.normal(size=(2, 3, 5)))
  cfg = ad.AdapterConfig(kind="lora", rank=2, alpha=8.0)
  assert cfg.scale == 4.0 and ad.AdapterConfig(kind="lora", rank=2).scale == 1.0
  out = ad.lora_delta(a, (A, B), cfg.scale)
  np.testing.assert_allclose(out, 4.0 * np.einsum("bld,dr,rhk->blhk", a, A, B), rtol=1e-5, atol=1e-5)
  assert not np.any(ad.lora_delta(a, (A, jnp.zeros_like(B)), cfg.scale))


def test_config_parsing_and_errors():
  cfg = ad.AdapterConfig.from_config(ml_collections.ConfigDict(
      dict(kind="lora", rank=16, alpha=32.0, layers="all", targets=["query", "key", "value"])))
  assert cfg.layers is None and cfg.targets == ("query", "key", "value") and cfg.scale == 2.0
  assert ad.AdapterConfig.from_config(dict(kind="styledrop", layers=[3, 1])).layer_ids(4) == (1, 3)
  assert not ad.AdapterConfig.from_config(None).enabled
  with pytest.raises(ValueError, match="kind"):
    ad.AdapterConfig(kind="bogus")
  with pytest.raises(ValueError, match="unknown adapters config"):
    ad.AdapterConfig.from_config(dict(kind="lora", ranks=3))
  with pytest.raises(ValueError, match="layers"):
    ad.AdapterConfig(kind="lora", layers=(5,)).layer_ids(2)
  with pytest.raises(ValueError, match="match no lora site"):
    init(config("maskgit", kind="lora", targets=("cross_attn.query",)))  # maskgit has no cross-attention
  sites = muse.get_layout("muse").adapter_sites(config("muse", kind="lora"))
  chosen = ad.AdapterConfig(kind="lora", targets=("out", "cross_attn.query")).select_sites(sites)
  assert [s.key for s in chosen] == ["self_attn.out", "cross_attn.query", "cross_attn.out"]
