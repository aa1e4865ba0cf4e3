"""Batches for the trainers: the data pipeline's static batches, or random ones (tests, benchmarks, AOT).

Everything the trainer needs from an input is:
  next(it)            a static batch (see tinyrs_jax/models/batch.py) of this process's rows, NumPy arrays
  it.get_state()      a JSON-able dict; it.set_state(d) continues exactly after the batch it was taken at

`RandomBatches` is such an iterator of random batches (deterministic in seed and batch index).
`stack_microbatches` pads a list of static batches to common shapes and stacks them (gradient accumulation).
`to_global` turns this process's rows into global jax.Arrays sharded over the mesh.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from tinyrs_jax.models.presets import Qwen2VLConfig

TEXT_KEYS = ("input_ids", "attention_mask", "loss_mask")


def random_batch(cfg: Qwen2VLConfig, *, batch_size: int, length: int, grid: Sequence[int] = (1, 4, 4),
                 images_per_row: int = 1, seed: int = 0, answer_frac: float = 0.4,
                 pad_token_id: int | None = None) -> dict[str, np.ndarray]:
  """A static batch of random tokens: per row [vision_start, image tokens, vision_end] x images_per_row, a
  random-length prompt, then an answer (the supervised part), right-padded. Lengths vary per row."""
  rng = np.random.default_rng(seed)
  t, h, w = grid
  merge = cfg.vision.spatial_merge_size
  n_img_tok = t * h * w // (merge * merge)
  pad = cfg.pad_token_id if pad_token_id is None else pad_token_id
  pad = 0 if pad is None else pad
  specials = {cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id}
  lo, hi = 3, min(s for s in specials) - 1
  ids = np.full((batch_size, length), pad, np.int32)
  attn = np.zeros((batch_size, length), np.int32)
  loss = np.zeros((batch_size, length), np.int32)
  head = images_per_row * (n_img_tok + 2)
  if head + 4 > length:
    raise ValueError(f"length {length} too short for {images_per_row} images of {n_img_tok} tokens")
  for r in range(batch_size):
    n = int(rng.integers(max(head + 4, length * 3 // 4), length + 1))
    row = []
    for _ in range(images_per_row):
      row += [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img_tok + [cfg.vision_end_token_id]
    text = rng.integers(lo, hi, n - len(row))
    n_ans = max(1, int((n - len(row)) * answer_frac))
    ids[r, :n] = np.concatenate([np.asarray(row, np.int64), text])
    attn[r, :n] = 1
    loss[r, n - n_ans:n] = 1
  num_images = batch_size * images_per_row
  pixel_values = rng.standard_normal((num_images, t * h * w, cfg.vision.patch_dim)).astype(np.float32)
  grids = np.tile(np.asarray([[t, h, w]], np.int32), (num_images, 1))
  return {"input_ids": ids, "attention_mask": attn, "pixel_values": pixel_values, "image_grid_thw": grids,
          "loss_mask": loss}


class RandomBatches:
  """An endless, checkpointable iterator of `random_batch`es: batch k uses seed (seed, k)."""

  def __init__(self, cfg: Qwen2VLConfig, *, batch_size: int, length: int, seed: int = 0,
               process_index: int = 0, process_count: int = 1, **kw):
    if batch_size % process_count:
      raise ValueError(f"batch size {batch_size} not divisible by {process_count} processes")
    self.cfg, self.batch_size, self.length, self.seed, self.kw = cfg, batch_size, length, seed, kw
    self.process_index, self.process_count = process_index, process_count
    self.index = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    full = random_batch(self.cfg, batch_size=self.batch_size, length=self.length,
                        seed=self.seed * 1_000_003 + self.index, **self.kw)
    self.index += 1
    return slice_rows(full, self.process_index, self.process_count)

  def get_state(self) -> dict:
    return {"index": self.index}

  def set_state(self, state: dict) -> None:
    self.index = int(state["index"])


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


def to_global(batch: dict[str, np.ndarray], shardings: dict) -> dict[str, jax.Array]:
  """This process's rows -> global arrays (rows of all processes concatenated in process order)."""
  out = {}
  for k, v in batch.items():
    s = shardings[k]
    if jax.process_count() == 1:
      out[k] = jax.device_put(v, s)
    else:
      out[k] = jax.make_array_from_process_local_data(s, v)
  return out


def global_shape(batch: dict[str, np.ndarray], grad_accum: int = 1) -> dict[str, tuple]:
  """Global shapes of a process-local batch (its leading row/slot axis times the process count)."""
  lead = 1 if grad_accum > 1 else 0
  out = {}
  for k, v in batch.items():
    shape = list(v.shape)
    shape[lead] *= jax.process_count()
    out[k] = tuple(shape)
  return out


# ------------------------------------------------------------------------------------ config -> inputs

@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What the config's data block resolves to (paths made concrete, demo assets built when asked)."""
  source: str  # "random" or "pipeline"
  tokenizer_dir: str | None = None
  train_path: str | None = None
  val_path: str | None = None


def resolve_data(config) -> DataSpec:
  d = config.data
  if d.source == "random":
    return DataSpec("random", d.get("tokenizer_dir") or None)
  raise ValueError(f"unknown data.source {d.source!r}; use random or pipeline")


def make_iterator(config, spec: DataSpec, split: str, model_cfg: Qwen2VLConfig, *, batch_size: int,
                  process_index: int = 0, process_count: int = 1):
  """This process's iterator over global batches of `batch_size` rows (its slice of each)."""
  d = config.data
  if spec.source == "random":
    seed = int(config.seed) + (0 if split == "train" else 7919)
    return RandomBatches(model_cfg, batch_size=batch_size, length=int(d.length), seed=seed,
                         grid=tuple(d.get("grid", (1, 4, 4))), process_index=process_index,
                         process_count=process_count)
  raise ValueError(f"unknown data.source {spec.source!r}")


def total_steps(config, spec: DataSpec, global_batch: int) -> int:
  if int(config.get("total_steps", -1)) > 0:
    return int(config.total_steps)
  raise ValueError("set config.total_steps (data.source=random has no epochs)")


def has_eval(config, spec: DataSpec) -> bool:
  return int(config.eval.get("num_batches", 0)) != 0


def eval_batches(config, spec: DataSpec, model_cfg: Qwen2VLConfig, *, process_index: int = 0,
                 process_count: int = 1):
  """The same evaluation batches every time (a fresh iterator over the validation split)."""
  e = config.eval
  bs = int(e.get("batch_size", 0) or config.batch_size // int(config.get("grad_accum_steps", 1)))
  it = make_iterator(config, spec, "val", model_cfg, batch_size=bs, process_index=process_index,
                     process_count=process_count)
  n = int(e.get("num_batches", 0))
  for i, b in enumerate(it):
    if 0 <= n <= i:
      return
    yield b
