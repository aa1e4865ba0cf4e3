"""Multimodal rotary positions (M-RoPE) for the decoder, computed in JAX with static shapes.

`mrope_positions` is the jit-able equivalent of transformers' `get_rope_index` for images: text tokens advance
one position each in all three rows (temporal, height, width); an image's tokens take (t, h, w) grid offsets
from the running position, which then advances by max(h, w) of the merged grid. Padding gets 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tinyrs_jax.models.layers import rotate_half


def image_token_index(input_ids: jax.Array, image_grid_thw: jax.Array, image_token_id: int, merge: int = 2):
  """For every token: is it an image token, which image slot, and its index inside that image's tokens.

  Image tokens are numbered in batch order (row-major), the order slots are filled in.
  """
  is_image = input_ids == image_token_id
  flat = is_image.reshape(-1).astype(jnp.int32)
  rank = (jnp.cumsum(flat) - flat).reshape(input_ids.shape)  # exclusive: k-th image token in the batch
  tokens_per_image = (image_grid_thw[:, 0] * image_grid_thw[:, 1] * image_grid_thw[:, 2]) // (merge * merge)
  ends = jnp.cumsum(tokens_per_image)
  starts = ends - tokens_per_image
  slot = jnp.searchsorted(ends, rank, side="right").astype(jnp.int32)
  slot = jnp.minimum(slot, image_grid_thw.shape[0] - 1)
  within = rank - starts[slot]
  return is_image, slot, within, tokens_per_image


def mrope_positions(input_ids: jax.Array, attention_mask: jax.Array, image_grid_thw: jax.Array,
                    image_token_id: int, merge: int = 2):
  """Position ids (3, B, L) int32 and rope deltas (B,) as transformers computes them for image inputs."""
  valid = attention_mask.astype(bool)
  is_image, slot, within, n_tok = image_token_index(input_ids, image_grid_thw, image_token_id, merge)
  is_image = is_image & valid
  grid = image_grid_thw[slot]  # (B, L, 3)
  gh = jnp.maximum(grid[..., 1] // merge, 1)
  gw = jnp.maximum(grid[..., 2] // merge, 1)
  t_idx = within // (gh * gw)
  h_idx = (within // gw) % gh
  w_idx = within % gw
  last_of_image = is_image & (within == n_tok[slot] - 1)
  step = jnp.where(valid & ~is_image, 1, 0) + jnp.where(last_of_image, jnp.maximum(gh, gw), 0)
  cur = jnp.cumsum(step, axis=1) - step  # running position before each token
  offs = jnp.stack([t_idx, h_idx, w_idx]) * is_image[None]
  pos = (cur[None] + offs) * valid[None]
  n_valid = valid.sum(axis=1)
  max_pos = jnp.max(jnp.where(valid[None], pos, -1), axis=(0, 2))
  deltas = jnp.where(n_valid > 0, max_pos + 1 - n_valid, 0)
  return pos.astype(jnp.int32), deltas.astype(jnp.int32)


def mrope_cos_sin(positions: jax.Array, head_dim: int, theta: float, sections, dtype):
  """cos, sin (B, L, head_dim): frequency chunk k of the [16, 24, 24]-style split comes from position row k."""
  half = head_dim // 2
  inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))  # (half,)
  freqs = positions.astype(jnp.float32)[..., None] * inv  # (3, B, L, half)
  row = jnp.concatenate([jnp.full((n,), k % 3, jnp.int32) for k, n in enumerate(sections)])
  assert row.shape[0] == half, (sections, head_dim)
  f = jnp.moveaxis(freqs, 0, -1)  # (B, L, half, 3)
  f = jnp.take_along_axis(f, jnp.broadcast_to(row[:, None], f.shape[:-1] + (1,)), axis=-1)[..., 0]
  f = jnp.concatenate([f, f], axis=-1)
  return jnp.cos(f).astype(dtype), jnp.sin(f).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x (B, L, heads, head_dim); cos/sin (B, L, head_dim) already in x's dtype."""
  c, s = cos[:, :, None, :], sin[:, :, None, :]
  return x * c + rotate_half(x) * s
