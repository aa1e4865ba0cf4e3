"""Qwen2 decoder: RMSNorm, grouped-query attention with q/k/v bias, SwiGLU MLP, M-RoPE; layers scanned.

One code path serves training (no cache), prefill and decode (a static KV cache). Attention is allowed from a
query in cache slot i to a key in slot j when j <= i and key j is valid (attention mask), which covers causal
masking, left or right padding, and decoding into a preallocated cache.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from tinyrs_jax import sharding
from tinyrs_jax.models.layers import Linear, RMSNorm, maybe_remat, stack_layers
from tinyrs_jax.models.presets import TextConfig
from tinyrs_jax.models.rope import apply_rope

NEG_INF = -1e30
# Query rows per attention chunk: sequences up to this attend densely in one piece (decode, every test shape);
# longer ones (training at 2048 tokens, prefill, GRPO scoring) scan over query chunks, each rematerialised in
# the backward pass, so the fp32 scores are B·H·chunk·S instead of B·H·L·S (a prefill of 32 prompts of 4096
# tokens would hold 25.8 GB of them per layer, dense).
ATTN_QUERY_CHUNK = 512


class KVCache(NamedTuple):
  """Static KV cache for all layers; key_mask (B, S) marks valid slots.

  k, v are either stacked, (layers, B, S, kv_heads, head_dim) — what prefill's layer scan writes — or tuples
  of per-layer (B, S, kv_heads, head_dim) buffers — what the decode loop carries, so that each step writes
  one slot of each buffer in place instead of copying whole layers in and out of a stacked array.
  """
  k: jax.Array | tuple
  v: jax.Array | tuple
  key_mask: jax.Array

  def unstacked(self) -> "KVCache":
    if isinstance(self.k, tuple):
      return self
    n = self.k.shape[0]
    return KVCache(tuple(self.k[i] for i in range(n)), tuple(self.v[i] for i in range(n)), self.key_mask)

  @classmethod
  def zeros(cls, cfg: TextConfig, batch: int, size: int, dtype) -> "KVCache":
    shape = (cfg.num_hidden_layers, batch, size, cfg.num_key_value_heads, cfg.head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, size), jnp.int32))


def gqa_attention(q, k, v, allowed, dtype, chunk: int | None = None):
  """q (B, L, H, D); k, v (B, S, KVH, D); allowed (B, L, S) bool -> (B, L, H*D). Softmax in fp32. In chunks
  of `chunk` query rows (default ATTN_QUERY_CHUNK) when L is longer: the same numbers, memory linear in L."""
  chunk = ATTN_QUERY_CHUNK if chunk is None else int(chunk)
  b, l, h, d = q.shape
  if l <= chunk:
    return _gqa_dense(q, k, v, allowed, dtype)
  n = -(-l // chunk)
  pad = n * chunk - l
  if pad:  # padded query rows attend to nothing (uniform, finite) and are cut off below
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    allowed = jnp.pad(allowed, ((0, 0), (0, pad), (0, 0)))
  qs = jnp.moveaxis(q.reshape(b, n, chunk, h, d), 1, 0)  # (n, B, C, H, D)
  masks = jnp.moveaxis(allowed.reshape(b, n, chunk, allowed.shape[-1]), 1, 0)  # (n, B, C, S)

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def one(qc, mc):
    return _gqa_dense(qc, k, v, mc, dtype)

  _, out = jax.lax.scan(lambda c, xs: (c, one(*xs)), None, (qs, masks))  # (n, B, C, H*D)
  out = jnp.moveaxis(out, 0, 1).reshape(b, n * chunk, h * d)
  return out[:, :l] if pad else out


def _gqa_dense(q, k, v, allowed, dtype):
  b, l, h, d = q.shape
  s, kvh = k.shape[1], k.shape[2]
  g = h // kvh
  # (B, KVH, G·L, D) x (B, KVH, D, S): each KV head serves its G query heads in one batched matmul.
  q = q.reshape(b, l, kvh, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kvh, g * l, d)
  k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # (B, KVH, S, D)
  scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=jnp.float32) * (d ** -0.5)
  scores = jnp.where(allowed[:, None, None], scores.reshape(b, kvh, g, l, s), NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype).reshape(b, kvh, g * l, s)
  out = jnp.matmul(probs, v).reshape(b, kvh, g, l, d)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, l, h * d)


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, hd = cfg.hidden_size, cfg.head_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.input_norm = RMSNorm(d, cfg.rms_norm_eps, **kw)
    self.post_attention_norm = RMSNorm(d, cfg.rms_norm_eps, **kw)
    self.q_proj = Linear(d, cfg.num_attention_heads * hd, ("embed", "q_heads"), use_bias=True, **kw)
    self.k_proj = Linear(d, cfg.num_key_value_heads * hd, ("embed", "kv_heads"), use_bias=True, **kw)
    self.v_proj = Linear(d, cfg.num_key_value_heads * hd, ("embed", "kv_heads"), use_bias=True, **kw)
    self.o_proj = Linear(cfg.num_attention_heads * hd, d, ("q_heads", "embed"), use_bias=False, **kw)
    self.gate_proj = Linear(d, cfg.intermediate_size, ("embed", "mlp"), use_bias=False, **kw)
    self.up_proj = Linear(d, cfg.intermediate_size, ("embed", "mlp"), use_bias=False, **kw)
    self.down_proj = Linear(cfg.intermediate_size, d, ("mlp", "embed"), use_bias=False, **kw)
    self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, hd
    self.dtype = dtype

  def __call__(self, x, cos, sin, allowed, kv=None, write_index=None):
    """kv: this layer's cache (k, v) of (B, S, KVH, D) or None; returns (x, (k, v) written)."""
    b, l, _ = x.shape
    h = self.input_norm(x)
    q = self.q_proj(h).reshape(b, l, self.heads, self.head_dim)
    k = self.k_proj(h).reshape(b, l, self.kv_heads, self.head_dim)
    v = self.v_proj(h).reshape(b, l, self.kv_heads, self.head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q = sharding.constrain(q, ("batch", "length", "act_heads", None))
    if kv is not None:
      ck, cv = kv
      k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, write_index, 0, 0))
      v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, write_index, 0, 0))
    attn = gqa_attention(q, k.astype(self.dtype), v.astype(self.dtype), allowed, self.dtype)
    x = x + self.o_proj(attn)
    h = self.post_attention_norm(x)
    mlp = jax.nn.silu(self.gate_proj(h)) * self.up_proj(h)
    mlp = sharding.constrain(mlp, ("batch", "length", "act_mlp"))
    x = x + self.down_proj(mlp)
    return sharding.constrain(x, ("batch", "length", "act_embed")), (k, v)


class Decoder(nnx.Module):
  """The stack of decoder layers and the final norm (embeddings and head live in the joint model)."""

  def __init__(self, cfg: TextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat_policy="none",
               rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = dtype
    self.remat_policy = remat_policy
    self.layers = stack_layers(lambda r: DecoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r),
                               cfg.num_hidden_layers, rngs)
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def unstacked_layers(self):
    """(graphdef, [per-layer state]): slice the stacked weights once, outside a decode loop."""
    graphdef, state = nnx.split(self.layers)
    return graphdef, [jax.tree.map(lambda a, i=i: a[i], state) for i in range(self.cfg.num_hidden_layers)]

  def __call__(self, x, cos, sin, allowed, cache: KVCache | None = None, write_index=None, layers=None):
    """x (B, L, D) -> (normed hidden (B, L, D), updated cache or None).

    With a cache, this call's keys/values are written at `write_index` of every layer's cache and attention
    reads the whole cache. A stacked cache goes through the layer scan (prefill); a per-layer cache with
    `layers` from `unstacked_layers()` runs the layers unrolled (decode: no per-step copies of the cache).
    """
    if cache is not None and isinstance(cache.k, tuple):
      graphdef, states = layers if layers is not None else self.unstacked_layers()
      ks, vs = [], []
      for i, layer_state in enumerate(states):
        x, (k, v) = nnx.merge(graphdef, layer_state)(x, cos, sin, allowed, (cache.k[i], cache.v[i]), write_index)
        ks.append(k)
        vs.append(v)
      return self.norm(x), cache._replace(k=tuple(ks), v=tuple(vs))
    graphdef, state = nnx.split(self.layers)
    if cache is None:
      def body(h, layer_state):
        h, _ = nnx.merge(graphdef, layer_state)(h, cos, sin, allowed)
        return h, None

      x, _ = jax.lax.scan(maybe_remat(body, self.remat_policy), x, state)
      return self.norm(x), None

    def body_cached(carry, inputs):
      h, ck, cv = carry
      layer_state, i = inputs
      layer = nnx.merge(graphdef, layer_state)
      h, (k, v) = layer(h, cos, sin, allowed, (ck[i], cv[i]), write_index)
      ck = jax.lax.dynamic_update_index_in_dim(ck, k, i, 0)
      cv = jax.lax.dynamic_update_index_in_dim(cv, v, i, 0)
      return (h, ck, cv), None

    idx = jnp.arange(self.cfg.num_hidden_layers)
    (x, ck, cv), _ = jax.lax.scan(body_cached, (x, cache.k, cache.v), (state, idx))
    return self.norm(x), cache._replace(k=ck, v=cv)
