"""Pieces the benchmark scripts share: wall-clock timing, torch thread choice, machine description."""
from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any, Callable

import torch


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  """(wall seconds, output) of one call."""
  t = time.perf_counter()
  out = fn()
  return time.perf_counter() - t, out


def pick_threads(fn: Callable[[], Any], candidates: list[int]) -> int:
  """The torch thread count with the fastest call of `fn` (best of 2 tries each); it stays set.

  On a shared machine 2 OpenMP threads can be several times slower than 1 (threads wait at
  barriers while other processes hold the cores), which would be counted against the reference.
  """
  best = None
  for th in candidates:
    torch.set_num_threads(th)
    t = min(timed(fn)[0] for _ in range(2))
    if best is None or t < best[0]:
      best = (t, th)
  torch.set_num_threads(best[1])
  return best[1]


def thread_candidates(p: argparse.ArgumentParser, value: str) -> list[int]:
  """--threads: "auto" -> [1, cpu_count] (probed with `pick_threads`), or one positive count."""
  if value == "auto":
    return sorted({1, os.cpu_count() or 1})
  if value.isdigit() and int(value) > 0:
    return [int(value)]
  p.error(f"--threads must be a positive integer or auto; got {value!r}")


def cpu_and_load() -> str:
  """"<cpu model>, <n> cores (1-min load <x> at start" — callers close the parenthesis."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return f"{cpu}, {os.cpu_count()} cores (1-min load {load:.1f} at start"


def emit(table: str, path: str | None) -> str:
  """Prints a benchmark's markdown table and, with `path`, writes it there too."""
  print(table)
  if path:
    with open(path, "w") as f:
      f.write(table)
  return table


def op_profile(fn: Callable[[], Any], hlo_text: str, repeats: int = 3) -> list[tuple[str, float]]:
  """Where a jitted call's time goes: [(op, seconds per call)], largest first.

  Runs `fn` (compiled already) `repeats` times under `jax.profiler`, sums each HLO instruction's
  trace events and names it by the `op_name` in `hlo_text` (the compiled module's `as_text()`), with
  layer indices folded (`layers_3/attn/...` -> `layers_N/attn/...`) so a layer's ops sum over layers, and
  the outermost loop's prefix dropped (ops outside it keep their `jit(...)/` prefix). Control flow
  (while, conditional, call) and events that are not ops of this module (host frames, runtime waits)
  are left out, so nothing is counted twice.
  """
  import glob
  import gzip
  import json
  import re
  import tempfile
  from collections import Counter

  import jax
  names = {m.group(1): re.sub(r"layers_\d+", "layers_N", m.group(3).split("/while/body/closed_call/", 1)[-1])
           for m in re.finditer(r"%([\w.\-]+) = \S+ ([\w\-]+)\(.*?op_name=\"([^\"]+)\"", hlo_text)
           if m.group(2) not in ("while", "conditional", "call")}  # these only wrap other ops' events
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(repeats):
        fn()
    (path,) = glob.glob(os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  total: Counter = Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in names:
      total[names[e["name"]]] += e.get("dur", 0) * 1e-6 / repeats
  return total.most_common()
