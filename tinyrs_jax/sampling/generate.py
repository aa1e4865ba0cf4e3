"""Batched generation with a static KV cache: the rollout engine for GRPO and the evaluators.

One jitted prefill (vision tower + prompt into the cache, first token sampled) and one jitted decode loop
(`lax.while_loop` over a preallocated cache, stopping early once every row is finished). Prompts are
left-padded to a length bucket so that every row's next token goes to the same cache slot; the generation
buffer is sized by a bucket of max_new_tokens, and the step count, temperature, top-k and top-p are traced
values, so calls that fall in the same buckets never recompile (`compile_count()` tells).

Log-probabilities are those of the chosen token under the full-vocabulary log_softmax(logits / temperature)
(raw logits when greedy), before top-k / top-p masking: the old-policy terms GRPO needs.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tinyrs_jax import sharding
from tinyrs_jax.data.padding import pad_token_rows
from tinyrs_jax.models import batch as batch_lib
from tinyrs_jax.models.decoder import KVCache

NEW_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)
_COMPILES: collections.Counter = collections.Counter()


def compile_count(kind: str | None = None) -> int:
  """How many times prefill / decode were traced (compiled) in this process."""
  return sum(_COMPILES.values()) if kind is None else _COMPILES[kind]


@dataclasses.dataclass
class Generation:
  tokens: np.ndarray  # (rows, max_new_tokens) int32; a prompt's num_samples rows are consecutive
  logprobs: np.ndarray  # (rows, max_new_tokens) float32; 0 after a row finished
  lengths: np.ndarray  # (rows,) int32: generated tokens including the stop token
  prompt_length: int = 0  # padded prompt length of the static batch (for teacher-forced scoring)


# ---------------------------------------------------------------------------------------------- sampling

def token_logprobs(logits: jax.Array, tokens: jax.Array, temperature) -> jax.Array:
  """log_softmax(logits / T)[token] over the full vocabulary; T = 0 means raw logits."""
  t = jnp.where(temperature > 0, temperature, 1.0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32) / t, axis=-1)
  return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def filter_logits(logits: jax.Array, top_k, top_p) -> jax.Array:
  """Masks (to -inf) what top-k (k > 0) and nucleus top-p (p < 1) exclude; always keeps the best token."""
  v = logits.shape[-1]
  sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
  kth = jnp.take_along_axis(sorted_logits, jnp.broadcast_to(k - 1, (logits.shape[0], 1)).astype(jnp.int32), -1)
  logits = jnp.where(logits < kth, -jnp.inf, logits)
  sorted_logits = jnp.where(jnp.arange(v)[None] < k, sorted_logits, -jnp.inf)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # probability mass of strictly better tokens
  keep_sorted = (before < top_p) | (jnp.arange(v)[None] == 0)
  n_keep = keep_sorted.sum(axis=-1, keepdims=True)
  cutoff = jnp.take_along_axis(sorted_logits, n_keep - 1, -1)
  return jnp.where(logits < cutoff, -jnp.inf, logits)


def sample(logits, rng, temperature, top_k, top_p, mode: str):
  """mode (static): greedy | sample | sample_filtered. Returns (tokens, logprobs)."""
  logits = logits.astype(jnp.float32)
  if mode == "greedy":
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  else:
    scaled = logits / temperature
    if mode == "sample_filtered":
      scaled = filter_logits(scaled, top_k, top_p)
    tokens = jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
  return tokens, token_logprobs(logits, tokens, temperature if mode != "greedy" else 0.0)


# ---------------------------------------------------------------------------------------------- jitted parts

@functools.partial(jax.jit, static_argnames=("graphdef", "cache_size", "num_samples", "mode"))
def prefill(graphdef, state, input_ids, attention_mask, pixel_values, image_grid_thw, rng, temperature, top_k,
             top_p, *, cache_size: int, num_samples: int, mode: str):
  _COMPILES["prefill"] += 1
  model = nnx.merge(graphdef, state)
  b, length = input_ids.shape
  cache = KVCache.zeros(model.cfg.text, b, cache_size, model.dtype)
  cache = _constrain_cache(cache)
  h, cache, deltas = model.prefill(input_ids, attention_mask, pixel_values, image_grid_thw, cache)
  n_valid = attention_mask.sum(axis=1).astype(jnp.int32)
  h = h[:, -1]  # the last position predicts the first new token: (B, D), before any repeat
  if num_samples > 1:  # reuse each prompt's prefill for its samples: repeat cache rows, not compute
    rep = functools.partial(jnp.repeat, repeats=num_samples, axis=0)
    cache = KVCache(jnp.repeat(cache.k, num_samples, axis=1), jnp.repeat(cache.v, num_samples, axis=1),
                    rep(cache.key_mask))
    cache = _constrain_cache(cache)
    h, deltas, n_valid = rep(h), rep(deltas), rep(n_valid)
  logits = model.logits(h)
  tokens, logprobs = sample(logits, rng, temperature, top_k, top_p, mode)
  return cache, tokens, logprobs, n_valid + deltas  # next text position of each row


def _decode_impl(graphdef, state, cache, first_tokens, first_logprobs, next_pos, start_slot, max_new, rng,
            temperature, top_k, top_p, eos_ids, pad_id, *, buffer: int, mode: str, unroll_layers: bool = False):
  """Generates up to max_new (<= buffer) tokens; the first came from prefill. `decode_loop` donates the cache: the
  loop writes into prefill's buffers instead of a second cache.

  unroll_layers (static): False (TPU, GPU) runs each step's layers as a scan over the stacked weights and the
  stacked cache, so no weights are copied. True (XLA:CPU, where slicing the stacked arrays inside the loop
  copies them on every step: 0.81x instead of 1.26x transformers at batch 8) slices the decoder weights per
  layer once, outside the loop, cast to the compute dtype: a transient copy of the decoder weights (at the
  compute dtype: half the fp32 weights in bf16) for the duration of the call."""
  _COMPILES["decode"] += 1
  model = nnx.merge(graphdef, state)
  if unroll_layers:
    gd, per_layer = model.decoder.unstacked_layers()
    layers = (gd, jax.tree.map(lambda a: a.astype(model.dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                               per_layer))
    cache = _constrain_cache(cache.unstacked())
  else:
    layers = None
    cache = _constrain_cache(cache)
  rows = first_tokens.shape[0]
  tokens = jnp.full((rows, buffer), pad_id, jnp.int32).at[:, 0].set(first_tokens)
  logprobs = jnp.zeros((rows, buffer), jnp.float32).at[:, 0].set(first_logprobs)
  done = jnp.isin(first_tokens, eos_ids)
  lengths = jnp.where(done, 1, 0).astype(jnp.int32)

  def cond(c):
    i, _, _, _, _, done, _ = c
    return (i < max_new) & ~jnp.all(done)

  def body(c):
    i, cache, tokens, logprobs, rng, done, lengths = c
    rng, step_rng = jax.random.split(rng)
    prev = tokens[:, i - 1]
    h, cache = model.decode_step(prev, next_pos + i - 1, cache, start_slot + i - 1, layers=layers)
    cache = _constrain_cache(cache)
    tok, lp = sample(model.logits(h), step_rng, temperature, top_k, top_p, mode)
    tok = jnp.where(done, pad_id, tok)
    lp = jnp.where(done, 0.0, lp)
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, tok, i, 1)
    logprobs = jax.lax.dynamic_update_index_in_dim(logprobs, lp, i, 1)
    finished_now = ~done & jnp.isin(tok, eos_ids)
    lengths = jnp.where(finished_now, i + 1, lengths)
    return i + 1, cache, tokens, logprobs, rng, done | finished_now, lengths

  i, cache, tokens, logprobs, _, done, lengths = jax.lax.while_loop(
      cond, body, (jnp.int32(1), cache, tokens, logprobs, rng, done, lengths))
  lengths = jnp.where(done, lengths, max_new)
  # rows stay where their prompts were: each process reads back its own rows. The cache is returned (and
  # dropped by the caller) so that the donated input, the loop's carry and the output share one buffer.
  return (sharding.constrain(tokens, ("batch", None)), sharding.constrain(logprobs, ("batch", None)),
          sharding.constrain(lengths, ("batch",)), cache)


decode_loop = jax.jit(_decode_impl, static_argnames=("graphdef", "buffer", "mode", "unroll_layers"),
                  donate_argnames=("cache",))
# The unrolled variant re-buffers the cache per layer, so prefill's stacked buffers cannot be reused: no donation.
decode_loop_unrolled = jax.jit(_decode_impl, static_argnames=("graphdef", "buffer", "mode", "unroll_layers"))


# The cache's logical axes: k and v stacked (layers, B, S, kv_heads, head_dim), or per layer without "layers"
# (decode_loop_unrolled); key_mask (B, S).
CACHE_AXES = ("layers", "batch", "length", "act_kv_heads", None)
MASK_AXES = ("batch", "length")


def _map_cache(cache: KVCache, fn) -> KVCache:
  """fn(array, logical axes) over a cache's arrays, stacked or per layer."""
  if isinstance(cache.k, tuple):
    k, v = (tuple(fn(x, CACHE_AXES[1:]) for x in t) for t in (cache.k, cache.v))
  else:
    k, v = fn(cache.k, CACHE_AXES), fn(cache.v, CACHE_AXES)
  return KVCache(k, v, fn(cache.key_mask, MASK_AXES))


def _constrain_cache(cache: KVCache) -> KVCache:
  return _map_cache(cache, sharding.constrain)


def cache_shardings(cache: KVCache, mesh, rules=sharding.DEFAULT_RULES) -> KVCache:
  """The shardings prefill and the decode loop give a cache (arrays or ShapeDtypeStructs) on `mesh`: the
  placement decode_loop's cache argument has (tools/aot lowers the loop with it)."""
  return _map_cache(cache, lambda x, names: sharding.named_sharding(mesh, names, x.shape, rules))


# ---------------------------------------------------------------------------------------------- entry point

@dataclasses.dataclass(frozen=True)
class Plan:
  """What one generate() call compiles prefill and the decode loop for (their static arguments)."""
  cache_size: int  # prompt length + buffer
  buffer: int  # generated-token slots: max_new_tokens rounded up to a bucket
  num_samples: int
  mode: str  # greedy | sample | sample_filtered
  unroll_layers: bool  # XLA:CPU's decode variant (see _decode_impl)

  def prefill_static(self) -> dict:
    return dict(cache_size=self.cache_size, num_samples=self.num_samples, mode=self.mode)

  def decode_static(self) -> dict:
    return dict(buffer=self.buffer, mode=self.mode, unroll_layers=self.unroll_layers)

  @property
  def decode_fn(self):
    return decode_loop_unrolled if self.unroll_layers else decode_loop


def plan(cfg, prompt_len: int, max_new_tokens: int, *, temperature: float, top_k: int, top_p: float,
         num_samples: int, mesh=None, new_token_buckets: Sequence[int] = NEW_TOKEN_BUCKETS) -> Plan:
  """The static settings of a generation of `max_new_tokens` after prompts padded to `prompt_len`, on `mesh`
  (None: JAX's default devices); raises on settings generate() refuses. tools/aot lowers the rollouts with it."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
    raise ValueError(f"bad sampling settings: temperature={temperature}, top_k={top_k}, top_p={top_p}")
  buffer = batch_lib.round_up_to_bucket(max_new_tokens, new_token_buckets)
  cache_size = prompt_len + buffer
  if cache_size > cfg.text.max_position_embeddings:
    raise ValueError(f"prompt ({prompt_len}) + generation buffer ({buffer}) exceeds the model's "
                     f"{cfg.text.max_position_embeddings} positions")
  mode = "greedy" if temperature == 0 else ("sample" if top_k == 0 and top_p >= 1.0 else "sample_filtered")
  return Plan(cache_size, buffer, num_samples, mode, unroll_layers=_platform(mesh) == "cpu")


def eos_array(eos_token_ids) -> np.ndarray:
  """decode_loop's stop tokens: an id, a list of ids, or None; [-1] (matches no token) when there are none, so
  generation runs exactly max_new_tokens."""
  eos = [] if eos_token_ids is None else ([eos_token_ids] if np.isscalar(eos_token_ids) else list(eos_token_ids))
  return np.asarray(eos or [-1], np.int32)


def left_pad_prompts(batch: dict, *, pad_token_id: int, patch_dim: int,
                     length_buckets: Sequence[int] = batch_lib.DEFAULT_LENGTH_BUCKETS) -> dict:
  """Processor output (left-padded or not) -> static batch whose prompts all end at the last slot."""
  ids = np.asarray(batch["input_ids"])
  if ids.ndim == 1:
    ids = ids[None]
  mask = np.asarray(batch.get("attention_mask", np.ones_like(ids))).reshape(ids.shape)
  padded = batch_lib.round_up_to_bucket(ids.shape[1], length_buckets)
  # Each row's real tokens, flush right (right-padded input is handled too).
  out_ids, out_mask = pad_token_rows([row[m.astype(bool)] for row, m in zip(ids, mask)], padded, pad_token_id,
                                     side="left")
  pv, thw = batch.get("pixel_values"), batch.get("image_grid_thw")
  if pv is not None and np.asarray(pv).ndim == 3:  # already in static slot form
    slots, grids = np.asarray(pv), np.asarray(thw, np.int32)
  else:
    slots, grids = batch_lib.pad_images_to_buckets(pv, thw, patch_dim=patch_dim)
  return {"input_ids": out_ids, "attention_mask": out_mask, "pixel_values": slots, "image_grid_thw": grids}


def rows_own_slots(static: dict, image_token_id: int, merge_unit: int,
                   slot_buckets: Sequence[int] = batch_lib.DEFAULT_IMAGE_SLOT_BUCKETS) -> dict:
  """Packed image slots (image k in slot k, as left_pad_prompts makes them from flat images) -> the pipeline's
  layout: m slots per row, row r's images in slots [r·m, r·m + n_r). On a mesh the model gathers each row's
  features from its own slots only (models/qwen2_vl.py `embed`)."""
  ids, grids, slots = static["input_ids"], static["image_grid_thw"], static["pixel_values"]
  if len(grids) == 0:
    return static
  tokens = batch_lib.image_patch_counts(grids) // merge_unit
  per_row = (np.asarray(ids) == image_token_id).sum(axis=1)
  owner, k = [], 0
  for r, n in enumerate(per_row):
    got = 0
    while got < n and k < len(tokens):
      owner.append(r)
      got += int(tokens[k])
      k += 1
  counts = np.bincount(np.asarray(owner, np.int64), minlength=len(per_row)) if owner else np.zeros(len(per_row))
  m = batch_lib.round_up_to_bucket(max(int(counts.max()), 1), slot_buckets)
  new_slots = np.zeros((len(per_row) * m,) + slots.shape[1:], slots.dtype)
  new_grids = np.zeros((len(per_row) * m, 3), np.int32)
  filled = np.zeros(len(per_row), np.int64)
  for img, r in enumerate(owner):
    new_slots[r * m + filled[r]] = slots[img]
    new_grids[r * m + filled[r]] = grids[img]
    filled[r] += 1
  return dict(static, pixel_values=new_slots, image_grid_thw=new_grids)


def generate(model, batch: dict, *, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: "int | jax.Array" = 0, eos_token_ids=None, num_samples: int = 1,
             length_buckets: Sequence[int] = batch_lib.PROMPT_LENGTH_BUCKETS,
             new_token_buckets: Sequence[int] = NEW_TOKEN_BUCKETS, mesh=None, return_device_arrays=False):
  """Samples `num_samples` completions per prompt. See the module docstring; returns a `Generation`."""
  cfg = model.cfg
  pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
  static = left_pad_prompts(batch, pad_token_id=pad_id, patch_dim=cfg.vision.patch_dim,
                            length_buckets=length_buckets)
  pv = batch.get("pixel_values")
  if mesh is not None and pv is not None and np.asarray(pv).ndim == 2:  # flat images: per-row slots on a mesh
    static = rows_own_slots(static, cfg.image_token_id, cfg.vision.merge_unit)
  batch_lib.check_image_tokens(static["input_ids"], static["image_grid_thw"], cfg.image_token_id,
                               cfg.vision.merge_unit)
  prompt_len = static["input_ids"].shape[1]
  settings = plan(cfg, prompt_len, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                  num_samples=num_samples, mesh=mesh, new_token_buckets=new_token_buckets)
  eos = eos_array(eos_token_ids)
  graphdef, state = nnx.split(model)
  key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)  # an int seed, or a key
  rng_prefill, rng_decode = jax.random.split(key)
  scalars = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))

  ctx = sharding.use_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  with ctx:
    if mesh is None:
      arrays = {k: jnp.asarray(v) for k, v in static.items()}
    else:  # rows (image slots) over the data axes where they divide them, replicated where they do not. With
      # several processes `batch` holds this process's rows and the global batch is every process's rows in order.
      arrays = {k: sharding.host_to_global(v, sharding.named_sharding(
          mesh, ("images" if k in ("pixel_values", "image_grid_thw") else "batch",) + (None,) * (v.ndim - 1),
          _global_rows(v.shape)), what=f"generate: {k}") for k, v in static.items()}
    cache, first, first_lp, next_pos = prefill(
        graphdef, state, arrays["input_ids"], arrays["attention_mask"], arrays["pixel_values"],
        arrays["image_grid_thw"], rng_prefill, *scalars, **settings.prefill_static())
    tokens, logprobs, lengths, _ = settings.decode_fn(
        graphdef, state, cache, first, first_lp, next_pos, jnp.int32(prompt_len), jnp.int32(max_new_tokens),
        rng_decode, *scalars, jnp.asarray(eos), jnp.int32(pad_id), **settings.decode_static())
  tokens, logprobs = tokens[:, :max_new_tokens], logprobs[:, :max_new_tokens]
  if not return_device_arrays:  # this process's rows (all rows with one process)
    tokens, logprobs, lengths = (sharding.global_to_host(x) for x in (tokens, logprobs, lengths))
  return Generation(tokens, logprobs, lengths, prompt_len)


def _platform(mesh) -> str:
  """The platform generation runs on: the mesh's devices', else JAX's default backend."""
  if mesh is not None:
    return mesh.devices.flat[0].platform
  return jax.default_backend()


def _global_rows(shape) -> tuple:
  return (shape[0] * jax.process_count(),) + tuple(shape[1:])

