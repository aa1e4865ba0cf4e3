"""Random static batches (tests, benchmarks, AOT, data.source=random): deterministic in seed and batch index.

`RandomBatches` is an iterator of them with the trainers' interface (next, get_state / set_state), each process
taking its share of the rows of every global batch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tinyrs_jax.models.presets import Qwen2VLConfig
from tinyrs_jax.train.placement import slice_rows


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
