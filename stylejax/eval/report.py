"""Image grids, PNGs and self-contained HTML pages (contact sheet for human feedback, report.html).

numpy + PIL + stdlib only, so reporting never pulls in JAX.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image


def grid(images: np.ndarray, cols: int | None = None, pad: int = 2, fill: int = 255) -> np.ndarray:
  """images [N, H, W, 3] uint8 -> one [rows*(H+pad)+pad, cols*(W+pad)+pad, 3] uint8 grid, row-major."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"grid takes uint8 images [N, H, W, 3], got {images.dtype} {images.shape}.")
  n, h, w, _ = images.shape
  cols = cols or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), fill, np.uint8)
  for i, img in enumerate(images):
    r, c = divmod(i, cols)
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
  return out


def save_png(image: np.ndarray, path: str) -> None:
  """Writes a uint8 [H, W, 3] image; the file appears whole or not at all."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
  os.replace(tmp, path)


# ------------------------------------------------------------------------------ self-contained HTML
# Pages embed every image and script: one file that opens offline, anywhere.
Metric = dict[str, Any]  # {"mean": float | None, "ci95": [lo, hi], "n": int}, as in stylejax.eval.metrics
MIN_DISPLAY_PX = 128  # contact-sheet thumbnails are upscaled to at least this (64x64 samples are too small)


class SelectionError(ValueError):
  """A human-feedback selection that can't be used; the message says what is wrong and how to fix it."""


def _png_data_uri(image: np.ndarray) -> str:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _upscale(image: np.ndarray, min_px: int = MIN_DISPLAY_PX) -> np.ndarray:
  """[H, W, 3] -> [k*H, k*W, 3] by pixel repetition (nearest neighbour); smallest k with k*min(H, W) >= min_px."""
  k = max(1, math.ceil(min_px / max(1, min(image.shape[:2]))))
  return image.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else image


def _write_text(path: str, text: str) -> str:
  """Writes a text file whole or not at all (same contract as save_png); returns path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def _js_literal(value: Any) -> str:
  """JSON usable inside an inline <script>: '</' would otherwise end the script element."""
  return json.dumps(value).replace("</", "<\\/")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
{style}
</style></head>
<body>
<h1>{title}</h1>
{body}
</body></html>
"""

_SHEET_STYLE = """
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 2px solid #ccc; border-radius: 6px; padding: 6px; width: 200px; cursor: pointer; }
.card:has(input:checked) { border-color: #2a7; background: #efe; }
.card img { image-rendering: pixelated; display: block; margin: 0 auto 4px; max-width: 100%; }
.card .id { font-family: monospace; font-weight: bold; }
.card .caption { font-size: 0.85em; }
.bar { position: sticky; top: 0; background: #fff; padding: 8px 0; z-index: 1; }
#selection-json { width: 100%; font-family: monospace; }
"""

_SHEET_SCRIPT = """<script>
const FILENAME = {filename};
function boxes() {{ return Array.from(document.querySelectorAll('input.pick')); }}
function selectionJson() {{
  return JSON.stringify({{selected: boxes().filter(b => b.checked).map(b => b.value)}});
}}
function refresh() {{
  const text = selectionJson();
  document.getElementById('selection-json').value = text;
  document.getElementById('count').textContent = JSON.parse(text).selected.length + ' selected';
}}
function setAll(on) {{ boxes().forEach(b => {{ b.checked = on; }}); refresh(); }}
function exportSelection() {{
  const blob = new Blob([selectionJson() + '\\n'], {{type: 'application/json'}});
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = FILENAME;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => {{ URL.revokeObjectURL(a.href); a.remove(); }}, 0);
}}
boxes().forEach(b => b.addEventListener('change', refresh));
refresh();
</script>"""


def write_contact_sheet(path: str, images: np.ndarray, ids: Sequence[str], captions: Sequence[str], title: str,
                        preselected: Sequence[str] = (), selection_filename: str = "selection.json") -> str:
  """One self-contained HTML page for picking candidates by hand (StyleDrop round-2 human feedback).

  images [N, H, W, 3] uint8, ids [N] unique, captions [N]. Each card shows the image (embedded PNG,
  nearest-neighbour upscaled to >= MIN_DISPLAY_PX), its id, caption and a checkbox (checked when the
  id is in `preselected`). "export selection" downloads `selection_filename` holding
  {"selected": [ids]}, the format read_selection reads; the same JSON sits in a text box to copy.
  Returns path.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"write_contact_sheet takes uint8 images [N, H, W, 3], got {images.dtype} {images.shape}.")
  ids, captions = [str(i) for i in ids], [str(c) for c in captions]
  if not len(images) == len(ids) == len(captions):
    raise ValueError(f"write_contact_sheet needs one id and caption per image: {len(images)} images, "
                     f"{len(ids)} ids, {len(captions)} captions.")
  if len(set(ids)) != len(ids):
    raise ValueError("write_contact_sheet needs unique ids; the exported selection names images by id.")
  unknown = [p for p in dict.fromkeys(preselected) if p not in ids]
  if unknown:
    raise SelectionError(f"preselected ids {_name_some(unknown)} are not on the sheet; valid ids are "
                         f"{_describe_ids(ids)}.")
  chosen = set(preselected)
  cards = []
  for image, id_, cap in zip(images, ids, captions):
    big = _upscale(image)
    e_id = html.escape(id_, quote=True)
    cards.append(
        f'<label class="card"><img src="{_png_data_uri(big)}" width="{big.shape[1]}" height="{big.shape[0]}" '
        f'alt="{e_id}"><div><input type="checkbox" class="pick" value="{e_id}"'
        f'{" checked" if id_ in chosen else ""}> <span class="id">{e_id}</span></div>'
        f'<div class="caption">{html.escape(cap)}</div></label>')
  initial = html.escape(json.dumps({"selected": [i for i in ids if i in chosen]}))
  body = (
      f'<p>Tick the images that show the style well and the content the caption asks for, then '
      f'<b>export selection</b> (or copy the JSON below into a file) and pass it back as the selection.</p>\n'
      f'<div class="bar"><button type="button" onclick="setAll(true)">select all</button> '
      f'<button type="button" onclick="setAll(false)">clear</button> '
      f'<button type="button" onclick="exportSelection()">export selection</button> '
      f'<span id="count"></span><br>'
      f'<textarea id="selection-json" rows="2" readonly onclick="this.select()">{initial}</textarea></div>\n'
      f'<div class="cards">\n' + "\n".join(cards) + '\n</div>\n'
      + _SHEET_SCRIPT.format(filename=_js_literal(selection_filename)))
  return _write_text(path, _PAGE.format(title=html.escape(title), style=_SHEET_STYLE, body=body))


# ------------------------------------------------------------------------------ reading a selection back
def _name_some(ids: Sequence[str], limit: int = 5) -> str:
  shown = ", ".join(repr(i) for i in ids[:limit])
  return shown + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


def _describe_ids(ids: Sequence[str]) -> str:
  """'c000..c047 (48 ids)' for long lists, all of them for short ones."""
  ids = list(ids)
  if not ids:
    return "none (there are no candidates)"
  if len(ids) <= 6:
    return ", ".join(ids)
  return f"{ids[0]}..{ids[-1]} ({len(ids)} ids)"


def _looks_like_path(spec: str) -> bool:
  return spec.lower().endswith(".json") or "/" in spec or os.sep in spec


def read_selection(spec: str, valid_ids: Sequence[str]) -> list[str]:
  """Selected ids, in the order of valid_ids, from a selection file or an inline list.

  spec: a path to JSON ({"selected": [ids]} as exported by the contact sheet, or a bare [ids]) or an
  inline "c001, c007 c012" (commas and/or whitespace). Duplicates collapse. Raises SelectionError.
  """
  valid = [str(v) for v in valid_ids]
  spec = str(spec).strip()
  if os.path.isfile(spec):
    chosen = _read_selection_file(spec)
  elif _looks_like_path(spec):
    raise SelectionError(f"selection file {spec!r} not found; pass the JSON exported from the contact sheet "
                         f"or an inline list like 'c001,c007'.")
  else:
    chosen = [s for s in re.split(r"[,\s]+", spec) if s]
  if not chosen:
    raise SelectionError(f"the selection {spec!r} is empty; select at least one image (ids {_describe_ids(valid)}).")
  valid_set = set(valid)
  unknown = list(dict.fromkeys(c for c in chosen if c not in valid_set))
  if unknown:
    not_file = " (and no file has that name)" if chosen == [spec] else ""
    raise SelectionError(f"unknown ids {_name_some(unknown)} in selection {spec!r}{not_file}; valid ids are "
                         f"{_describe_ids(valid)}.")
  picked = set(chosen)
  return [v for v in dict.fromkeys(valid) if v in picked]


def _read_selection_file(path: str) -> list[str]:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError) as e:
    raise SelectionError(f"can't read selection file {path!r}: {e}.") from None
  except json.JSONDecodeError as e:
    raise SelectionError(f"selection file {path!r} is not valid JSON ({e}); expected {{\"selected\": [ids]}} "
                         f"as exported from the contact sheet.") from None
  items = data.get("selected") if isinstance(data, dict) else data
  if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
    raise SelectionError(f"selection file {path!r} must hold {{\"selected\": [\"c001\", ...]}} or a list of id "
                         f"strings; got {json.dumps(data)[:80]}.")
  return [i.strip() for i in items if i.strip()]


# ------------------------------------------------------------------------------ report.html
def read_curve(metrics_jsonl: str, key: str = "loss") -> list[tuple[int, float]]:
  """(step, value) pairs for the lines of a training run's metrics.jsonl that have `key`, by step.

  A missing file gives [] (a report should still render). Lines that don't parse (a write cut off
  by preemption) are skipped, and a step logged twice (a resumed run appends) keeps its last value.
  """
  if not os.path.exists(metrics_jsonl):
    return []
  by_step: dict[int, float] = {}
  with open(metrics_jsonl, encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(row, dict) and key in row and "step" in row and row[key] is not None:
        by_step[int(row["step"])] = float(row[key])
  return sorted(by_step.items())


def _fmt(x: float | None) -> str:
  return "n/a" if x is None else f"{x:.3f}"


def format_metric(m: Metric | float | None) -> str:
  """'0.912 [0.871, 0.944] n=64'; 'n/a' without a mean; the interval is left out when undefined (n < 2)."""
  if m is None:
    return "—"
  if not isinstance(m, Mapping):
    return _fmt(float(m))
  if m.get("mean") is None:
    return "n/a"
  lo, hi = (list(m.get("ci95") or []) + [None, None])[:2]
  ci = "" if lo is None and hi is None else f" [{_fmt(lo)}, {_fmt(hi)}]"
  n = f" n={m['n']}" if m.get("n") is not None else ""
  return f"{_fmt(m['mean'])}{ci}{n}"


def _svg_curve(name: str, points: Sequence[tuple[int, float]], width: int = 420, height: int = 220) -> str:
  """An inline SVG line plot of (step, value) points: step on x, min/max labels on both axes."""
  left, right, top, bottom = 64, 12, 24, 32
  pw, ph = width - left - right, height - top - bottom
  pts = [(int(s), float(v)) for s, v in points if math.isfinite(float(v))]
  head = (f'<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
          f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(name, quote=True)}">'
          f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(name)}</text>'
          f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
  if not pts:
    return head + (f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" font-size="12" '
                   f'fill="#888">no data</text></svg>')
  xs, ys = [p[0] for p in pts], [p[1] for p in pts]
  x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
  sx = lambda x: left + (pw * (x - x0) / (x1 - x0) if x1 > x0 else pw / 2)
  sy = lambda y: top + ph - (ph * (y - y0) / (y1 - y0) if y1 > y0 else ph / 2)
  poly = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
  mark = (f'<polyline points="{poly}" fill="none" stroke="#2a6fdb" stroke-width="1.5"/>' if len(pts) > 1 else
          f'<circle cx="{sx(xs[0]):.1f}" cy="{sy(ys[0]):.1f}" r="3" fill="#2a6fdb"/>')
  label = lambda x, y, anchor, text: (f'<text x="{x}" y="{y}" text-anchor="{anchor}" font-size="11">'
                                      f'{html.escape(text)}</text>')
  return (head + mark
          + label(left - 4, top + 10, "end", f"{y1:.4g}") + label(left - 4, top + ph, "end", f"{y0:.4g}")
          + label(left, top + ph + 14, "start", str(x0)) + label(left + pw, top + ph + 14, "end", str(x1))
          + label(left + pw / 2, top + ph + 26, "middle", "step") + "</svg>")


_REPORT_STYLE = """
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
td { font-family: monospace; }
img.grid { image-rendering: pixelated; max-width: 100%; }
.curves { display: flex; flex-wrap: wrap; gap: 16px; }
"""


def write_report(path: str, title: str, grid_png: str | None, metrics: Mapping[str, Mapping[str, Metric]],
                 curves: Mapping[str, Sequence[tuple[int, float]]] = {},  # noqa: B006 (read only)
                 notes: Sequence[str] = ()) -> str:
  """A self-contained report.html: title, the grid (embedded from the PNG at grid_png), a metrics table
  (rows: metric names in first-seen order; columns: the keys of `metrics`, e.g. base / round1 / round2;
  cells as format_metric), one inline SVG per training curve and the notes. Returns path."""
  parts = []
  if grid_png:
    if not os.path.isfile(grid_png):
      raise ValueError(f"write_report: grid image {grid_png!r} not found; write it (save_png) first or pass None.")
    with open(grid_png, "rb") as f:
      uri = "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")
    parts.append(f'<img class="grid" src="{uri}" alt="{html.escape(os.path.basename(grid_png), quote=True)}">')
  if metrics:
    cols = list(metrics)
    names = list(dict.fromkeys(name for col in cols for name in metrics[col]))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    rows = "".join(f"<tr><th>{html.escape(str(n))}</th>"
                   + "".join(f"<td>{html.escape(format_metric(metrics[c].get(n)))}</td>" for c in cols) + "</tr>\n"
                   for n in names)
    parts.append(f"<h2>Metrics</h2>\n<p>mean [95% CI] n=count</p>\n"
                 f"<table><tr><th>metric</th>{head}</tr>\n{rows}</table>")
  if curves:
    parts.append('<h2>Training curves</h2>\n<div class="curves">'
                 + "".join(_svg_curve(str(k), v) for k, v in curves.items()) + "</div>")
  if notes:
    parts.append("<h2>Notes</h2>\n<ul>" + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes) + "</ul>")
  return _write_text(path, _PAGE.format(title=html.escape(title), style=_REPORT_STYLE, body="\n".join(parts)))
