"""Host -> global placement of batches: each process holds its own rows as NumPy; the step takes global
jax.Arrays sharded over the mesh's data axes.

  check_batch_split    the data axes must split a batch across processes (each process loads different rows)
  batch_shardings      rows and image slots over the data axes (a leading microbatch axis unsharded)
  place_batch          this process's rows -> global arrays in the train step's shardings
  to_global            the same with given shardings; global_shape: the global shapes of a process-local batch
  slice_rows           a process's contiguous share of a global host batch
  pad_batch, stack_microbatches   common shapes for k microbatches, stacked (gradient accumulation)

No configuration is read here (that is train/input.py's).
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from tinyrs_jax import sharding as sharding_lib

TEXT_KEYS = ("input_ids", "attention_mask", "loss_mask")


def slice_rows(batch: dict[str, np.ndarray], index: int, count: int) -> dict[str, np.ndarray]:
  """This process's contiguous share of the rows and of the image slots (slots follow rows in order)."""
  if count == 1:
    return batch
  out = {}
  for k, v in batch.items():
    n = v.shape[0] // count
    out[k] = v[index * n:(index + 1) * n]
  return out


def pad_batch(batch: dict[str, np.ndarray], *, length: int, slots: int, patches: int) -> dict[str, np.ndarray]:
  """Right-pads text to `length`, images to `slots` x `patches` (masked out: same result, bigger shapes)."""
  out = dict(batch)
  b, l = batch["input_ids"].shape
  if l < length:
    for k in TEXT_KEYS:
      if k in batch:
        out[k] = np.pad(batch[k], ((0, 0), (0, length - l)))
    # the pad id does not matter: those positions are masked everywhere
  pv, g = batch["pixel_values"], batch["image_grid_thw"]
  if pv.shape[0] < slots or pv.shape[1] < patches:
    out["pixel_values"] = np.pad(pv, ((0, slots - pv.shape[0]), (0, patches - pv.shape[1]), (0, 0)))
    out["image_grid_thw"] = np.pad(g, ((0, slots - g.shape[0]), (0, 0)))
  return out


def stack_microbatches(batches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """k static batches -> one with a leading microbatch axis of size k (padded to common shapes)."""
  length = max(b["input_ids"].shape[1] for b in batches)
  slots = max(b["pixel_values"].shape[0] for b in batches)
  patches = max(b["pixel_values"].shape[1] for b in batches)
  padded = [pad_batch(b, length=length, slots=slots, patches=patches) for b in batches]
  return {k: np.stack([p[k] for p in padded]) for k in padded[0]}


def check_batch_split(batch_size: int, data_axes: int, process_count: int, what: str = "batch") -> None:
  """Every process loads different rows, so the data axes (data x fsdp) must split the batch across processes:
  a batch axis replicated over several processes would hold different rows on each (silently wrong)."""
  if data_axes % process_count:
    raise ValueError(f"the mesh's data axes (data x fsdp = {data_axes}) must be a multiple of the process count "
                     f"({process_count}): each process loads its own rows, which a batch axis replicated across "
                     "processes cannot hold; give data or fsdp more devices (e.g. --config.mesh.data=-1)")
  if batch_size % data_axes:
    raise ValueError(f"{what} {batch_size} must be divisible by the data axes ({data_axes} = data x fsdp)")


def to_global(batch: dict[str, np.ndarray], shardings: dict) -> dict[str, jax.Array]:
  """This process's rows -> global arrays (rows of all processes concatenated in process order)."""
  return {k: sharding_lib.host_to_global(v, shardings[k], what=k) for k, v in batch.items()}


def place_batch(batch: dict[str, np.ndarray], mesh, grad_accum: int = 1) -> dict[str, jax.Array]:
  """This process's rows -> global arrays sharded as the train step expects, the shardings chosen for the
  GLOBAL shapes (a per-process row count the data axes do not divide must not turn into replication)."""
  shapes = {k: jax.ShapeDtypeStruct(s, batch[k].dtype) for k, s in global_shape(batch, grad_accum).items()}
  return to_global(batch, batch_shardings(mesh, shapes, grad_accum))


def global_shape(batch: dict[str, np.ndarray], grad_accum: int = 1) -> dict[str, tuple]:
  """Global shapes of a process-local batch (its leading row/slot axis times the process count)."""
  lead = 1 if grad_accum > 1 else 0
  out = {}
  for k, v in batch.items():
    shape = list(v.shape)
    shape[lead] *= jax.process_count()
    out[k] = tuple(shape)
  return out


def batch_shardings(mesh, batch_like: dict, grad_accum: int = 1) -> dict:
  """Rows (and image slots) over the data axes; a leading microbatch axis, when present, unsharded."""
  lead = 1 if grad_accum > 1 else 0
  out = {}
  for k, v in batch_like.items():
    shape = tuple(v.shape)
    names = (None,) * lead + ("batch",) + (None,) * (len(shape) - lead - 1)
    if k in ("pixel_values", "image_grid_thw"):
      names = (None,) * lead + ("images",) + (None,) * (len(shape) - lead - 1)
    out[k] = sharding_lib.named_sharding(mesh, names, shape)
  return out
