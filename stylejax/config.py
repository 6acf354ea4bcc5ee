"""Config loading: `path/to/file.py:variant,k=v` strings and `--config.a.b=v` overrides.

Every config file defines `get_config(arg: str | None) -> ConfigDict`; we return it locked, so a
typo in an override is an error rather than a silently new key.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import sys

from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config that cannot be used; the message says what to fix."""


def _import_file(path: str):
  name = "stylejax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  config_dir = os.path.dirname(os.path.abspath(path))
  # Config files import their neighbours (`from configs import common` or `import common`).
  for p in (config_dir, os.path.dirname(config_dir)):
    if p not in sys.path:
      sys.path.insert(0, p)
  spec.loader.exec_module(module)
  return module


def resolve_config_path(path: str) -> str:
  """Finds a config file given as a path, or as `configs/x.py` relative to the package."""
  if os.path.exists(path):
    return path
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  candidate = os.path.join(repo, path)
  if os.path.exists(candidate):
    return candidate
  candidate = os.path.join(repo, "configs", os.path.basename(path))
  if os.path.exists(candidate):
    return candidate
  raise ConfigError(f"config file {path!r} not found; pass e.g. configs/toy.py:runlocal.")


def load_config(spec: str, overrides: dict[str, str] | None = None) -> ml_collections.ConfigDict:
  """Loads `file.py[:arg]`, applies `a.b=v` overrides, and returns a locked ConfigDict."""
  path, _, arg = spec.partition(":")
  module = _import_file(resolve_config_path(path))
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} has no get_config(arg) function.")
  try:
    config = module.get_config(arg or None)
  except ValueError as e:
    raise ConfigError(f"{spec}: {e}") from None
  config = ml_collections.ConfigDict(config)
  config.lock()
  for key, value in (overrides or {}).items():
    apply_override(config, key, value)
  return config


def apply_override(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Sets `config.<key>` from a string (CLI) or a Python value (notebooks), typed by the existing field.
  Unknown keys raise ConfigError."""
  node = config
  parts = key.split(".")
  for i, part in enumerate(parts[:-1]):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(f"unknown config key {'.'.join(parts[:i + 1])!r}; see the config file for valid keys.")
    node = node[part]
  leaf = parts[-1]
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    raise ConfigError(f"unknown config key {key!r}; valid keys here: {valid}.")
  node[leaf] = parse_value(value, node[leaf], key)


def key_value(text: str) -> tuple[str, str]:
  """argparse type of a repeatable `--set KEY=VALUE` flag: ("a.b", "v") for "a.b=v"."""
  key, eq, value = text.partition("=")
  if not eq or not key:
    raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. optimizer.lr=1e-3)")
  return key, value


def parse_value(value: Any, current, key: str):
  """Parses an override string into the type of the current value; a non-string value is only type-checked."""
  if not isinstance(value, str):
    value = value.item() if hasattr(value, "item") else value  # numpy scalars
    return value if current is None else _as_type(value, current, key)
  if isinstance(current, bool):
    if value.lower() in ("true", "1", "yes"):
      return True
    if value.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(f"--config.{key}={value!r} must be true or false.")
  if isinstance(current, str) or current is None:
    return value
  try:
    parsed = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    raise ConfigError(f"--config.{key}={value!r} is not a valid {type(current).__name__}.") from None
  return _as_type(parsed, current, key)


def _as_type(parsed: Any, current, key: str):
  """`parsed` as the type of `current` (an int for a float field, a list for a tuple one), else ConfigError."""
  if isinstance(current, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
    parsed = float(parsed)
  if isinstance(current, (list, tuple)) and isinstance(parsed, (list, tuple)):
    return type(current)(parsed)
  if type(parsed) is not type(current):
    raise ConfigError(f"--config.{key}={parsed!r} must be a {type(current).__name__}.")
  return parsed


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(json.loads(text))
  config.lock()
  return config
