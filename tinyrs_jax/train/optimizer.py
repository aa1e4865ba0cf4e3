"""Optimizer: parameter groups (vision / merger / llm), per-group learning rates, freezing, clipping, schedules.

Groups are decided by the parameter path, in one place (`param_group`):
  visual/merger/...  -> "merger"
  visual/...         -> "vision"
  everything else    -> "llm"   (embeddings, decoder, head)

A frozen group is not part of the optimizer at all: the step splits parameters into trainable and frozen
parts (`split_trainable`), differentiates only the first and passes the second through untouched, so frozen
weights stay bit-identical, cost no gradient memory and hold no optimizer state.

`make_optimizer(optim_config, params, total_steps)` returns an `Optimizer`: the optax transformation (over
the trainable parameters only), the trainable mask, which groups train (`trainable_groups`, the one place that
decides it) and the per-group schedules (for logging). It is algorithm-agnostic: SFT and GRPO build theirs from
the same config block.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

GROUPS = ("vision", "merger", "llm")
NO_DECAY_NAMES = ("bias", "scale")  # biases and norm scales are not decayed (as HF Trainer's default)


def param_group(path: tuple[str, ...]) -> str:
  if path and path[0] == "visual":
    return "merger" if len(path) > 1 and path[1] == "merger" else "vision"
  return "llm"


def _key_str(k) -> str:
  return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def path_names(key_path) -> tuple[str, ...]:
  """A jax key path (dict keys, attribute names, indices) as a tuple of strings, as param_group reads it."""
  return tuple(_key_str(k) for k in key_path)


def map_with_path(fn: Callable[[tuple[str, ...], Any], Any], tree):
  """jax.tree.map with the leaf's path as a tuple of strings (pure-dict parameter trees)."""
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_names(p), x), tree)


def group_labels(params) -> Any:
  return map_with_path(lambda path, _: param_group(path), params)


def trainable_groups(params, mask) -> dict[str, bool]:
  """The one answer to "which parameter groups train": group -> whether any of its parameters trains under
  `mask` (the optimizer's groups and schedules, FLOP counts, logs)."""
  labels, flags = jax.tree.leaves(group_labels(params)), jax.tree.leaves(mask)
  return {g: any(m for l, m in zip(labels, flags) if l == g) for g in GROUPS}


def parse_groups(value) -> tuple[str, ...]:
  """'vision,merger' or a sequence -> validated tuple of group names."""
  if value is None:
    return ()
  names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v and v.strip()]
  bad = [n for n in names if n not in GROUPS]
  if bad:
    raise ValueError(f"unknown parameter group(s) {bad}; groups are {list(GROUPS)}")
  return tuple(names)


def trainable_mask(params, frozen_groups=()) -> Any:
  frozen = set(parse_groups(frozen_groups))
  return map_with_path(lambda path, _: param_group(path) not in frozen, params)


def split_trainable(params, mask):
  """(trainable, frozen): two trees of the same structure, None where a leaf belongs to the other part."""
  trainable = jax.tree.map(lambda x, m: x if m else None, params, mask)
  frozen = jax.tree.map(lambda x, m: None if m else x, params, mask)
  return trainable, frozen


def merge_trainable(trainable, frozen):
  return jax.tree.map(lambda a, b: b if a is None else a, trainable, frozen, is_leaf=lambda x: x is None)


# ---------------------------------------------------------------------------------------------- schedules

def warmup_steps_for(total_steps: int, warmup_frac: float = 0.0, warmup_steps: int = -1) -> int:
  if warmup_steps is not None and warmup_steps >= 0:
    return int(warmup_steps)
  return int(math.ceil(total_steps * warmup_frac))


def make_schedule(peak: float, total_steps: int, warmup: int, kind: str = "cosine",
                  end_frac: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0 (HF's convention: the first update has lr 0 when warming up), then `kind`."""
  total_steps = max(int(total_steps), 1)
  warmup = min(int(warmup), total_steps)
  decay = max(total_steps - warmup, 1)
  end = peak * end_frac
  if kind == "cosine":
    after = optax.cosine_decay_schedule(peak, decay, alpha=end_frac)
  elif kind == "linear":
    after = optax.linear_schedule(peak, end, decay)
  elif kind == "constant":
    after = optax.constant_schedule(peak)
  else:
    raise ValueError(f"unknown schedule {kind!r}; use cosine, linear or constant")
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


# ---------------------------------------------------------------------------------------------- optimizer

@dataclasses.dataclass(frozen=True)
class Optimizer:
  tx: optax.GradientTransformation  # acts on the trainable part (split_trainable) of the parameters
  mask: Any  # bool per parameter leaf: trainable
  schedules: dict[str, optax.Schedule]  # per trainable group
  max_grad_norm: float
  trainable: dict[str, bool]  # group -> trains (trainable_groups of the mask): what FLOP counts and logs read


def group_lrs(optim_config) -> dict[str, float]:
  """Peak lr of every group: optim.lr, overridden by optim.group_lr.<group> where that is >= 0."""
  lrs = {g: float(optim_config.lr) for g in GROUPS}
  group_lr = optim_config.get("group_lr", None) or {}
  for g in GROUPS:
    v = group_lr.get(g, -1.0) if hasattr(group_lr, "get") else -1.0
    if v is not None and v >= 0:
      lrs[g] = float(v)
  return lrs


def make_optimizer(optim_config, params, total_steps: int) -> Optimizer:
  """AdamW (or SGD/Adafactor-free simple choices) with per-group lr, weight decay mask and clipping."""
  o = optim_config
  mask = trainable_mask(params, o.get("freeze", ""))
  labels = group_labels(params)
  trainable = trainable_groups(params, mask)
  training = sorted(g for g, trains in trainable.items() if trains)
  if not training:
    raise ValueError(f"optim.freeze={o.get('freeze')!r} freezes every parameter group")
  warmup = warmup_steps_for(total_steps, o.get("warmup_frac", 0.0), o.get("warmup_steps", -1))
  lrs = group_lrs(o)
  schedules = {g: make_schedule(lrs[g], total_steps, warmup, o.get("schedule", "cosine"), o.get("end_lr_frac", 0.0))
               for g in training}
  decay_mask = map_with_path(lambda path, _: path[-1] not in NO_DECAY_NAMES, params)
  decay_mask, _ = split_trainable(decay_mask, mask)
  labels_t, _ = split_trainable(labels, mask)
  name = o.get("name", "adamw")
  mu_dtype = o.get("mu_dtype", None) or None

  def inner(schedule):
    if name == "adamw":
      return optax.adamw(schedule, b1=o.get("b1", 0.9), b2=o.get("b2", 0.999), eps=o.get("eps", 1e-8),
                         weight_decay=o.get("weight_decay", 0.0), mask=decay_mask,
                         mu_dtype=None if mu_dtype is None else jnp.dtype(mu_dtype))
    if name == "sgd":
      return optax.sgd(schedule, momentum=o.get("momentum", None) or None)
    raise ValueError(f"unknown optimizer {name!r}; use adamw or sgd")

  if len(training) == 1 or len({lrs[g] for g in training}) == 1:
    tx = inner(schedules[training[0]])  # one group of transforms is cheaper to trace
  else:
    tx = optax.multi_transform({g: inner(schedules[g]) for g in training}, labels_t)
  max_norm = float(o.get("max_grad_norm", 0.0) or 0.0)
  if max_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(max_norm), tx)
  return Optimizer(tx=tx, mask=mask, schedules=schedules, max_grad_norm=max_norm, trainable=trainable)
