"""GRPO rewards: a registry of named reward functions and the weighted sum the trainer optimises.

A reward is `fn(completions: list[str], examples: list[dict], **options) -> list[float]`, one value per
completion. `examples[i]` is the pipeline's per-row metadata for completion i (task, answer, boxes in pixels,
width, height, id, is_padding, extra) plus what the trainer adds per completion (completion_length,
max_completion_length, truncated). Any key may be missing. Rewards parse text (see `scoring`) and never
evaluate it.

    @register_reward("my_reward")            # in any importable module
    def my_reward(completions, examples, **options): ...

    load_reward_modules("my_pkg.rewards")     # runs the module's @register_reward lines
    total, parts = compute_rewards(completions, examples, {"accuracy": 1.0, "format": 0.5},
                                   options={"accuracy": {"box_format": "pixels"}})

Built-ins (`builtin`): format, accuracy, iou_threshold, overlong. Host-side only: importing this package pulls
in numpy, never jax or torch.
"""
from __future__ import annotations

import importlib
import math
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

import numpy as np

RewardFn = Callable[..., Sequence[float]]

_REGISTRY: dict[str, RewardFn] = {}


class RewardError(ValueError):
  """A reward misbehaved: it raised, returned the wrong number of values, or a non-finite value."""


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
  """Decorator registering `fn` under `name`.

  Registering a different function under a taken name is an error (two modules would silently fight over
  it); the same function again (a module reloaded) replaces the old entry.
  """
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f"reward name must be a non-empty string, got {name!r}")

  def decorate(fn: RewardFn) -> RewardFn:
    if not callable(fn):
      raise TypeError(f"reward {name!r} must be callable, got {fn!r}")
    old = _REGISTRY.get(name)
    if old is not None and _qualified(old) != _qualified(fn):
      raise ValueError(f"reward {name!r} is already registered by {_qualified(old)}; "
                       f"cannot register {_qualified(fn)} under the same name")
    _REGISTRY[name] = fn
    return fn

  return decorate


def _qualified(fn: Any) -> str:
  return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def reward_names() -> list[str]:
  return sorted(_REGISTRY)


def get_reward(name: str) -> RewardFn:
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise KeyError(f"unknown reward {name!r}; known rewards: {', '.join(reward_names())}") from None


def load_reward_modules(modules: str | Sequence[str] | None) -> list[ModuleType]:
  """Imports each module (a comma-separated string or a list of dotted names) so its rewards register."""
  if modules is None:
    return []
  names = modules.split(",") if isinstance(modules, str) else list(modules)
  loaded = []
  for name in (n.strip() for n in names):
    if not name:
      continue
    try:
      loaded.append(importlib.import_module(name))
    except Exception as e:  # noqa: BLE001 - any failure inside the module is reported with its name
      raise ImportError(f"could not import reward module {name!r}: {type(e).__name__}: {e}") from e
  return loaded


def _call(name: str, fn: RewardFn, completions: list, examples: list, options: Mapping[str, Any]) -> np.ndarray:
  """One reward's values as float64 (N,), checked; every failure names the reward."""
  try:
    values = fn(completions, examples, **options)
  except Exception as e:  # noqa: BLE001 - re-raised with the reward's name
    raise RewardError(f"reward {name!r} raised {type(e).__name__}: {e}") from e
  try:
    out = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64)
  except (TypeError, ValueError, OverflowError) as e:
    raise RewardError(f"reward {name!r} returned values that are not numbers: {e}") from e
  if out.shape != (len(completions),):
    raise RewardError(f"reward {name!r} returned shape {out.shape}; expected ({len(completions)},), "
                      "one value per completion")
  with np.errstate(over="ignore"):
    bad = np.flatnonzero(~np.isfinite(out.astype(np.float32)))  # float32 is what the trainer sees
  if bad.size:
    raise RewardError(f"reward {name!r} returned non-finite (or beyond float32) values at rows "
                      f"{bad[:8].tolist()}: {out[bad[:8]].tolist()}")
  return out


def compute_rewards(completions: Sequence[str], examples: Sequence[Mapping[str, Any]], weights: Mapping[str, float],
                    options: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(total (N,) float32, {name: unweighted (N,) float32}) for every reward with a nonzero weight.

  total = Σ weight × reward. Unknown names in `weights` or `options` raise KeyError listing the known ones;
  zero-weight rewards are not called (their options are still checked by name).
  """
  completions, examples = list(completions), list(examples)
  if len(completions) != len(examples):
    raise ValueError(f"{len(completions)} completions but {len(examples)} examples; need one example each")
  options = dict(options or {})
  for name in [*weights, *options]:
    get_reward(name)
  for name, w in weights.items():
    if not isinstance(w, (int, float, np.number)) or isinstance(w, bool) or not math.isfinite(w):
      raise ValueError(f"weight of reward {name!r} must be a finite number, got {w!r}")
  active = {name: float(w) for name, w in weights.items() if w != 0}
  if not active:
    raise ValueError(f"no reward has a nonzero weight (weights={dict(weights)}); known: {reward_names()}")
  total = np.zeros(len(completions), np.float64)
  parts = {}
  for name, w in active.items():
    values = _call(name, get_reward(name), completions, examples, options.get(name) or {})
    total += w * values
    parts[name] = values.astype(np.float32)
  with np.errstate(over="ignore"):
    overflow = not np.all(np.isfinite(total.astype(np.float32)))
  if overflow:
    raise ValueError(f"the weighted reward sum overflows float32; weights={active}")
  return total.astype(np.float32), parts


# Registers the built-ins; last, because builtin imports register_reward from here.
from tinyrs_jax.rewards import builtin  # noqa: E402,F401
