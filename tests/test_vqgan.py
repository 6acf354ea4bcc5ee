"""VQGAN tokenizer: shapes, quantizer maths, the shortcut quirk, training, revival, losses, sharding."""
import os
import sys
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from stylejax import parallel
from stylejax.models import vqgan as vq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_config(**model) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.compute_dtype, c.remat, c.scan_layers = "float32", False, False
  c.model = ml_collections.ConfigDict(dict(
      filters=8, channel_multipliers=(1, 2), num_res_blocks=1, embedding_dim=8, codebook_size=16,
      quantizer="euclidean", maskgit_shortcut_quirk=False, recon_loss="l2", commitment=0.25,
      entropy_weight=0.0, gan_weight=0.0, image_size=16))
  c.model.update(model)
  c.data = ml_collections.ConfigDict(dict(name="procedural", image_size=16, num_examples=32, seed=0))
  return c


def key(seed: int) -> jax.Array:
  """rbg keys: param init compiles ~3x faster than with threefry on CPU."""
  return jax.random.key(seed, impl="rbg")


def tiny(**kw) -> vq.VQGAN:
  args = dict(filters=8, channel_multipliers=(1, 2, 2, 4), num_res_blocks=1, embedding_dim=4, codebook_size=16)
  args.update(kw)
  return vq.VQGAN(**args)


def unboxed_shapes(tree):
  return jax.tree.map(lambda a: a.shape, nn.meta.unbox(tree))


# ---------------------------------------------------------------------------------------------
# Shapes


def test_narrow_encoder_keeps_flat_colors():
  """GroupNorm with one channel per group (instance norm) maps every flat image to the same latents."""
  assert vq.num_groups(128) == 32 and vq.num_groups(32) == 8 and vq.num_groups(8) == 2
  model = tiny(filters=8, channel_multipliers=(1, 2))
  red = jnp.zeros((1, 8, 8, 3)).at[..., 0].set(1.0)
  blue = jnp.zeros((1, 8, 8, 3)).at[..., 2].set(1.0)
  variables = jax.jit(model.init)(key(0), red)
  z = jax.jit(partial(model.apply, method=vq.VQGAN.encode_features))(variables, jnp.concatenate([red, blue]))
  assert float(jnp.abs(z[0] - z[1]).max()) > 1e-2


@pytest.mark.parametrize("mults,factor", [((1, 2, 2, 4), 8), ((1, 1, 2, 2, 4), 16)])
def test_token_grid_shapes(mults, factor):
  model = tiny(channel_multipliers=mults)
  images = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(model.init, key(0), images)
  ids, quantized = jax.eval_shape(lambda v, x: model.apply(v, x, method=vq.VQGAN.encode), variables, images)
  assert ids.shape == (2, 32 // factor, 32 // factor) and ids.dtype == jnp.int32
  assert quantized.shape == (2, 32 // factor, 32 // factor, 4)
  recon, aux = jax.eval_shape(lambda v, x: model.apply(v, x, train=True), variables, images)
  assert recon.shape == images.shape
  assert all(a.shape == () for a in aux.values())
  # MaskGIT's module layout: level convs and blocks named as its auto-names (checkpoint compatibility).
  params = variables["params"]
  assert set(params) == {"encoder", "decoder", "quantizer"}
  assert unboxed_shapes(params["quantizer"]["codebook"]) == (16, 4)
  assert f"Conv_{len(mults)}" in params["decoder"] and f"Conv_{len(mults) + 1}" not in params["decoder"]
  n_blocks = len(mults) + 1  # (levels + 1) stages x 1 block
  assert f"ResBlock_{n_blocks - 1}" in params["decoder"] and f"ResBlock_{n_blocks}" not in params["decoder"]
  assert f"ResBlock_{n_blocks - 1}" in params["encoder"] and f"ResBlock_{n_blocks}" not in params["encoder"]


@pytest.fixture(scope="module")
def base():
  """The one tiny tokenizer most tests share (one init compile): f2, 8 filters, 16 codes x 8 dims."""
  task = vq.VQGANTask(make_config())
  params = nn.meta.unbox(jax.jit(task.init)(key(0)))
  return task, params


def test_encode_decode_roundtrip(base):
  task, params = base
  model, variables = task.model, {"params": params}
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 8, 8, 3)), jnp.float32)
  ids, quantized = jax.jit(partial(model.apply, method=vq.VQGAN.encode))(variables, images)
  assert ids.shape == (2, 4, 4) and ids.dtype == jnp.int32
  assert int(ids.min()) >= 0 and int(ids.max()) < 16
  out = jax.jit(partial(model.apply, method=vq.VQGAN.decode_ids))(variables, ids)
  assert out.shape == (2, 8, 8, 3) and out.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  # Quantized latents are exactly the codebook rows the ids name ...
  codebook = params["quantizer"]["codebook"]
  np.testing.assert_allclose(quantized, codebook[ids], rtol=1e-6, atol=1e-6)
  # ... and those ids are the nearest codes to the encoder features.
  z = jax.jit(partial(model.apply, method=vq.VQGAN.encode_features))(variables, images)
  dist = ((z[..., None, :] - codebook) ** 2).sum(-1)
  np.testing.assert_array_equal(ids, jnp.argmin(dist, -1))
  with pytest.raises(ValueError, match="divisible by 2"):
    jax.eval_shape(partial(model.apply, method=vq.VQGAN.encode), variables, jnp.zeros((1, 7, 7, 3)))


def test_straight_through_gradient_reaches_encoder_not_codebook(base):
  task, params = base
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 8, 8, 3)), jnp.float32)

  def recon_only(p):
    recon, _ = task.model.apply({"params": p}, images)
    return jnp.mean((recon - images) ** 2)

  grads = jax.jit(jax.grad(recon_only))(params)
  assert float(optax.tree.norm(grads["encoder"])) > 0  # through the argmin via straight-through
  # Forward uses the code, backward bypasses it: the reconstruction alone never moves the codebook.
  assert float(jnp.abs(grads["quantizer"]["codebook"]).max()) == 0.0


# ---------------------------------------------------------------------------------------------
# Quantizer


CODEBOOK = jnp.array([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])


@pytest.mark.parametrize("kind,expected", [("euclidean", 0), ("cosine", 2)])
def test_quantizer_picks_nearest_or_max_cosine(kind, expected):
  # z = (0.9, 0.8): squared distances (0.65, 0.85, 8.45) -> code 0; cosines (0.75, 0.66, 0.998) -> code 2.
  q = vq.VectorQuantizer(3, 2, kind)
  z = jnp.array([[[[0.9, 0.8], [0.0, 0.9]]]])  # [1, 1, 2, 2]; the 2nd vector is nearest code 1 either way
  quantized, ids, aux = jax.jit(q.apply)({"params": {"codebook": CODEBOOK}}, z)
  assert ids.tolist() == [[[expected, 1]]]
  codes = CODEBOOK / jnp.linalg.norm(CODEBOOK, axis=-1, keepdims=True) if kind == "cosine" else CODEBOOK
  np.testing.assert_allclose(quantized[0, 0], codes[jnp.array([expected, 1])], rtol=1e-6)
  assert float(aux["codebook_usage"]) == pytest.approx(2 / 3)
  assert float(aux["perplexity"]) == pytest.approx(2.0, rel=1e-6)


def test_vq_losses_and_their_gradients():
  q = vq.VectorQuantizer(3, 2, "euclidean")
  z = jnp.array([[[[0.9, 0.8], [0.0, 0.9]]]])
  names = ("commitment_loss", "codebook_loss", "dead_code_loss")

  @jax.jit
  def losses_and_grads(cb, z):
    aux_fn = lambda cb, z: q.apply({"params": {"codebook": cb}}, z, train=True)[2]
    grads = {n: jax.grad(lambda c, x: aux_fn(c, x)[n], argnums=(0, 1))(cb, z) for n in names}
    return aux_fn(cb, z), grads

  aux, grads = losses_and_grads(CODEBOOK, z)
  # ||sg(e) - z||^2 and ||e - sg(z)||^2 have the same value: mean over both vectors and both dims ...
  expected = ((0.1 ** 2 + 0.8 ** 2) + (0.0 + 0.1 ** 2)) / 4
  assert float(aux["commitment_loss"]) == pytest.approx(expected)
  assert float(aux["codebook_loss"]) == pytest.approx(expected)
  # ... but the commitment term moves only the encoder output and the codebook term only the codes.
  nonzero = lambda g: float(jnp.abs(g).max()) > 0
  assert nonzero(grads["commitment_loss"][1]) and not nonzero(grads["commitment_loss"][0])
  assert nonzero(grads["codebook_loss"][0]) and not nonzero(grads["codebook_loss"][1])
  # Only code 2 is unused: the dead-code loss pulls it (alone) toward its nearest feature, z itself fixed.
  assert float(aux["dead_code_loss"]) == pytest.approx((3 - 0.9) ** 2 + (3 - 0.8) ** 2, rel=1e-6)
  g_cb, g_z = grads["dead_code_loss"]
  assert not nonzero(g_cb[:2]) and float(jnp.abs(g_cb[2]).min()) > 0 and not nonzero(g_z)


def test_entropy_loss_rewards_spread_assignments():
  # MaskGIT form: sample entropy minus entropy of the mean distribution.
  confident_same = jnp.array([[10.0, 0.0], [10.0, 0.0]])
  confident_spread = jnp.array([[10.0, 0.0], [0.0, 10.0]])
  assert float(vq.entropy_loss(confident_spread, 1.0)) < float(vq.entropy_loss(confident_same, 1.0)) - 0.5
  assert float(vq.entropy_loss(confident_spread, 1.0)) == pytest.approx(-np.log(2), abs=1e-3)


# ---------------------------------------------------------------------------------------------
# The MaskGIT shortcut quirk


@pytest.mark.parametrize("quirk", [False, True])
def test_resblock_shortcut_source(quirk):
  block = vq.ResBlock(8, maskgit_shortcut_quirk=quirk)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 4, 4)), jnp.float32)
  params = nn.meta.unbox(jax.jit(block.init)(key(1), x)["params"])
  w = params["Conv_2"]["kernel"]
  apply = jax.jit(block.apply)
  assert w.shape == ((1, 1, 8, 8) if quirk else (1, 1, 4, 8))
  main = apply({"params": {**params, "Conv_2": {"kernel": jnp.zeros_like(w)}}}, x)  # shortcut = 0
  out = apply({"params": params}, x)
  projected = jnp.einsum("bhwc,cd->bhwd", main if quirk else x, w[0, 0])
  np.testing.assert_allclose(out - main, projected, atol=1e-5)


def test_quirk_changes_output_but_not_param_names(base):
  task, p_sound = base
  quirk = vq.VQGANTask(make_config(maskgit_shortcut_quirk=True)).model
  abstract = nn.meta.unbox(jax.eval_shape(quirk.init, key(0), jnp.zeros((1, 8, 8, 3)))["params"])
  assert jax.tree.structure(abstract) == jax.tree.structure(p_sound)  # same names: MaskGIT checkpoints map
  flat_s = dict(jax.tree_util.tree_leaves_with_path(p_sound))
  flat_q = dict(jax.tree_util.tree_leaves_with_path(abstract))
  shortcuts = [k for k in flat_s if jax.tree_util.keystr(k).endswith("['Conv_2']['kernel']")
               and "ResBlock" in jax.tree_util.keystr(k)]
  assert len(shortcuts) == 2  # channels change once in the encoder (8->16) and once in the decoder (16->8)
  rng = np.random.default_rng(0)
  p_quirk = {}
  for k, a in flat_s.items():
    b = flat_q[k]
    if k in shortcuts:  # the only difference: [1, 1, C_in, C_out] vs [1, 1, C_out, C_out]
      assert a.shape[:2] == b.shape[:2] == (1, 1) and a.shape[3] == b.shape[3] == b.shape[2] != a.shape[2]
      p_quirk[k] = jnp.asarray(rng.normal(size=b.shape) / np.sqrt(b.shape[2]), jnp.float32)
    else:
      assert a.shape == b.shape
      p_quirk[k] = a
  p_quirk = jax.tree.unflatten(jax.tree.structure(p_sound), [p_quirk[k] for k in flat_s])
  images = jnp.asarray(rng.uniform(size=(1, 8, 8, 3)), jnp.float32)
  out_s, _ = jax.jit(task.model.apply)({"params": p_sound}, images)
  out_q, _ = jax.jit(quirk.apply)({"params": p_quirk}, images)
  assert out_s.shape == out_q.shape and float(jnp.abs(out_s - out_q).max()) > 1e-4


# ---------------------------------------------------------------------------------------------
# Training through the Task (one compiled step shared by the training tests)


@pytest.fixture(scope="module")
def trainer(base):
  task, params = base
  src = task.source("train")
  data = jnp.asarray(np.stack([src[i]["image"] for i in range(len(src))]))
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt, rng):
    (_, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(params, {"image": data}, rng)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, aux

  @jax.jit
  def evaluate(params):
    variables = {"params": params}
    ids, _ = task.model.apply(variables, data, method=vq.VQGAN.encode)
    out = task.model.apply(variables, ids, method=vq.VQGAN.decode_ids)
    usage = jnp.mean((vq.code_counts(ids, 16) > 0).astype(jnp.float32))
    return jnp.mean(jnp.abs(out - data)), usage

  def train(params, steps, revive_every=0):
    opt = tx.init(params)
    revive = jax.jit(task.revive)
    for i in range(steps):
      params, opt, aux = step(params, opt, key(i))
      if revive_every and i % revive_every == 0:
        params = revive(params, {"image": data}, key(10_000 + i))
    return params, aux

  return task, params, train, evaluate


def test_training_improves_token_reconstruction(trainer):
  task, params, train, evaluate = trainer
  before, _ = evaluate(params)
  trained, aux = train(params, 40)
  after, _ = evaluate(trained)
  assert float(after) < 0.6 * float(before), (float(before), float(after))
  for name in ("recon_loss", "commitment_loss", "codebook_loss", "perplexity", "codebook_usage"):
    assert name in aux and np.isfinite(float(aux[name]))


def test_revival_raises_codebook_usage(trainer):
  task, params, train, evaluate = trainer
  # A collapsed start: codes shifted far from every encoder feature, so only the few extreme codes win.
  cb = params["quantizer"]["codebook"]
  collapsed = dict(params, quantizer={"codebook": cb + 5.0})
  _, usage0 = evaluate(collapsed)
  plain, _ = train(collapsed, 60)
  revived, _ = train(collapsed, 60, revive_every=20)
  _, usage_plain = evaluate(plain)
  _, usage_revived = evaluate(revived)
  print("usage", float(usage0), float(usage_plain), float(usage_revived))
  assert float(usage0) <= 0.25
  assert float(usage_plain) <= 0.25  # unused codes get no gradient: they stay dead
  assert float(usage_revived) >= float(usage_plain) + 0.5, (float(usage_plain), float(usage_revived))


def test_revive_dead_codes_replaces_only_dead_rows():
  codebook = jnp.arange(12.0).reshape(4, 3)
  features = 100.0 + jnp.arange(15.0).reshape(5, 3)
  counts = jnp.array([5.0, 0.0, 2.0, 0.5])
  new = vq.revive_dead_codes(codebook, counts, features, key(0), threshold=1.0)
  np.testing.assert_array_equal(new[jnp.array([0, 2])], codebook[jnp.array([0, 2])])
  rows = {tuple(r) for r in np.asarray(features).tolist()}
  assert tuple(np.asarray(new[1]).tolist()) in rows and tuple(np.asarray(new[3]).tolist()) in rows
  assert not np.array_equal(new[1], new[3])  # drawn without replacement


def test_merge_codebook_merges_used_near_twins_and_drops_unused():
  rng = np.random.default_rng(0)
  centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  # 3 visual patches, each spread over 4 near-twin codes; codes 12.. are never used and lie far away.
  codebook = np.concatenate([np.repeat(centers, 4, axis=0) + 0.01 * rng.normal(size=(12, 2)),
                             np.full((20, 2), 500.0)]).astype(np.float32)
  ids = np.concatenate([np.arange(12)] * 5 + [np.zeros(40, int)])  # code 0 used far more than its twins
  merged = vq.merge_codebook(codebook, ids, 3)
  assert merged.shape == (3, 2) and merged.dtype == np.float32
  got = merged[np.argsort(merged[:, 0] + 2 * merged[:, 1])]
  np.testing.assert_allclose(got, centers, atol=0.05)
  np.testing.assert_array_equal(merged, vq.merge_codebook(codebook, ids, 3))  # deterministic
  # usage weighting: the centroid of patch 0 sits at the usage-weighted mean of its twins
  w = np.bincount(ids, minlength=32)[:4].astype(float)
  np.testing.assert_allclose(got[0], (w[:, None] * codebook[:4]).sum(0) / w.sum(), atol=1e-5)
  with pytest.raises(ValueError, match="only 12 codes are used"):
    vq.merge_codebook(codebook, ids, 16)


# ---------------------------------------------------------------------------------------------
# GAN, perceptual, data, sharding


def test_gan_loss_routes_gradients_with_stop_gradient(base):
  plain, vq_params = base
  images = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 8, 8, 3)), jnp.float32)
  gan = vq.VQGANTask(make_config(gan_weight=0.5, disc_filters=4, disc_layers=1))
  assert "discriminator" in jax.eval_shape(gan.init, key(0)) and "discriminator" not in vq_params
  d_params = nn.meta.unbox(jax.jit(gan.discriminator.init)(key(1), images)["params"])
  batch, rng = {"image": images}, key(3)
  disc = lambda p, x: gan.discriminator.apply({"params": p}, x)

  @jax.jit
  def all_grads():
    total, aux = jax.grad(gan.loss, has_aux=True)(dict(vq_params, discriminator=d_params), batch, rng)
    no_gan, _ = jax.grad(plain.loss, has_aux=True)(vq_params, batch, rng)
    recon = lambda p: gan.model.apply({"params": p}, images)[0]
    generator = jax.grad(lambda p: 0.5 * vq.hinge_generator_loss(disc(d_params, recon(p))))(vq_params)
    discriminator = jax.grad(lambda d: vq.hinge_discriminator_loss(disc(d, images), disc(d, recon(vq_params))))(
        d_params)
    return total, aux, no_gan, generator, discriminator

  total, aux, no_gan, generator, discriminator = all_grads()
  assert {"gan_generator_loss", "gan_discriminator_loss"} <= set(aux)
  # The discriminator learns only from the hinge D loss ...
  for a, b in zip(jax.tree.leaves(total["discriminator"]), jax.tree.leaves(discriminator)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # ... and the tokenizer only from its own terms plus gan_weight * hinge G (the D loss adds nothing).
  expected = jax.tree.map(jnp.add, no_gan, generator)
  for a, b in zip(jax.tree.leaves(gan.vqgan_params(total)), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)
  assert float(optax.tree.norm(generator["decoder"])) > 0


def test_perceptual_loss_uses_user_features(base):
  _, params = base
  x = jnp.asarray(np.random.default_rng(3).uniform(size=(2, 8, 8, 3)), jnp.float32)
  feats = lambda im: [im.mean(axis=(1, 2)), im[..., :1]]
  assert float(vq.perceptual_loss(feats, x, x)) == 0.0
  assert float(vq.perceptual_loss(feats, x + 0.1, x, [1.0, 0.0])) == pytest.approx(0.01, rel=1e-4)
  with pytest.raises(ValueError, match="perceptual_fn"):
    vq.VQGANTask(make_config(perceptual_weight=1.0))
  task = vq.VQGANTask(make_config(perceptual_weight=1.0), perceptual_fn=feats)
  _, aux = jax.jit(task.loss)(params, {"image": x}, key(1))
  assert float(aux["perceptual_loss"]) > 0


def test_perceptual_loss_from_a_clip_named_in_the_config(base):
  """config.perceptual names a CLIP: its vision hidden states, LPIPS-normalised, are the features."""
  from stylejax.models import clip
  from stylejax.train.trainer import load_part
  _, params = base
  rng = np.random.default_rng(4)
  x, y = (jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32) for _ in range(2))
  spec = dict(config=os.path.join(REPO, "configs/shapestyle.py:clip,runlocal"), layers=[0, 1])
  config = make_config(perceptual_weight=0.5)
  config.perceptual = ml_collections.ConfigDict(spec)
  task = vq.VQGANTask(config)
  _, aux = jax.jit(task.loss)(params, {"image": x}, key(1))
  assert float(aux["perceptual_loss"]) > 0
  # By hand: per position 2 - 2 cos of the raw hidden states, averaged; summed over the chosen layers.
  model, clip_params = load_part(config=spec["config"])
  states = lambda im: model.model.apply({"params": clip_params}, clip.preprocess_images(im, 32),
                                        method=lambda m, v: m.vision_model(v)[2])
  sx, sy = states(x), states(y)
  cos = lambda a, b: jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))
  expected = sum(float(jnp.mean(2 - 2 * cos(sx[i], sy[i]))) for i in (0, 1))
  assert float(vq.perceptual_loss(task.perceptual_fn, x, y)) == pytest.approx(expected, rel=1e-3)
  assert float(vq.perceptual_loss(task.perceptual_fn, x, x)) == pytest.approx(0.0, abs=1e-6)
  config.perceptual.layers = [0, 5]
  with pytest.raises(ValueError, match="hidden states 0..1"):
    jax.jit(vq.VQGANTask(config).loss)(params, {"image": x}, key(1))
  config.perceptual.update(layers=[0], config=os.path.join(REPO, "configs/shapestyle.py:content,runlocal"))
  with pytest.raises(ValueError, match="must name a CLIP run"):
    jax.jit(vq.VQGANTask(config).loss)(params, {"image": x}, key(1))


def test_procedural_source_and_shapestyle_error(monkeypatch):
  task = vq.VQGANTask(make_config())
  train, test = task.source("train"), task.source("test")
  assert len(train) == 32
  a, b = train[3]["image"], train[3]["image"]
  assert a.shape == (16, 16, 3) and a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, test[3]["image"]) and not np.array_equal(a, train[4]["image"])
  assert len(np.unique(a.reshape(-1, 3), axis=0)) >= 2  # a background and at least one shape
  monkeypatch.setitem(sys.modules, "stylejax.data.shapestyle", None)  # import now fails
  config = make_config()
  config.data.name = "shapestyle"
  with pytest.raises(ValueError, match="procedural"):
    vq.VQGANTask(config).source()


def test_params_carry_logical_names_and_shard():
  task = vq.VQGANTask(make_config(filters=8, embedding_dim=8, gan_weight=1.0, disc_filters=4, disc_layers=1))
  boxed = jax.eval_shape(task.init, key(0))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == len(leaf.value.shape)
  assert boxed["quantizer"]["codebook"].names == ("codebook", None)
  assert boxed["encoder"]["Conv_0"]["kernel"].names == (None, None, "conv_in", "conv_out")
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  from configs.common import LOGICAL_AXIS_RULES
  params, _ = parallel.init_sharded(task.init, key(0), mesh, LOGICAL_AXIS_RULES)
  assert params["encoder"]["Conv_0"]["kernel"].sharding.spec == jax.P(None, None, None, "tensor")
  assert params["quantizer"]["codebook"].sharding.is_fully_replicated
  assert params["decoder"]["Conv_2"]["kernel"].sharding.is_fully_replicated  # the RGB head: 3 channels


def test_foreground_weighted_reconstruction_loss():
  recon, target = jnp.zeros((1, 2, 2, 3)), jnp.ones((1, 2, 2, 3)).at[0, 0, 0].set(0.0)
  mask = jnp.asarray([[[1.0, 0.0], [0.0, 0.0]]])
  # Unweighted: 3 of 4 pixels wrong. Foreground weight 9 on the one right pixel: (0*10 + 3*1) / 13.
  assert float(vq.reconstruction_loss(recon, target)) == pytest.approx(0.75)
  assert float(vq.reconstruction_loss(recon, target, weight=1.0 + 9.0 * mask)) == pytest.approx(3 / 13)
  task = vq.VQGANTask(make_config(foreground_weight=9.0))
  params = nn.meta.unbox(task.init(key(0)))
  with pytest.raises(ValueError, match="foreground 'mask'"):
    task.loss(params, {"image": jnp.zeros((1, 16, 16, 3))}, key(1))
  loss, _ = task.loss(params, {"image": jnp.zeros((1, 16, 16, 3)), "mask": jnp.ones((1, 16, 16))}, key(1))
  assert np.isfinite(float(loss))


def test_wider_decoder_and_frozen_codes_train_only_the_decoder():
  """Muse's decoder fine-tuning: a wider/deeper decoder on frozen codes gets gradients; encoder and codebook
  get exactly none, and the reconstruction loss is the full model's (same codes, same decoder)."""
  wide = dict(decoder_channel_multipliers=(2, 4), decoder_res_blocks=2)
  task = vq.VQGANTask(make_config(**wide))
  params = nn.meta.unbox(task.init(key(0)))
  assert params["decoder"]["Conv_0"]["kernel"].shape[-1] == 8 * 4  # filters x the decoder's last multiplier
  assert params["encoder"]["Conv_1"]["kernel"].shape[-2] == 8 * 2  # the encoder keeps its own widths
  assert len([k for k in params["decoder"] if k.startswith("ResBlock")]) == 2 * 3  # 2 per level + middle
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 16, 16, 3)), jnp.float32)
  frozen = vq.VQGANTask(make_config(frozen_codes=True, **wide))
  grad = lambda t: jax.jit(jax.grad(t.loss, has_aux=True))(params, {"image": images}, key(1))  # jitted: one compile, no eager dispatch
  grads, aux = grad(frozen)
  for part in ("encoder", "quantizer"):
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads[part])), part
  assert float(optax.tree.norm(grads["decoder"])) > 0
  full_grads, full = grad(task)
  assert float(aux["recon_loss"]) == pytest.approx(float(full["recon_loss"]), rel=1e-6)
  assert float(optax.tree.norm(full_grads["encoder"])) > 0  # the unfrozen model does train its encoder
  with pytest.raises(ValueError, match="as many levels"):
    vq.VQGANTask(make_config(decoder_channel_multipliers=(1, 2, 2))).init(key(0))


def test_extra_decoder_blocks_start_as_the_identity_and_keep_names():
  """Blocks grown onto a trained decoder: the old params keep their names and shapes, and until the new
  blocks train the decoder's output is exactly the old one's."""
  old, grown = tiny(), tiny(decoder_extra_blocks=(0, 1, 0, 2))
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)), jnp.float32)
  p_old = nn.meta.unbox(old.init(key(0), images)["params"])
  p_new = nn.meta.unbox(grown.init(key(1), images)["params"])
  extra = sorted(k for k in p_new["decoder"] if k not in p_old["decoder"])
  assert extra == ["Extra_1_0", "Extra_3_0", "Extra_3_1"]
  assert unboxed_shapes({k: p_new["decoder"][k] for k in p_old["decoder"]}) == unboxed_shapes(p_old["decoder"])
  merged = dict(p_old, decoder={**p_new["decoder"], **p_old["decoder"]})
  np.testing.assert_array_equal(np.asarray(grown.apply({"params": merged}, images)[0]),
                                np.asarray(old.apply({"params": p_old}, images)[0]))
  bumped = jax.tree.map(lambda a: a + 0.1, merged["decoder"]["Extra_3_0"])  # trained: no longer the identity
  changed = dict(merged, decoder={**merged["decoder"], "Extra_3_0": bumped})
  assert not np.allclose(grown.apply({"params": changed}, images)[0], old.apply({"params": p_old}, images)[0])
