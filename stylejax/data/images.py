"""Loading user style-reference images: any PIL-readable file -> float32 [size, size, 3] in [0, 1].

Odd inputs are converted rather than rejected: alpha (composited on white), palettes, grayscale,
1-bit, CMYK, 16/32-bit integer and float modes, EXIF rotation, animated files (first frame), tiny
and huge images (center-cropped to a square, then resized). Unusable files raise one `ImageError`
whose message is a single line naming the file and the fix. Files are only ever opened for reading.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 80 megapixels: accepts 6000x4000 photos (24 MP) and big scans, refuses decompression bombs before
# decoding. Checked on the header size, so PIL's global MAX_IMAGE_PIXELS (89 MP) stays untouched.
MAX_PIXELS = 80_000_000
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
                    ".tga", ".ico", ".jp2")
_SUPPORTED = "PNG, JPEG, WebP, GIF, BMP or TIFF"


class ImageError(ValueError):
  """A style image cannot be used; str(e) is one line naming the file and the fix."""


def _one_line(text: object) -> str:
  return " ".join(str(text).split())


def _fail(path: str, problem: str, fix: str) -> ImageError:
  return ImageError(_one_line(f"cannot use image {path!r}: {problem}; {fix}."))


_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


def _looks_like_image(data: bytes) -> bool:
  return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _broken(path: str, e: BaseException | str) -> ImageError:
  kind = "truncated" if "truncat" in str(e).lower() else "corrupt"
  return _fail(path, f"it is {kind} ({_one_line(e)})", "re-export or re-download the image")


def _read_bytes(path: str) -> bytes:
  if not os.path.exists(path):
    raise _fail(path, "file not found", "check the path")
  if os.path.isdir(path):
    raise _fail(path, "it is a folder", "pass an image file, or use load_image_folder for a folder")
  try:
    with open(path, "rb") as f:  # read-only: the user's file is never modified
      data = f.read()
  except OSError as e:
    raise _fail(path, f"it cannot be read ({e.strerror or e})", "check its permissions") from None
  if not data:
    raise _fail(path, "the file is empty (0 bytes)", "re-export or re-download the image")
  return data


def _open(path: str, data: bytes) -> Image.Image:
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      img = Image.open(io.BytesIO(data))
  except UnidentifiedImageError as e:
    if _looks_like_image(data):  # a known signature that PIL cannot parse: a cut-off or damaged file
      raise _broken(path, "header cut off or damaged" if len(data) < 1024 else e) from None
    raise _fail(path, "it is not an image file PIL can read", f"pass a {_SUPPORTED} file") from None
  except (Image.DecompressionBombError, Image.DecompressionBombWarning):
    raise _fail(path, "it is too large to decode safely",
                f"downscale it below {MAX_PIXELS // 1_000_000} megapixels") from None
  except Exception as e:  # corrupt headers raise assorted errors
    raise _broken(path, e) from None
  w, h = img.size
  if w <= 0 or h <= 0:
    raise _fail(path, f"it has no pixels ({w}x{h})", "re-export the image")
  if w * h > MAX_PIXELS:
    raise _fail(path, f"it is {w}x{h} ({w * h / 1e6:.0f} megapixels)",
                f"downscale it below {MAX_PIXELS // 1_000_000} megapixels")
  return img


def to_rgb(img: Image.Image) -> Image.Image:
  """Any mode -> 8-bit RGB; transparency composited on white; high bit depths rescaled."""
  mode = img.mode
  if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
    a = np.asarray(img, dtype=np.float64)
    if mode.startswith("I;16"):
      a = a / 65535.0
    elif mode == "I":  # 32-bit ints usually hold 8- or 16-bit data
      hi = float(a.max()) if a.size else 0.0
      a = a / (255.0 if hi <= 255 else 65535.0 if hi <= 65535 else hi)
    else:  # float images: [0, 1] as is, otherwise assume [0, 255]
      a = np.nan_to_num(a)
      a = a if float(a.max(initial=0.0)) <= 1.0 else a / 255.0
    gray = Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))  # 2-D uint8 -> mode "L"
    return gray.convert("RGB")
  has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
      mode in ("P", "L", "RGB") and "transparency" in img.info)
  if has_alpha:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
  return img.convert("RGB")


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
  """Loads an image file as float32 [size, size, 3] in [0, 1] (center square crop, then resize).

  Raises ImageError (a ValueError) with a one-line message for missing, empty, non-image,
  truncated, corrupt or oversized files.
  """
  if not isinstance(size, (int, np.integer)) or size <= 0:
    raise ValueError(f"size={size!r}; use a positive integer image size.")
  path = os.fspath(path)
  data = _read_bytes(path)
  img = _open(path, data)
  try:
    if getattr(img, "n_frames", 1) > 1:
      img.seek(0)
    if img.format == "JPEG":
      img.draft(None, (size, size))  # DCT-domain downscale: a 6000x4000 JPEG decodes at a fraction of the cost
    img.load()
  except Exception as e:  # truncated / corrupt pixel data: OSError, SyntaxError, ValueError, EOFError, ...
    raise _broken(path, e) from None
  try:
    rgb = to_rgb(ImageOps.exif_transpose(img))
  except Exception as e:
    raise _fail(path, f"its color mode {img.mode!r} cannot be converted to RGB ({_one_line(e)})",
                "save it as an 8-bit RGB PNG or JPEG") from None
  w, h = rgb.size
  side = min(w, h)
  box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
  out = rgb.resize((size, size), Image.BICUBIC if side < size else Image.LANCZOS, box=box,
                   reducing_gap=3.0 if side > 3 * size else None)
  return np.asarray(out, np.float32) / 255.0


def list_image_files(folder: str | os.PathLike) -> list[str]:
  """Sorted image files (by extension) directly inside `folder`; hidden files skipped."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    problem = "folder not found" if not os.path.exists(folder) else "it is a file, not a folder"
    raise ImageError(_one_line(f"cannot use image folder {folder!r}: {problem}; pass a folder of images."))
  names = sorted(n for n in os.listdir(folder)
                 if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
                 and os.path.isfile(os.path.join(folder, n)))
  return [os.path.join(folder, n) for n in names]


def load_image_folder(folder: str | os.PathLike, size: int, return_paths: bool = False
                      ) -> np.ndarray | tuple[np.ndarray, list[str]]:
  """Every image file in `folder` -> float32 [N, size, size, 3] (sorted by name).

  Files without an image extension (README.txt, .DS_Store) are ignored; a file with an image
  extension that does not load raises ImageError. With `return_paths`, also the file paths.
  """
  paths = list_image_files(folder)
  if not paths:
    raise ImageError(_one_line(f"cannot use image folder {os.fspath(folder)!r}: it has no image files "
                               f"({', '.join(IMAGE_EXTENSIONS[:5])}, ...); add style images to it."))
  images = np.stack([load_image(p, size) for p in paths])
  return (images, paths) if return_paths else images


def load_images(paths: Sequence[str | os.PathLike], size: int) -> np.ndarray:
  """Several files -> float32 [N, size, size, 3]."""
  if not paths:
    raise ValueError("no image paths given; pass at least one style image.")
  return np.stack([load_image(p, size) for p in paths])
