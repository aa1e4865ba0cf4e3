"""GRPO rewards: a registry of named reward functions and the weighted sum the trainer optimises.

A reward is `fn(completions: list[str], examples: list[dict], **options) -> list[float]`, one value per
completion. `examples[i]` describes completion i (`EXAMPLE_FIELDS` lists them; any key may be None or missing
when a caller has no value for it). The trainer never passes padding rows. Rewards parse text (see `scoring`)
and never evaluate it.

A reward that raises, returns something else than one finite number per completion, or runs longer than
`timeout_s` (compute_rewards) raises RewardError naming the reward, the example id and the first characters of
the completion it failed on (for a raise, the rewards are re-run one row at a time to find that row).

    @register_reward("my_reward")            # in any importable module
    def my_reward(completions, examples, **options): ...

    load_reward_modules("my_pkg.rewards")     # runs the module's @register_reward lines
    total, parts = compute_rewards(completions, examples, {"accuracy": 1.0, "format": 0.5},
                                   options={"accuracy": {"box_format": "pixels"}})

Built-ins (`builtin`): format, accuracy, iou_threshold, box_distance, overlong. Host-side only: importing this
package pulls in numpy, never jax or torch.
"""
from __future__ import annotations

import importlib
import math
import threading
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

import numpy as np

RewardFn = Callable[..., Sequence[float]]

_REGISTRY: dict[str, RewardFn] = {}


EXAMPLE_FIELDS = {
    "id": "the record's id (str)",
    "task": "its task (records.TASKS: classify, vqa_presence, vqa_count, ground, mc, ...)",
    "prompt": "the prompt's text: its user turns, joined by newlines (images are not included)",
    "answer": "the reference answer (str, or None when the record has none)",
    "boxes": "reference boxes [{label, box: [x1, y1, x2, y2]}] in pixels of the original image",
    "width": "the image's width in pixels (None without an image)",
    "height": "the image's height in pixels",
    "source": "the data file the record came from",
    "line": "its line in that file (1-based; None for sources without lines)",
    "record_index": "its index among the file's records",
    "extra": "the reader's extra fields (dict; e.g. choices for multiple choice)",
    "is_padding": "always False here: padding rows never reach a reward",
    "completion_length": "tokens generated for this completion (the stop token included)",
    "max_completion_length": "grpo.max_new_tokens",
    "truncated": "True when the completion was cut at max_completion_length",
}

COMPLETION_HEAD = 80  # characters of a completion quoted in a RewardError


class RewardError(ValueError):
  """A reward misbehaved: it raised, timed out, returned the wrong number of values, or a non-finite value."""


def describe_row(completions: Sequence[Any], examples: Sequence[Any], i: int) -> str:
  """"example id X, completion 'first characters…'" for row i (what a RewardError names)."""
  ex = examples[i] if i < len(examples) else None
  ex_id = ex.get("id") if isinstance(ex, Mapping) else None
  text = completions[i] if i < len(completions) else ""
  text = text if isinstance(text, str) else repr(text)
  head = text[:COMPLETION_HEAD] + ("…" if len(text) > COMPLETION_HEAD else "")
  return f"example id {ex_id!r}, completion {head!r}"


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


def _run(fn: RewardFn, completions: list, examples: list, options: Mapping[str, Any],
         timeout_s: float | None) -> tuple[str, Any]:
  """("ok", values) | ("raised", exception) | ("timeout", None): fn run in a daemon thread when timeout_s is set
  (a hung reward cannot be stopped, but the run no longer waits for it; the thread dies with the process)."""
  if not timeout_s or timeout_s <= 0:
    try:
      return "ok", fn(completions, examples, **options)
    except Exception as e:  # noqa: BLE001 - re-raised with the reward's name
      return "raised", e
  box: dict[str, Any] = {}

  def target():
    try:
      box["ok"] = fn(completions, examples, **options)
    except BaseException as e:  # noqa: BLE001
      box["raised"] = e

  t = threading.Thread(target=target, name="reward", daemon=True)
  t.start()
  t.join(timeout_s)
  if t.is_alive():
    return "timeout", None
  return ("raised", box["raised"]) if "raised" in box else ("ok", box.get("ok"))


def _call(name: str, fn: RewardFn, completions: list, examples: list, options: Mapping[str, Any],
          timeout_s: float | None = None) -> np.ndarray:
  """One reward's values as float64 (N,), checked; every failure names the reward, and where it can the row."""
  status, values = _run(fn, completions, examples, options, timeout_s)
  if status == "timeout":
    raise RewardError(f"reward {name!r} did not return within {timeout_s:g} s (grpo.reward_timeout_s) on "
                      f"{len(completions)} completions, the first {describe_row(completions, examples, 0)}")
  if status == "raised":
    e = values
    row = ""
    for i in range(len(completions)):  # find the row it fails on (the error path only)
      st, _ = _run(fn, completions[i:i + 1], examples[i:i + 1], options, timeout_s)
      if st != "ok":
        row = f" on {describe_row(completions, examples, i)}"
        break
    raise RewardError(f"reward {name!r} raised {type(e).__name__}: {e}{row}") from e
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
                      f"{bad[:8].tolist()}: {out[bad[:8]].tolist()}; the first "
                      f"{describe_row(completions, examples, int(bad[0]))}")
  return out


def compute_rewards(completions: Sequence[str], examples: Sequence[Mapping[str, Any]], weights: Mapping[str, float],
                    options: Mapping[str, Mapping[str, Any]] | None = None, *, timeout_s: float | None = None
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(total (N,) float32, {name: unweighted (N,) float32}) for every reward with a nonzero weight.

  total = Σ weight × reward. Unknown names in `weights` or `options` raise KeyError listing the known ones;
  zero-weight rewards are not called (their options are still checked by name). A reward call longer than
  `timeout_s` seconds (None or <= 0: no limit) raises RewardError.
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
    values = _call(name, get_reward(name), completions, examples, options.get(name) or {}, timeout_s)
    total += w * values
    parts[name] = values.astype(np.float32)
  with np.errstate(over="ignore"):
    overflow = not np.all(np.isfinite(total.astype(np.float32)))
  if overflow:
    raise ValueError(f"the weighted reward sum overflows float32; weights={active}")
  return total.astype(np.float32), parts


# Registers the built-ins; last, because builtin imports register_reward from here.
from tinyrs_jax.rewards import builtin  # noqa: E402,F401
