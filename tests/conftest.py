"""Test setup: 8 simulated CPU devices and a session-wide XLA compilation cache, set before JAX initialises."""
import atexit
import os
import shutil
import tempfile

# LLVM at -O0: the suite's runlocal models are compile-bound (a train step runs in milliseconds, compiles in
# seconds) and -O0 compiles them several times faster (the whole suite: 13:25 -> 9:16, passing either way).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests train or sample the same runlocal models, so most of the suite's compiles repeat: a
# persistent cache (fresh per session, removed at exit) turns the repeats into hits.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="stylejax_tests_xla_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import sys

# `configs/` is a top-level folder next to the package; config files import `configs.common`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
