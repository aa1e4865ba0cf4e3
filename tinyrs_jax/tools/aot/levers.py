"""The standard levers tools/aot tries when a stage does not fit, in order, each kept once tried. Every value is
one the trainer's own flag parser (tinyrs_jax.main.load_config) accepts."""
from __future__ import annotations

import copy
from typing import Any

from tinyrs_jax.tools.aot.programs import image_pixels
from tinyrs_jax.tools.aot.targets import Target


def levers(config, target: Target):
  """Cumulative configurations to try, in order: (description flags, config)."""
  c = copy.deepcopy(config)
  flags: dict[str, Any] = {}
  chips_per_slice = target.num_chips // target.num_slices
  if c.model.get("remat_policy", "none") != "full":
    c.model.remat_policy = "full"
    flags["model.remat_policy"] = "full"
    yield dict(flags), copy.deepcopy(c)
  if int(c.mesh.fsdp) != chips_per_slice or int(c.mesh.tensor) != 1:
    for axis, size in (("fsdp", chips_per_slice), ("tensor", 1), ("data", -1)):
      if int(c.mesh[axis]) != size:  # only what changes becomes a flag
        c.mesh[axis] = size
        flags[f"mesh.{axis}"] = size
    yield dict(flags), copy.deepcopy(c)
  data_axes = target.num_chips  # fsdp x data over all chips now
  if c.trainer == "eval":  # no gradients: fewer prompts per generation batch instead of microbatches
    rows = int(c.eval.batch_size)
    while rows % 2 == 0 and (rows // 2) % data_axes == 0:
      rows //= 2
      c.eval.batch_size = rows
      flags["eval.batch_size"] = rows
      yield dict(flags), copy.deepcopy(c)
  accum = int(c.get("grad_accum_steps", 1))
  while c.trainer != "eval":
    accum *= 2
    if c.batch_size % accum or (c.batch_size // accum) % data_axes:
      break
    c.grad_accum_steps = accum
    flags["grad_accum_steps"] = accum
    yield dict(flags), copy.deepcopy(c)
  for blocks in (1024, 768, 512, 256):
    px = blocks * 28 * 28
    lo, hi = image_pixels(c)  # evaluation's 0 is the stages' budget, not "no limit"
    if px >= hi:
      continue
    c.data.max_pixels = px
    if lo > px:
      c.data.min_pixels = px
      flags["data.min_pixels"] = px
    flags["data.max_pixels"] = px  # a plain int: what the trainer's --config.data.max_pixels accepts
    yield dict(flags), copy.deepcopy(c)


def as_flags(flags: dict) -> str:
  return " ".join(f"--config.{k}={v}" for k, v in flags.items())
