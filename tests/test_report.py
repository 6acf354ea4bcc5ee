"""HTML/PNG reporting helpers: contact sheet, selection parsing, report.html, training curves (no JAX)."""
import base64
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from stylejax.eval import report
from stylejax.eval.report import SelectionError, read_curve, read_selection, write_contact_sheet, write_report


class _Tags(HTMLParser):
  """Collects (tag, attrs) of every start tag."""

  def __init__(self):
    super().__init__()
    self.tags = []

  def handle_starttag(self, tag, attrs):
    self.tags.append((tag, dict(attrs)))

  def of(self, tag):
    return [a for t, a in self.tags if t == tag]


def _parse(path):
  text = open(path, encoding="utf-8").read()
  p = _Tags()
  p.feed(text)
  return text, p


def _decode_png(uri):
  assert uri.startswith("data:image/png;base64,")
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


IDS = [f"c{i:03d}" for i in range(48)]


# ------------------------------------------------------------------------------ contact sheet
def test_contact_sheet_cards_checkboxes_images_and_escaping(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
  ids = ["c000", "c001", "c002", "c003"]
  captions = ["a red circle", "<script>alert(1)</script> & more", "two blue squares", "one star"]
  out = write_contact_sheet(str(tmp_path / "sheet.html"), images, ids, captions, title="Feedback <x>",
                            preselected=["c001", "c003"], selection_filename="picked.json")
  assert out == str(tmp_path / "sheet.html")
  text, tags = _parse(out)

  boxes = [a for a in tags.of("input") if a.get("type") == "checkbox"]
  assert [b["value"] for b in boxes] == ids
  assert [b["value"] for b in boxes if "checked" in b] == ["c001", "c003"]

  imgs = tags.of("img")
  assert len(imgs) == 4
  for img, want in zip(imgs, images):
    got = _decode_png(img["src"])
    assert got.shape == (128, 128, 3)  # 64 px upscaled x2, nearest neighbour
    np.testing.assert_array_equal(got, want.repeat(2, 0).repeat(2, 1))

  assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in text
  assert "Feedback &lt;x&gt;" in text
  # Self-contained: no external resources; export via Blob + <a download> with the requested filename.
  assert not re.search(r'(src|href)="https?:', text)
  assert "new Blob" in text and ".download = FILENAME" in text and 'const FILENAME = "picked.json"' in text
  for label in ("select all", "clear", "export selection"):
    assert f">{label}</button>" in text
  # The copyable text box starts with the preselection, in the exported format.
  box = re.search(r'<textarea id="selection-json"[^>]*>(.*?)</textarea>', text).group(1)
  assert json.loads(box.replace("&quot;", '"')) == {"selected": ["c001", "c003"]}


def test_contact_sheet_small_images_upscale_past_128(tmp_path):
  images = np.zeros((2, 48, 48, 3), np.uint8)
  _, tags = _parse(write_contact_sheet(str(tmp_path / "s.html"), images, ["a", "b"], ["x", "y"], title="t"))
  assert all(_decode_png(i["src"]).shape == (144, 144, 3) for i in tags.of("img"))  # ceil(128/48) = 3
  assert not [a for a in tags.of("input") if "checked" in a]


def test_contact_sheet_rejects_mismatched_inputs(tmp_path):
  images = np.zeros((2, 8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match="one id and caption per image"):
    write_contact_sheet(str(tmp_path / "s.html"), images, ["a"], ["x", "y"], title="t")
  with pytest.raises(SelectionError, match="'zz'"):
    write_contact_sheet(str(tmp_path / "s.html"), images, ["a", "b"], ["x", "y"], title="t", preselected=["zz"])


# ------------------------------------------------------------------------------ read_selection
def test_read_selection_file_and_inline_follow_valid_order(tmp_path):
  exported = tmp_path / "selection.json"
  exported.write_text(json.dumps({"selected": ["c007", "c001", "c007"]}))
  assert read_selection(str(exported), IDS) == ["c001", "c007"]
  bare = tmp_path / "bare.json"
  bare.write_text(json.dumps(["c010", "c002"]))
  assert read_selection(str(bare), IDS) == ["c002", "c010"]
  assert read_selection(" c012 ,c003,, c012  c005 ", IDS) == ["c003", "c005", "c012"]
  assert read_selection("c004", IDS) == ["c004"]


def test_read_selection_round_trips_the_contact_sheet_format(tmp_path):
  # What the page's export button writes: JSON.stringify({selected: [checked values in page order]}).
  path = tmp_path / "selection.json"
  path.write_text(json.dumps({"selected": ["c040", "c000"]}) + "\n")
  assert read_selection(str(path), IDS) == ["c000", "c040"]


@pytest.mark.parametrize("make_spec, problem", [
    (lambda d: str(d / "missing.json"), r"selection file .*missing\.json.* not found"),
    (lambda d: _write(d, "not json {"), r"not valid JSON"),
    (lambda d: _write(d, json.dumps({"chosen": ["c001"]})), r"must hold \{\"selected\""),
    (lambda d: _write(d, json.dumps({"selected": [1, 2]})), r"must hold \{\"selected\""),
    (lambda d: _write(d, json.dumps({"selected": []})), r"empty; select at least one image"),
    (lambda d: " , ", r"empty; select at least one image"),
    (lambda d: "c001,x1,x2,x3,x4,x5,x6", r"unknown ids 'x1', 'x2', 'x3', 'x4', 'x5' \(\+1 more\).*c000\.\.c047"),
    (lambda d: "nosuchfile", r"unknown ids 'nosuchfile'.*no file has that name.*c000\.\.c047"),
])
def test_read_selection_errors_name_the_problem(tmp_path, make_spec, problem):
  with pytest.raises(SelectionError, match=problem) as e:
    read_selection(make_spec(tmp_path), IDS)
  assert "\n" not in str(e.value)


def _write(d, text):
  path = d / "sel.json"
  path.write_text(text)
  return str(path)


# ------------------------------------------------------------------------------ report.html + curves
def _metric(mean, lo, hi, n):
  return {"mean": mean, "ci95": [lo, hi], "n": n}


def test_write_report_table_curves_grid_and_notes(tmp_path):
  grid_img = report.grid(np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), cols=3)
  grid_path = str(tmp_path / "grid.png")
  report.save_png(grid_img, grid_path)
  metrics = {
      "base": {"style_fidelity": _metric(0.5123, 0.4, 0.6, 64), "text_fidelity": _metric(0.25, 0.1, 0.4, 24)},
      "round1": {"style_fidelity": _metric(0.9121, 0.8712, 0.9436, 64),
                 "content_leakage": _metric(None, None, None, 0)},
      "round2": {"style_fidelity": _metric(0.93, None, None, 1), "text_fidelity": _metric(0.5, 0.3, 0.7, 24)},
  }
  curves = {"round1 loss": [(0, 5.0), (10, 3.0), (20, 2.5)], "round2 loss": [(0, 4.0)], "empty": []}
  out = write_report(str(tmp_path / "report.html"), "StyleDrop <demo>", grid_path, metrics, curves,
                     notes=["rows: base, round 1, round 2", "a & b"])
  text, tags = _parse(out)

  assert "StyleDrop &lt;demo&gt;" in text
  np.testing.assert_array_equal(_decode_png(tags.of("img")[0]["src"]), grid_img)
  for name in ("style_fidelity", "text_fidelity", "content_leakage"):
    assert f"<th>{name}</th>" in text
  assert "<th>base</th><th>round1</th><th>round2</th>" in text
  row = re.search(r"<tr><th>style_fidelity</th>(.*?)</tr>", text).group(1)
  assert re.findall(r"<td>(.*?)</td>", row) == ["0.512 [0.400, 0.600] n=64", "0.912 [0.871, 0.944] n=64",
                                               "0.930 n=1"]
  leak = re.findall(r"<td>(.*?)</td>", re.search(r"<tr><th>content_leakage</th>(.*?)</tr>", text).group(1))
  assert leak == ["—", "n/a", "—"]  # absent in base/round2, mean None in round1
  assert text.count("<svg") == 3 and "round1 loss" in text and "no data" in text
  first_svg = text[text.index("<svg"):text.index("</svg>")]
  assert "<polyline" in first_svg and ">0</text>" in first_svg and ">20</text>" in first_svg  # step range
  assert ">5</text>" in first_svg and ">2.5</text>" in first_svg  # value range
  assert "<li>a &amp; b</li>" in text


def test_write_report_without_grid_and_missing_grid(tmp_path):
  text, tags = _parse(write_report(str(tmp_path / "r.html"), "t", None, {"base": {"m": _metric(1.0, 0.9, 1.0, 3)}}))
  assert not tags.of("img") and "<svg" not in text and "1.000 [0.900, 1.000] n=3" in text
  with pytest.raises(ValueError, match="grid image .* not found"):
    write_report(str(tmp_path / "r.html"), "t", str(tmp_path / "nope.png"), {})


def test_read_curve(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": 0, "loss": 5.0, "lr": 0.0}, {"step": 10, "lr": 1e-3}, {"step": 20, "loss": 3.5},
          {"step": 10, "loss": 4.0}]  # a resumed run appends; out of order on purpose
  path.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 30, "lo')  # truncated last write
  assert read_curve(str(path)) == [(0, 5.0), (10, 4.0), (20, 3.5)]
  assert read_curve(str(path), "lr") == [(0, 0.0), (10, 1e-3)]
  assert all(isinstance(s, int) and isinstance(v, float) for s, v in read_curve(str(path)))
  assert read_curve(str(tmp_path / "absent.jsonl")) == []
