"""launch/bench_ar.py smoke test on a minuscule model (no timings asserted): the table is written,
greedy parity holds, and a greedy mismatch aborts instead of timing different computations."""
import pytest

from _testutil import launch_module

bench_ar = launch_module("bench_ar")

ARGS = ["--quick", "--configs", "minuscule", "--new-tokens", "6", "--repeats", "1", "--threads", "1"]


def test_quick_main_writes_table(tmp_path):
  out = tmp_path / "bench.md"
  table = bench_ar.main(ARGS + ["--out", str(out)])
  assert out.read_text() == table
  rows = [l for l in table.splitlines() if l.startswith("| minuscule")]
  assert len(rows) == len(bench_ar.SETTINGS)
  assert "| greedy |" in rows[0] and all(r.split("|")[-2].strip().replace(".", "").isdigit() for r in rows)
  assert "prompt 16 + 6 new tokens" in table


def test_greedy_mismatch_aborts(monkeypatch):
  real = bench_ar.run_stylejax
  monkeypatch.setattr(bench_ar, "run_stylejax", lambda *a, **k: (real(*a, **k) + 1) % 64)
  with pytest.raises(SystemExit, match="greedy outputs differ"):
    bench_ar.main(ARGS)


def test_bad_arguments_exit():
  with pytest.raises(SystemExit):
    bench_ar.main(["--configs", "huge"])
  with pytest.raises(SystemExit):
    bench_ar.main(["--threads", "zero"])


def test_profile_lists_decode_ops(tmp_path):
  """--profile names the model's ops (layers folded), each once, with shares that sum to about 1. All ops are
  listed (--profile-top), so which ones rank first under a busy CPU does not matter."""
  table = bench_ar.main(["--profile", "--profile-top", "1000", "--configs", "minuscule", "--batches", "2",
                         "--new-tokens", "6", "--out", str(tmp_path / "p.md")])
  sections = table.split("stylejax minuscule, batch 2, ")[1:]
  assert [s.split(":")[0] for s in sections] == list(bench_ar.SETTINGS)
  for s in sections:
    rows = [l.split("|") for l in s.splitlines() if l.startswith("| `")]
    ops = [r[1].strip() for r in rows]
    assert len(ops) == len(set(ops)) and any("layers_N/" in o and "dot_general" in o for o in ops)
    assert not any("layers_0" in o for o in ops)
    assert 99 - len(rows) / 2 <= sum(float(r[3].strip(" %")) for r in rows) <= 101 + len(rows) / 2  # rounded
