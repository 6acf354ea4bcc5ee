"""CLIP: parity with transformers' CLIPModel, HF weight round trips, EOS pooling, logical names,
and the byte-level BPE caption tokenizer."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from configs.common import LOGICAL_AXIS_RULES
from stylejax.data import text_tokenizer
from stylejax.models import clip
from stylejax.weights import hf_clip

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _hf_config(hidden_act: str, eos_token_id: int):
  # Text and vision widths differ and the MLP width is odd, so swapped configs or transposes fail.
  return transformers.CLIPConfig(
      text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=16, hidden_act=hidden_act,
                       pad_token_id=0, bos_token_id=3, eos_token_id=eos_token_id),
      vision_config=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                         image_size=32, patch_size=8, hidden_act=hidden_act),
      projection_dim=16, logit_scale_init_value=2.0)


def _inputs(eos_token_id: int):
  rng = np.random.default_rng(0)
  ids = rng.integers(4, 100, size=(3, 10))
  mask = np.ones_like(ids)
  for row, eos_at in enumerate((9, 4, 6)):  # right padding after EOS
    ids[row, eos_at] = eos_token_id if eos_token_id != 2 else 99  # legacy configs pool at the max id
    ids[row, eos_at + 1:] = 0
    mask[row, eos_at + 1:] = 0
  pixels = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  return ids, mask, pixels


def _hf_outputs(model, ids, mask, pixels):
  with torch.no_grad():
    t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)
    t_pix = torch.tensor(pixels.transpose(0, 3, 1, 2))  # NHWC -> NCHW
    out = model(input_ids=t_ids, pixel_values=t_pix, attention_mask=t_mask)
    hidden = model.vision_model(pixel_values=t_pix, output_hidden_states=True).hidden_states
    assert len(hidden) == model.config.vision_config.num_hidden_layers + 1
    return dict(
        text=model.get_text_features(input_ids=t_ids, attention_mask=t_mask).pooler_output.numpy(),
        image=model.get_image_features(pixel_values=t_pix).pooler_output.numpy(),
        hidden=hidden[-2].numpy(), first_hidden=hidden[0].numpy(),
        per_image=out.logits_per_image.numpy(), per_text=out.logits_per_text.numpy())


def _our_outputs(model, params, ids, mask, pixels):
  @jax.jit  # one compile instead of many eager op dispatches
  def run(params, ids, mask, pixels):
    v = {"params": params}
    (per_image, per_text), aux = model.apply(v, ids, pixels, mask)
    return dict(
        text=model.apply(v, ids, mask, method="get_text_features"),
        image=model.apply(v, pixels, method="get_image_features"),
        hidden=model.apply(v, pixels, method="encode_image_hidden"),
        first_hidden=model.apply(v, pixels, 0, method="encode_image_hidden"),
        per_image=per_image, per_text=per_text), aux
  return run(params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pixels))


def _assert_close(ours, theirs):
  for k in theirs:
    np.testing.assert_allclose(np.asarray(ours[k]), theirs[k], atol=TOL, rtol=TOL, err_msg=k)


@pytest.mark.parametrize("hidden_act,eos_token_id", [("quick_gelu", 1), ("gelu", 2)])
def test_load_hf_matches_transformers(tmp_path, hidden_act, eos_token_id):
  torch.manual_seed(0)
  hf = transformers.CLIPModel(_hf_config(hidden_act, eos_token_id)).eval()
  hf.save_pretrained(tmp_path, safe_serialization=True)
  model, params, config = hf_clip.load_hf(str(tmp_path))
  assert config.text.intermediate_size == 37 and config.vision.hidden_size == 24
  assert config.text.eos_token_id == eos_token_id and config.text.hidden_act == hidden_act
  ids, mask, pixels = _inputs(eos_token_id)
  theirs = _hf_outputs(hf, ids, mask, pixels)
  ours, aux = _our_outputs(model, params, ids, mask, pixels)
  assert ours["hidden"].shape == (2, 1 + 16, 24)
  _assert_close(ours, theirs)
  np.testing.assert_allclose(aux["logit_scale"], np.exp(2.0), rtol=1e-6)


@pytest.fixture(scope="module")
def tiny():
  """Our tiny CLIP (eos id 1) with boxed random params (numpy-filled: compiling init is slow on CPU;
  the sharding test runs the real init)."""
  config = clip.CLIPConfig.tiny(vocab_size=100, hidden=32, layers=2, heads=4, image_size=32, patch_size=8)
  model = clip.CLIPModel(config)
  rng = np.random.default_rng(1)
  shapes = jax.eval_shape(lambda: clip.init_params(model, jax.random.key(1)))
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.2, s.shape), jnp.float32), shapes)
  return config, model, params


def test_save_hf_roundtrip_through_transformers(tmp_path, tiny):
  config, model, params = tiny
  hf_clip.save_hf(params, config, str(tmp_path))
  hf = transformers.CLIPModel.from_pretrained(str(tmp_path)).eval()
  ids, mask, pixels = _inputs(config.text.eos_token_id)
  ours, _ = _our_outputs(model, nn.unbox(params), ids, mask, pixels)
  _assert_close(ours, _hf_outputs(hf, ids, mask, pixels))
  # and back: the reloaded params are bit-identical
  _, reloaded, config2 = hf_clip.load_hf(str(tmp_path))
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, reloaded, nn.unbox(params))


def test_load_hf_reports_every_bad_key_at_once(tmp_path, tiny):
  config, _, params = tiny
  hf_clip.save_hf(params, config, str(tmp_path))
  file = os.path.join(tmp_path, "model.safetensors")
  tensors = load_file(file)
  del tensors["text_model.encoder.layers.1.mlp.fc1.bias"]
  tensors["vision_model.encoder.layers.0.self_attn.q_proj.weight"] = np.zeros((5, 32), np.float32)
  tensors["vision_model.extra_head.weight"] = np.zeros((3,), np.float32)
  tensors["text_model.embeddings.position_ids"] = np.arange(16)[None]  # legacy buffer: ignored
  save_file(tensors, file, metadata={"format": "pt"})
  with pytest.raises(ValueError) as err:
    hf_clip.load_hf(str(tmp_path))
  msg = str(err.value)
  assert "missing: text_model.encoder.layers.1.mlp.fc1.bias" in msg
  assert "shape: vision_model.encoder.layers.0.self_attn.q_proj.weight" in msg
  assert "unexpected: vision_model.extra_head.weight" in msg
  assert "position_ids" not in msg
  os.remove(file)
  with pytest.raises(ValueError, match="no model.safetensors"):
    hf_clip.load_hf(str(tmp_path))


def test_eos_positions_follow_hf_rule():
  ids = jnp.array([[0, 7, 9, 1, 1, 1], [0, 1, 5, 6, 1, 2]])
  np.testing.assert_array_equal(clip.eos_positions(ids, 1), [3, 1])  # first EOS, even if pad == EOS
  np.testing.assert_array_equal(clip.eos_positions(ids, 2), [2, 3])  # legacy: argmax of the ids


def test_text_features_pool_at_eos(tiny):
  config, model, params = tiny
  assert config.text.eos_token_id == 1
  feats = jax.jit(lambda ids: model.apply({"params": nn.unbox(params)}, ids, method="get_text_features"))
  base, after, before = feats(jnp.array([
      [0, 5, 6, 7, 1, 2, 2, 2],
      [0, 5, 6, 7, 1, 9, 9, 1],  # tokens after the EOS cannot matter
      [0, 5, 8, 7, 1, 2, 2, 2]]))  # tokens before it must
  np.testing.assert_allclose(base, after, atol=1e-6)
  assert np.abs(base - before).max() > 1e-3


def test_params_carry_logical_names_and_shard():
  config = clip.CLIPConfig.tiny()
  model = clip.CLIPModel(config)
  boxed = jax.eval_shape(lambda: clip.init_params(model, jax.random.key(0)))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  allowed = {name for name, _ in LOGICAL_AXIS_RULES} | {None}
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for x in leaves:
    assert len(x.names) == len(x.value.shape) and set(x.names) <= allowed, x.names
  qk = boxed["text_model"]["encoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
  assert qk.names == ("embed", "heads")
  assert boxed["vision_model"]["embeddings"]["patch_embedding"]["kernel"].value.shape == (8, 8, 3, 32)

  # Born sharded on a (data, fsdp, tensor) mesh, then run with activation constraints active.
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, LOGICAL_AXIS_RULES)
    params = jax.jit(lambda r: clip.init_params(model, r), out_shardings=shardings)(jax.random.key(0))
    fc1 = params["text_model"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"].value
    assert fc1.sharding.spec == jax.P("fsdp", "tensor")
    ids = jnp.tile(jnp.array([[0, 5, 6, 1, 2, 2, 2, 2]]), (4, 1))
    pixels = jnp.zeros((4, 32, 32, 3))
    (per_image, _), _ = jax.jit(model.apply)({"params": params}, ids, pixels)
  assert per_image.shape == (4, 4) and np.isfinite(np.asarray(per_image)).all()


def test_conv_stem_replaces_the_patchify_stem():
  """conv_stem: stride-2 convs then a (patch / 2**n) patch embedding, same token grid and class token; the
  stem sees every pixel of a patch through overlapping 3x3 windows. Not an HF model, so no HF export."""
  config = clip.CLIPConfig.tiny(patch_size=8, conv_stem=(4, 8))
  model = clip.CLIPModel(config)
  params = nn.unbox(jax.jit(lambda r: clip.init_params(model, r))(jax.random.key(0)))
  emb = params["vision_model"]["embeddings"]
  assert emb["stem_0"]["kernel"].shape == (3, 3, 3, 4) and emb["stem_1"]["kernel"].shape == (3, 3, 4, 8)
  assert emb["patch_embedding"]["kernel"].shape == (2, 2, 8, 32)
  pixels = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  tokens = jax.jit(lambda x: model.apply({"params": params}, x, 0, method="encode_image_hidden"))
  assert tokens(pixels).shape == (2, 1 + 16, 32)
  moved = pixels.at[:, 3, 3].add(1.0)  # one pixel inside the first patch changes only that patch's token
  delta = np.abs(np.asarray(tokens(moved) - tokens(pixels))).max(-1)
  assert (delta[:, 1] > 1e-4).all() and np.allclose(delta[:, 2:], 0) and np.allclose(delta[:, 0], 0)
  with pytest.raises(ValueError, match="no Hugging Face equivalent"):
    config.to_hf_dict()
  assert clip.CLIPConfig.from_hf_dict({"vision_config": {"conv_stem": [4, 8]}}).vision.conv_stem == (4, 8)
  bad = clip.CLIPModel(clip.CLIPConfig.tiny(patch_size=8, conv_stem=(4, 4, 4, 4)))
  with pytest.raises(ValueError, match="not divisible"):
    jax.eval_shape(lambda: clip.init_params(bad, jax.random.key(0)))


def test_preprocess_images_normalises_and_crops():
  img = np.full((1, 40, 64, 3), 0.5, np.float32)
  img[:, :, :12] = 0.0  # left strip is cropped away by the centre crop (64 * 32/40 = 51 wide -> 32)
  out = np.asarray(clip.preprocess_images(img, 32))
  assert out.shape == (1, 32, 32, 3)
  expected = (0.5 - np.array(clip.CLIP_MEAN)) / np.array(clip.CLIP_STD)
  np.testing.assert_allclose(out[0, :, 16], np.broadcast_to(expected, (32, 3)), atol=1e-4)
  np.testing.assert_allclose(out[0, 5, -1], expected, atol=1e-4)


# ------------------------------------------------------------------------------------ tokenizer
CAPTIONS = [f"a {c} {s} in {st} style" for c in ("red", "blue", "green", "yellow")
            for s in ("circle", "square", "triangle", "star") for st in ("watercolor", "pixel art", "neon", "ink")]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tok") / "tokenizer.json")
  return text_tokenizer.train_bpe(CAPTIONS, vocab_size=320, path=path, max_len=24), path


def test_tokenizer_roundtrip_and_layout(tokenizer):
  tok, path = tokenizer
  texts = ["A Red circle in Neon style", "a  green\tstar", ""]
  ids, mask = tok.encode(texts)
  assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape == (3, 24)
  assert tok.decode(ids) == ["a red circle in neon style", "a green star", ""]
  assert tok.eos_id == 1 and tok.bos_id == 0 and tok.pad_id == 2
  assert (ids[:, 0] == tok.bos_id).all()
  lengths = mask.sum(1)
  np.testing.assert_array_equal(ids[np.arange(3), lengths - 1], tok.eos_id)  # EOS ends every text
  np.testing.assert_array_equal(clip.eos_positions(jnp.asarray(ids), tok.eos_id), lengths - 1)
  assert (ids[mask == 0] == tok.pad_id).all() and lengths[2] == 2
  # learned merges compress the training vocabulary (" watercolor" is 11 bytes)
  assert tok.encode(["watercolor"])[1].sum() - 2 <= 3
  reloaded = text_tokenizer.load_tokenizer(path)
  np.testing.assert_array_equal(reloaded.encode(texts)[0], ids)
  assert reloaded.max_len == 24 and reloaded.vocab_size == tok.vocab_size


def test_tokenizer_unseen_words_and_truncation(tokenizer):
  tok, _ = tokenizer
  unseen = ["ultramarine crosshatch", "Ünïcode ☀ glaze"]
  ids, mask = tok.encode(unseen)
  assert tok.decode(ids) == [s.lower() for s in unseen]  # byte-level: nothing is lost, nothing unknown
  assert ids.max() < tok.vocab_size and tok.tok.model.unk_token is None
  long_ids, long_mask = tok.encode(["a red circle " * 20])
  assert long_mask.all() and long_ids[0, -1] == tok.eos_id  # truncation keeps the EOS
  with pytest.raises(ValueError, match="vocab_size"):
    text_tokenizer.train_bpe(CAPTIONS, vocab_size=100)
