"""launch/bench_muse.py smoke test on a minuscule Muse config (no timings asserted): every mode
samples a full grid, the reference pipeline runs, and the table is written."""
import pytest

from _testutil import launch_module

bench_muse = launch_module("bench_muse")


def test_quick_main_writes_table(tmp_path):
  out = tmp_path / "bench.md"
  table = bench_muse.main(["--configs", "minuscule", "--batches", "2", "--repeats", "1", "--threads", "1",
                           "--steps", "3", "--out", str(out)])
  assert out.read_text() == table
  rows = [l for l in table.splitlines() if l.startswith("| minuscule")]
  assert len(rows) == 1
  cells = [c.strip() for c in rows[0].strip("|").split("|")]
  assert cells[2] == "2" and len(cells) == 11
  assert float(cells[8].rstrip("x")) > 0  # styledrop / cfg
  assert cells[9] != "not run" and float(cells[10].rstrip("x")) > 0  # reference ran side by side
  assert "3 steps" in table


def test_reference_can_be_skipped():
  table = bench_muse.main(["--configs", "minuscule", "--batches", "1", "--repeats", "1", "--steps", "2",
                           "--reference", "none"])
  row = next(l for l in table.splitlines() if l.startswith("| minuscule"))
  assert "not run" in row and row.rstrip().endswith("| - |")


def test_bad_arguments_exit():
  with pytest.raises(SystemExit):
    bench_muse.main(["--configs", "huge"])
  with pytest.raises(SystemExit):
    bench_muse.main(["--threads", "zero"])
  with pytest.raises(SystemExit):
    bench_muse.main(["--reference", "huge"])
