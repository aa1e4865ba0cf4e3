"""The static-shape batch every jitted step consumes, defined once.

A batch is a dict of arrays:

  input_ids       int32 (B, L)        token ids; L is one of a few length buckets
  attention_mask  int32 (B, L)        1 on real tokens, 0 on padding (left or right)
  pixel_values    float (I, P, 1176)  one slot per image, each image's patch rows in the processor's order,
                                      zero-padded to P (a patch bucket, a multiple of the merge unit 4)
  image_grid_thw  int32 (I, 3)        (t, h, w) patch grid of each slot; (0, 0, 0) marks an empty slot
  loss_mask       int32 (B, L)        (training only) 1 where token i is a supervised target

Image slots are filled in the order the `<|image_pad|>` runs appear in the batch (row by row, left to right),
which is the order Hugging Face's processor concatenates pixel_values in. Per-image slots keep vision
attention per image: memory grows with I·P², never with the square of all patches in the batch.

`pad_hf_inputs` turns what transformers' processor returns (flat pixel_values (total patches, 1176)) into this
form, rounding every dimension up to a bucket so that arbitrary inputs compile to a handful of shapes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_LENGTH_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
DEFAULT_PATCH_BUCKETS = (64, 256, 1024, 2048, 4096, 5120, 8192, 16384)
DEFAULT_IMAGE_SLOT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def fine_buckets(lo: int = 16, hi: int = 32768, per_octave: int = 8) -> tuple[int, ...]:
  """Buckets with at most 1/per_octave padding waste (multiples of 16): for prompts, where compute is wasted
  on every padded token, at the price of more distinct shapes than the training buckets."""
  out, n = [], lo
  while n <= hi:
    out.append(n)
    step = max(lo, 1 << max(0, n.bit_length() - 1 - (per_octave.bit_length() - 1)))
    n += step
  return tuple(out)


PROMPT_LENGTH_BUCKETS = fine_buckets()


def round_up_to_bucket(n: int, buckets: Sequence[int], what: str = "size") -> int:
  """The smallest bucket >= n; beyond the largest bucket, the next multiple of it (never an error)."""
  for b in sorted(buckets):
    if n <= b:
      return int(b)
  top = max(buckets)
  return int(-(-n // top) * top)


def image_patch_counts(image_grid_thw: np.ndarray) -> np.ndarray:
  g = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
  return g[:, 0] * g[:, 1] * g[:, 2]


def pad_images(pixel_values: np.ndarray | None, image_grid_thw: np.ndarray | None, *, num_slots: int,
               num_patches: int, patch_dim: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
  """Flat (total patches, patch_dim) pixel rows + grids -> per-image slots (num_slots, num_patches, patch_dim)."""
  slots = np.zeros((num_slots, num_patches, patch_dim), dtype=dtype)
  grids = np.zeros((num_slots, 3), dtype=np.int32)
  if pixel_values is None or image_grid_thw is None or len(image_grid_thw) == 0:
    return slots, grids
  counts = image_patch_counts(image_grid_thw)
  if len(counts) > num_slots:
    raise ValueError(f"{len(counts)} images do not fit {num_slots} image slots")
  if counts.max() > num_patches:
    raise ValueError(f"an image has {counts.max()} patches, more than the patch bucket {num_patches}")
  pixel_values = np.asarray(pixel_values)
  if pixel_values.shape != (counts.sum(), patch_dim):
    raise ValueError(f"pixel_values has shape {pixel_values.shape}, expected ({counts.sum()}, {patch_dim}) "
                     f"from image_grid_thw {np.asarray(image_grid_thw).tolist()}")
  offsets = np.concatenate([[0], np.cumsum(counts)])
  for i, n in enumerate(counts):
    slots[i, :n] = pixel_values[offsets[i]:offsets[i + 1]]
  grids[:len(counts)] = np.asarray(image_grid_thw, dtype=np.int32)
  return slots, grids


def pad_images_to_buckets(pixel_values, image_grid_thw, *, patch_dim: int,
                          patch_buckets: Sequence[int] = DEFAULT_PATCH_BUCKETS,
                          slot_buckets: Sequence[int] = DEFAULT_IMAGE_SLOT_BUCKETS, dtype=np.float32):
  """Flat HF-style images -> slots rounded up to buckets; no images -> zero slots (the vision tower is skipped)."""
  n_images = 0 if image_grid_thw is None else len(np.asarray(image_grid_thw).reshape(-1, 3))
  if n_images == 0:
    return pad_images(None, None, num_slots=0, num_patches=min(patch_buckets), patch_dim=patch_dim, dtype=dtype)
  max_patches = int(image_patch_counts(image_grid_thw).max())
  return pad_images(pixel_values, image_grid_thw, num_slots=round_up_to_bucket(n_images, slot_buckets),
                    num_patches=round_up_to_bucket(max_patches, patch_buckets), patch_dim=patch_dim, dtype=dtype)


def check_image_tokens(input_ids: np.ndarray, image_grid_thw: np.ndarray, image_token_id: int, merge_unit: int):
  """The number of <|image_pad|> tokens must equal the number of merged image features (as HF checks)."""
  n_tokens = int((np.asarray(input_ids) == image_token_id).sum())
  n_feats = int(image_patch_counts(image_grid_thw).sum() // merge_unit) if len(image_grid_thw) else 0
  if n_tokens != n_feats:
    raise ValueError(f"{n_tokens} image tokens in input_ids but image_grid_thw gives {n_feats} image features")


def pad_hf_inputs(input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, *, pad_token_id: int = 0,
                  patch_dim: int = 1176, length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
                  patch_buckets: Sequence[int] = DEFAULT_PATCH_BUCKETS,
                  slot_buckets: Sequence[int] = DEFAULT_IMAGE_SLOT_BUCKETS, pixel_dtype=np.float32) -> dict:
  """HF processor outputs -> the static batch (text right-padded to a length bucket, images to slots).

  Returns the batch dict plus "length": the original sequence length, so callers can crop outputs.
  """
  input_ids = np.asarray(input_ids)
  if input_ids.ndim == 1:
    input_ids = input_ids[None]
  b, length = input_ids.shape
  if attention_mask is None:
    attention_mask = np.ones_like(input_ids)
  attention_mask = np.asarray(attention_mask).reshape(b, length)
  padded_len = round_up_to_bucket(length, length_buckets)
  ids = np.full((b, padded_len), pad_token_id, dtype=np.int32)
  mask = np.zeros((b, padded_len), dtype=np.int32)
  ids[:, :length] = input_ids
  mask[:, :length] = attention_mask
  slots, grids = pad_images_to_buckets(pixel_values, image_grid_thw, patch_dim=patch_dim,
                                       patch_buckets=patch_buckets, slot_buckets=slot_buckets, dtype=pixel_dtype)
  return {"input_ids": ids, "attention_mask": mask, "pixel_values": slots, "image_grid_thw": grids,
          "length": length}
