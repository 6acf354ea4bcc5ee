"""Test setup: 8 simulated CPU devices, set before JAX initialises."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import sys

# `configs/` is a top-level folder next to the package; config files import `configs.common`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
