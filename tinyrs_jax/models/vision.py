"""Qwen2-VL vision tower: patch embedding, 2D axial rotary, per-image attention, PatchMerger.

Input is the static batch's per-image slots: pixel_values (I, P, patch_dim) and image_grid_thw (I, 3). Patch
rows inside a slot are in the processor's block-major order (each 2x2 merge block is 4 consecutive rows).
Attention runs inside each slot, masked to the slot's valid rows and to one frame, and in chunks of queries
(`ATTN_QUERY_CHUNK` rows at a time, each chunk rematerialised in the backward pass): its memory is
I·heads·chunk·P per layer, linear in P, never I·heads·P² (a 1280·28² image has P = 5120 patches: dense fp32
scores would be 1.7 GB per image per layer) nor (total patches)². The mask is computed per chunk from the
rows' frame index and validity; no (P, P) bias is materialised either.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from tinyrs_jax import sharding
from tinyrs_jax.models.layers import LayerNorm, Linear, param, quick_gelu, rotate_half, scan_layers, stack_layers
from tinyrs_jax.models.presets import VisionConfig

# Query rows per attention chunk: slots with P <= this attend densely in one piece (every test shape and the
# small buckets); bigger slots scan over query chunks. At the 2B's 16 heads, one chunk of 512 queries against
# 5120 keys is 168 MB of fp32 scores per image.
ATTN_QUERY_CHUNK = 512


def patch_positions(grid_thw: jax.Array, num_patches: int, merge: int = 2):
  """(h, w) coordinates, frame index and validity of each row of every slot: (I, P) int32 arrays."""
  t, h, w = grid_thw[:, 0:1], grid_thw[:, 1:2], grid_thw[:, 2:3]
  p = jnp.arange(num_patches, dtype=jnp.int32)[None, :]
  hw = jnp.maximum(h * w, 1)
  frame = p // hw
  q = p % hw
  unit = merge * merge
  block, inner = q // unit, q % unit
  blocks_w = jnp.maximum(w // merge, 1)
  pos_h = (block // blocks_w) * merge + inner // merge
  pos_w = (block % blocks_w) * merge + inner % merge
  valid = p < t * h * w
  return pos_h, pos_w, frame, valid


def vision_rope(pos_h: jax.Array, pos_w: jax.Array, head_dim: int, theta: float):
  """cos, sin of shape (I, P, head_dim) in fp32: [h·inv, w·inv] twice (axial, head_dim/4 frequencies each)."""
  quarter = head_dim // 2
  inv = 1.0 / (theta ** (jnp.arange(0, quarter, 2, dtype=jnp.float32) / quarter))
  f = jnp.concatenate([pos_h[..., None] * inv, pos_w[..., None] * inv], axis=-1).astype(jnp.float32)
  f = jnp.concatenate([f, f], axis=-1)
  return jnp.cos(f), jnp.sin(f)


def _attend(q, k, v, q_frame, q_index, frame, valid, dtype):
  """One chunk of queries q (I, H, C, hd) against all keys k, v (I, H, P, hd); q_frame, q_index (I or 1, C).

  A query attends to the valid keys of its own frame; padding rows (invalid) attend to themselves only, which
  keeps them finite. Softmax in fp32, as the reference. Heads-major layout with plain batched matmuls: XLA:CPU
  runs these far faster than the einsums."""
  hd = q.shape[-1]
  scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=jnp.float32) * (hd ** -0.5)
  keys = jnp.arange(k.shape[2], dtype=jnp.int32)
  allowed = (q_frame[:, :, None] == frame[:, None, :]) & valid[:, None, :]
  allowed = allowed | (q_index[:, :, None] == keys[None, None, :])
  scores = jnp.where(allowed[:, None], scores, -1e30)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  return jnp.matmul(probs, v)


def vision_attention(q, k, v, frame, valid, dtype, chunk: int | None = None):
  """Per-slot attention, q, k, v (I, H, P, hd) -> (I, H, P, hd), in chunks of `chunk` queries (default
  ATTN_QUERY_CHUNK; P or more: one dense piece). Chunks run in a scan, each under jax.checkpoint so that the
  backward pass recomputes its scores instead of keeping all of them: peak memory I·H·chunk·P either way."""
  chunk = ATTN_QUERY_CHUNK if chunk is None else int(chunk)
  i, h, p, hd = q.shape
  index = jnp.arange(p, dtype=jnp.int32)[None]
  if p <= chunk:
    return _attend(q, k, v, frame, index, frame, valid, dtype)
  n = -(-p // chunk)
  pad = n * chunk - p
  if pad:  # padded queries attend to key 0 only (as an index that matches no key is never allowed otherwise)
    q = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0)))
    q_frame = jnp.pad(frame, ((0, 0), (0, pad)), constant_values=-1)
    q_index = jnp.pad(index, ((0, 0), (0, pad)))
  else:
    q_frame, q_index = frame, index
  qs = jnp.moveaxis(q.reshape(i, h, n, chunk, hd), 2, 0)  # (n, I, H, C, hd)
  fs = jnp.moveaxis(q_frame.reshape(i, n, chunk), 1, 0)  # (n, I, C)
  ids = jnp.moveaxis(q_index.reshape(1, n, chunk), 1, 0)  # (n, 1, C)

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def one(qc, fc, ic):
    return _attend(qc, k, v, fc, ic, frame, valid, dtype)

  _, out = jax.lax.scan(lambda c, xs: (c, one(*xs)), None, (qs, fs, ids))
  out = jnp.moveaxis(out, 0, 2).reshape(i, h, n * chunk, hd)
  return out[:, :, :p] if pad else out


class VisionBlock(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    e = cfg.embed_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = LayerNorm(e, cfg.layer_norm_eps, **kw)
    self.norm2 = LayerNorm(e, cfg.layer_norm_eps, **kw)
    self.qkv = Linear(e, 3 * e, ("vision_embed", "vision_heads"), use_bias=True, **kw)
    self.proj = Linear(e, e, ("vision_heads", "vision_embed"), use_bias=True, **kw)
    self.fc1 = Linear(e, cfg.mlp_dim, ("vision_embed", "vision_mlp"), use_bias=True, **kw)
    self.fc2 = Linear(cfg.mlp_dim, e, ("vision_mlp", "vision_embed"), use_bias=True, **kw)
    self.num_heads = cfg.num_heads
    self.dtype = dtype

  def __call__(self, x, cos, sin, frame, valid):
    i, p, e = x.shape
    nh = self.num_heads
    hd = e // nh
    qkv = self.qkv(self.norm1(x)).reshape(i, p, 3, nh, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # Rotary in fp32 (as the reference), then back to the compute dtype.
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    qf, kf = q.astype(jnp.float32), k.astype(jnp.float32)
    q = (qf * c + rotate_half(qf) * s).astype(self.dtype)
    k = (kf * c + rotate_half(kf) * s).astype(self.dtype)
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))  # (I, heads, P, hd)
    attn = jnp.swapaxes(vision_attention(q, k, v, frame, valid, self.dtype), 1, 2).reshape(i, p, e)
    attn = sharding.constrain(attn, ("images", "patches", "act_embed"))
    x = x + self.proj(attn)
    x = x + self.fc2(quick_gelu(self.fc1(self.norm2(x))))
    return sharding.constrain(x, ("images", "patches", "act_embed"))


class PatchMerger(nnx.Module):
  """LayerNorm per patch, 2x2 blocks of 4 consecutive rows concatenated, then MLP (exact GELU) to text width."""

  def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    wide = cfg.embed_dim * cfg.merge_unit
    self.ln_q = LayerNorm(cfg.embed_dim, cfg.layer_norm_eps, **kw)
    self.fc1 = Linear(wide, wide, ("merger_in", "vision_mlp"), use_bias=True, **kw)
    self.fc2 = Linear(wide, cfg.hidden_size, ("vision_mlp", "embed"), use_bias=True, **kw)
    self.unit = cfg.merge_unit

  def __call__(self, x):
    i, p, e = x.shape
    x = self.ln_q(x).reshape(i, p // self.unit, e * self.unit)
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionTower(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat_policy="none",
               rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = dtype
    self.remat_policy = remat_policy
    self.patch_embed = param(rngs, (cfg.patch_dim, cfg.embed_dim), ("patch", "vision_embed"), param_dtype)
    self.blocks = stack_layers(lambda r: VisionBlock(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r),
                               cfg.depth, rngs)
    self.merger = PatchMerger(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, pixel_values: jax.Array, image_grid_thw: jax.Array) -> jax.Array:
    """(I, P, patch_dim), (I, 3) -> merged image features (I, P / merge_unit, hidden_size)."""
    cfg = self.cfg
    i, p, _ = pixel_values.shape
    x = jnp.dot(pixel_values.astype(self.dtype), self.patch_embed[...].astype(self.dtype))
    x = sharding.constrain(x, ("images", "patches", "act_embed"))
    pos_h, pos_w, frame, valid = patch_positions(image_grid_thw.astype(jnp.int32), p, cfg.spatial_merge_size)
    cos, sin = vision_rope(pos_h, pos_w, cfg.head_dim, cfg.rope_theta)
    # Each row attends to valid rows of its own frame; padding rows attend to themselves only (kept finite).
    x, _ = scan_layers(lambda layer, h: (layer(h, cos, sin, frame, valid), None), x, self.blocks,
                       remat_policy=self.remat_policy)
    return self.merger(x)
