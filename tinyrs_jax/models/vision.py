"""Qwen2-VL vision tower: patch embedding, 2D axial rotary, per-image attention, PatchMerger.

Input is the static batch's per-image slots: pixel_values (I, P, patch_dim) and image_grid_thw (I, 3). Patch
rows inside a slot are in the processor's block-major order (each 2x2 merge block is 4 consecutive rows).
Attention runs inside each slot, masked to the slot's valid rows and to one frame, so its memory is I·P²,
never (total patches)².
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from tinyrs_jax import sharding
from tinyrs_jax.models.layers import LayerNorm, Linear, param, quick_gelu, rotate_half, scan_layers, stack_layers
from tinyrs_jax.models.presets import VisionConfig


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

  def __call__(self, x, cos, sin, bias):
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
    # Heads-major layout with plain batched matmuls: XLA:CPU runs these far faster than the einsums.
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))  # (I, heads, P, hd)
    scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=jnp.float32) * (hd ** -0.5)
    probs = jax.nn.softmax(scores + bias, axis=-1).astype(self.dtype)
    attn = jnp.swapaxes(jnp.matmul(probs, v), 1, 2).reshape(i, p, e)
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
    allowed = (frame[:, :, None] == frame[:, None, :]) & valid[:, None, :]
    allowed = allowed | jnp.eye(p, dtype=bool)[None]
    bias = jnp.where(allowed, 0.0, -1e30).astype(jnp.float32)[:, None]  # (I, 1, P, P)

    x, _ = scan_layers(lambda layer, h: (layer(h, cos, sin, bias), None), x, self.blocks,
                       remat_policy=self.remat_policy)
    return self.merger(x)
