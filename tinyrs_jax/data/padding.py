"""Where a row's tokens go in a padded batch, decided once: prompts flush right (left padding), training sequences
flush left (right padding). NumPy only, so the processor can use it without importing the model (JAX, Flax)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def pad_token_rows(rows: Sequence[np.ndarray], length: int, pad_token_id: int, *,
                   side: str = "left") -> tuple[np.ndarray, np.ndarray]:
  """Token rows of any lengths <= `length` -> (ids, attention_mask), both int32 (len(rows), length).

  side "left" puts every row flush right, so all prompts end at the last column (where generation continues) and
  padding comes first; "right" puts every row flush left (training sequences). The processor, the pipeline
  and the sampler (`sampling.generate.left_pad_prompts`) all pad through it."""
  if side not in ("left", "right"):
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")
  ids = np.full((len(rows), length), pad_token_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for r, row in enumerate(rows):
    n = len(row)
    if n > length:
      raise ValueError(f"row {r} has {n} tokens, more than the padded length {length}")
    cols = slice(length - n, length) if side == "left" else slice(0, n)
    ids[r, cols] = row
    mask[r, cols] = 1
  return ids, mask
