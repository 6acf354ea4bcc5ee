"""User style-image loading: odd formats convert, bad files give one-line ImageErrors, files stay untouched."""
import hashlib
import io
import os

import numpy as np
import pytest
from PIL import Image

from stylejax.data import images
from stylejax.data.images import ImageError, load_image, load_image_folder

SIZE = 16


def _sha(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _save(img, path, **kw):
  img.save(path, **kw)
  return str(path)


def _noise_rgb(w, h, seed=0):
  return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def odd_files(tmp_path):
  """name -> (path, expected mean color [3] or None)."""
  files = {}
  rgba = np.zeros((20, 20, 4), np.uint8)
  rgba[..., 0] = 255  # red, but fully transparent: must composite to white
  files["rgba_transparent"] = (_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"), (1, 1, 1))
  half = rgba.copy()
  half[..., 3] = 255
  files["rgba_opaque"] = (_save(Image.fromarray(half, "RGBA"), tmp_path / "b.png"), (1, 0, 0))
  pal = Image.new("P", (10, 10), 1)
  pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
  files["palette"] = (_save(pal, tmp_path / "p.png"), (0, 0, 1))
  files["palette_gif_transparent"] = (_save(pal, tmp_path / "p.gif", transparency=1), (1, 1, 1))
  files["grayscale"] = (_save(Image.new("L", (12, 30), 128), tmp_path / "g.png"), (128 / 255,) * 3)
  files["gray_alpha"] = (_save(Image.new("LA", (12, 12), (0, 0)), tmp_path / "la.png"), (1, 1, 1))
  files["one_bit"] = (_save(Image.new("1", (9, 9), 1), tmp_path / "bw.bmp"), (1, 1, 1))
  files["cmyk_jpeg"] = (_save(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), tmp_path / "c.jpg"), (1, 1, 1))
  files["i16_png"] = (_save(Image.fromarray(np.full((8, 8), 32768, np.uint16)), tmp_path / "i16.png"), (0.5,) * 3)
  files["i32_tiff"] = (_save(Image.fromarray(np.full((8, 8), 200, np.int32)), tmp_path / "i32.tif"), (200 / 255,) * 3)
  files["float_tiff"] = (_save(Image.fromarray(np.full((8, 8), 0.25, np.float32)), tmp_path / "f.tif"), (0.25,) * 3)
  files["tiny_1x1"] = (_save(Image.new("RGB", (1, 1), (0, 255, 0)), tmp_path / "t.png"), (0, 1, 0))
  files["webp"] = (_save(Image.new("RGB", (30, 20), (0, 0, 255)), tmp_path / "w.webp", lossless=True), (0, 0, 1))
  frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
  files["animated_gif"] = (_save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:]),
                           (1, 0, 0))
  return files


def test_every_odd_kind_converts(odd_files):
  for name, (path, mean) in odd_files.items():
    before = _sha(path)
    x = load_image(path, SIZE)
    assert x.shape == (SIZE, SIZE, 3) and x.dtype == np.float32, name
    assert 0.0 <= x.min() and x.max() <= 1.0, name
    np.testing.assert_allclose(x.reshape(-1, 3).mean(0), mean, atol=0.03, err_msg=name)
    assert _sha(path) == before, f"{name}: file changed"


def test_center_crop_then_resize(tmp_path):
  # 30x10: left 10 columns red, middle 10 green, right 10 blue -> the center square is all green.
  a = np.zeros((10, 30, 3), np.uint8)
  a[:, :10, 0], a[:, 10:20, 1], a[:, 20:, 2] = 255, 255, 255
  x = load_image(_save(Image.fromarray(a), tmp_path / "wide.png"), 8)
  np.testing.assert_allclose(x.reshape(-1, 3).mean(0), (0, 1, 0), atol=0.05)


def test_huge_jpeg_accepted_and_unchanged(tmp_path):
  path = _save(Image.new("RGB", (6000, 4000), (200, 100, 50)), tmp_path / "big.jpg", quality=70)
  before, mtime = _sha(path), os.stat(path).st_mtime_ns
  x = load_image(path, 32)
  assert x.shape == (32, 32, 3)
  np.testing.assert_allclose(x.reshape(-1, 3).mean(0), np.array([200, 100, 50]) / 255, atol=0.03)
  assert _sha(path) == before and os.stat(path).st_mtime_ns == mtime


def test_exif_rotation_applied(tmp_path):
  a = np.zeros((10, 20, 3), np.uint8)  # landscape, left half white
  a[:, :10] = 255
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 CW to display": becomes portrait, top half white
  path = _save(Image.fromarray(a), tmp_path / "rot.jpg", exif=exif, quality=95)
  img = Image.open(path)
  assert img.size == (20, 10)
  x = load_image(path, 10)
  assert x[:3].mean() > 0.8 and x[-3:].mean() < 0.2


def _check_error(path, *words):
  before = _sha(path) if os.path.isfile(path) else None
  with pytest.raises(ImageError) as e:
    load_image(path, SIZE)
  msg = str(e.value)
  assert isinstance(e.value, ValueError)
  assert "\n" not in msg and os.path.basename(str(path)) in msg, msg
  assert any(w in msg for w in words), msg
  if before is not None:
    assert _sha(path) == before
  return msg


def test_bad_files_raise_one_line_image_error(tmp_path):
  _check_error(str(tmp_path / "missing.png"), "not found")
  _check_error(str(tmp_path), "folder")
  empty = tmp_path / "empty.png"
  empty.write_bytes(b"")
  _check_error(str(empty), "empty")
  text = tmp_path / "notes.png"
  text.write_text("this is not an image\nsecond line\n")
  _check_error(str(text), "not an image")

  for fmt, ext in (("PNG", "png"), ("JPEG", "jpg")):
    buf = io.BytesIO()
    _noise_rgb(64, 64).save(buf, fmt)
    data = buf.getvalue()
    cut = tmp_path / f"truncated.{ext}"
    cut.write_bytes(data[: len(data) * 6 // 10])
    _check_error(str(cut), "truncated", "corrupt")
    header_only = tmp_path / f"header.{ext}"
    header_only.write_bytes(data[:40])
    _check_error(str(header_only), "truncated", "corrupt")


def test_oversized_image_refused_before_decoding(tmp_path, monkeypatch):
  path = _save(Image.new("RGB", (40, 40)), tmp_path / "bomb.png")
  monkeypatch.setattr(images, "MAX_PIXELS", 1000)
  msg = _check_error(path, "megapixels")
  assert "downscale" in msg


def test_bad_size_argument(tmp_path):
  path = _save(Image.new("RGB", (4, 4)), tmp_path / "ok.png")
  with pytest.raises(ValueError):
    load_image(path, 0)


def test_load_image_folder(tmp_path):
  _save(Image.new("RGB", (5, 7), (255, 0, 0)), tmp_path / "b.png")
  _save(Image.new("L", (9, 9), 0), tmp_path / "a.jpg")
  (tmp_path / "README.txt").write_text("ignored")
  (tmp_path / ".hidden.png").write_bytes(b"junk")
  x, paths = load_image_folder(tmp_path, 8, return_paths=True)
  assert x.shape == (2, 8, 8, 3) and [os.path.basename(p) for p in paths] == ["a.jpg", "b.png"]
  np.testing.assert_allclose(x[1].reshape(-1, 3).mean(0), (1, 0, 0), atol=0.02)
  assert load_image_folder(tmp_path, 8).shape == (2, 8, 8, 3)

  (tmp_path / "broken.png").write_text("not an image")
  with pytest.raises(ImageError, match="broken.png"):
    load_image_folder(tmp_path, 8)
  empty = tmp_path / "empty_dir"
  empty.mkdir()
  with pytest.raises(ImageError, match="no image files"):
    load_image_folder(empty, 8)
  with pytest.raises(ImageError, match="not found"):
    load_image_folder(tmp_path / "nope", 8)
