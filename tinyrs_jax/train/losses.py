"""Losses as small registered functions, and the chunked log-probability they share.

A loss function has the signature `loss_fn(model, batch, rng, **kwargs) -> LossOutput` and is looked up by
name (`config.loss.name`), its kwargs come from the rest of `config.loss`. `LossOutput.loss` is a *sum* over
the microbatch and `weight` what it is normalised by (e.g. the number of supervised tokens): the train step
adds both over gradient-accumulation microbatches (and, through jit, over all devices and hosts) and divides
once, so a step on k microbatches equals a step on their concatenation. `metrics` are sums too, reported
divided by the total weight.

`chunked_logprobs` is the only place the vocabulary projection happens in training: it computes
log p(target) at the positions a mask selects, never building batch x length x vocab logits. Selected
positions are first moved to the front of each row (a stable per-row sort), then processed in chunks of
`chunk_size` positions per row with `lax.scan`; a chunk holding no selected position is skipped with
`lax.cond`; a custom VJP recomputes each chunk's logits in the backward pass (one 2-D matmul for the logits,
two for the gradients, nothing of vocabulary size stored between the passes). Peak memory for logits is
batch x chunk_size x vocab, work is proportional to the number of selected positions (rounded up to a
chunk). SFT uses it for next-token cross-entropy; GRPO can use it for per-token log-probs of sampled tokens.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class LossOutput(NamedTuple):
  loss: jax.Array  # scalar sum; the step divides by the total weight
  weight: jax.Array  # scalar normaliser (e.g. supervised tokens)
  metrics: dict[str, jax.Array]  # scalar sums, reported divided by the total weight


_LOSSES: dict[str, Callable[..., LossOutput]] = {}


def register_loss(name: str):
  def wrap(fn):
    if name in _LOSSES:
      raise ValueError(f"loss {name!r} registered twice")
    _LOSSES[name] = fn
    return fn
  return wrap


def get_loss(name: str) -> Callable[..., LossOutput]:
  if name not in _LOSSES:
    raise KeyError(f"unknown loss {name!r}; known: {sorted(_LOSSES)}")
  return _LOSSES[name]


def loss_names() -> list[str]:
  return sorted(_LOSSES)


# ------------------------------------------------------------------------------------------- log-probs

def _chunk_logits(h, wt, dtype):
  """h (B, C, D), wt (V, D) -> fp32 logits (B*C, V) = h @ wt.T, one 2-D matmul.

  The head is used as (V, D): for tied embeddings that is the embedding table itself, so neither pass copies
  a transposed vocabulary-sized matrix (the transposes around this function cancel under XLA).
  """
  h2 = h.reshape(-1, h.shape[-1]).astype(dtype)
  return jax.lax.dot_general(h2, wt.astype(dtype), (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _chunk_logprob(h, wt, t, dtype):
  logits = _chunk_logits(h, wt, dtype)
  picked = jnp.take_along_axis(logits, t.reshape(-1, 1), axis=-1)[:, 0]
  return (picked - jax.nn.logsumexp(logits, axis=-1)).reshape(t.shape)


def _chunk_grads(h, wt, t, m, g, dtype):
  """(dh (B, C, D), dwt (V, D)) of sum(g * logp(t)) over one chunk: d/dlogits = g * (onehot(t) - softmax)."""
  logits = _chunk_logits(h, wt, dtype)
  gm = jnp.where(m, g, 0.0).reshape(-1, 1)
  dlogits = -jax.nn.softmax(logits, axis=-1) * gm
  dlogits = dlogits.at[jnp.arange(dlogits.shape[0]), t.reshape(-1)].add(gm[:, 0]).astype(dtype)
  h2 = h.reshape(-1, h.shape[-1]).astype(dtype)
  dh = jnp.dot(dlogits, wt.astype(dtype), preferred_element_type=jnp.float32)
  dwt = jax.lax.dot_general(dlogits, h2, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return dh.reshape(h.shape).astype(h.dtype), dwt


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunks_logprob(hs, w, ts, ms, dtype):
  """hs (n, B, c, D), w (D, V), ts and ms (n, B, c) -> log p(ts) (n, B, c), 0 where not ms; chunks without
  any ms are skipped."""
  wt = w.T

  def body(_, xs):
    h, t, m = xs
    lp = jax.lax.cond(jnp.any(m), lambda: _chunk_logprob(h, wt, t, dtype), lambda: jnp.zeros(t.shape, jnp.float32))
    return None, jnp.where(m, lp, 0.0)

  return jax.lax.scan(body, None, (hs, ts, ms))[1]


def _chunks_fwd(hs, w, ts, ms, dtype):
  return _chunks_logprob(hs, w, ts, ms, dtype), (hs, w, ts, ms)


def _chunks_bwd(dtype, res, g):
  """Recomputes each chunk's logits (the first chunk, which holds selected positions whenever any row has
  one, seeds the weight gradient; the others are skipped when they hold none)."""
  hs, w, ts, ms = res
  wt = w.T
  dh0, dwt = _chunk_grads(hs[0], wt, ts[0], ms[0], g[0], dtype)
  if hs.shape[0] == 1:
    return dh0[None], dwt.T.astype(w.dtype), None, None

  def body(dwt, xs):
    h, t, m, gc = xs

    def grads(dwt):
      dh, d = _chunk_grads(h, wt, t, m, gc, dtype)
      return dwt + d, dh

    return jax.lax.cond(jnp.any(m), grads, lambda dwt: (dwt, jnp.zeros_like(h)), dwt)

  dwt, dhs = jax.lax.scan(body, dwt, (hs[1:], ts[1:], ms[1:], g[1:]))
  return jnp.concatenate([dh0[None], dhs]), dwt.T.astype(w.dtype), None, None


_chunks_logprob.defvjp(_chunks_fwd, _chunks_bwd)


def chunked_logprobs(hidden: jax.Array, head: jax.Array, targets: jax.Array, mask: jax.Array, *,
                     chunk_size: int = 256, dtype=None) -> jax.Array:
  """log p(targets) under softmax(hidden @ head) where mask is set, 0 elsewhere; (B, L) fp32.

  hidden (B, L, D), head (D, V), targets (B, L) int, mask (B, L). Differentiable in hidden and head (a custom
  VJP recomputes each chunk's logits in the backward pass: nothing of size vocab is kept between passes).
  """
  b, l, d = hidden.shape
  dtype = dtype or hidden.dtype
  mask = mask.astype(bool)
  c = max(1, min(int(chunk_size), l))
  n = -(-l // c)
  pad = n * c - l
  order = jnp.argsort(~mask, axis=1, stable=True)  # selected positions first, in order
  hs = jnp.take_along_axis(hidden, order[..., None], axis=1)
  ts = jnp.take_along_axis(targets.astype(jnp.int32), order, axis=1)
  ms = jnp.take_along_axis(mask, order, axis=1)
  if pad:
    hs = jnp.pad(hs, ((0, 0), (0, pad), (0, 0)))
    ts = jnp.pad(ts, ((0, 0), (0, pad)))
    ms = jnp.pad(ms, ((0, 0), (0, pad)))
  chunks = lambda x: jnp.moveaxis(x.reshape((b, n, c) + x.shape[2:]), 1, 0)  # (n, B, c, ...)
  lps = _chunks_logprob(chunks(hs), head, chunks(ts), chunks(ms), jnp.dtype(dtype))
  lps = jnp.moveaxis(lps, 0, 1).reshape(b, n * c)[:, :l]
  inverse = jnp.argsort(order, axis=1)
  return jnp.take_along_axis(lps, inverse, axis=1)


def plain_logprobs(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """The reference: full logits (B, L, V) -> masked log p(targets) (B, L). Tests and small evals only."""
  lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  lp = jnp.take_along_axis(lp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.where(mask.astype(bool), lp, 0.0)


def next_token_targets(batch: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
  """(targets, mask) aligned with the hidden states: position i predicts token i+1 where loss_mask[i+1]."""
  ids = batch["input_ids"]
  targets = jnp.concatenate([ids[:, 1:], jnp.zeros_like(ids[:, :1])], axis=1)
  lm = batch["loss_mask"].astype(bool)
  mask = jnp.concatenate([lm[:, 1:], jnp.zeros_like(lm[:, :1])], axis=1)
  return targets, mask


def hidden_states(model, batch):
  return model.hidden_states(batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"),
                             batch.get("image_grid_thw"))


# -------------------------------------------------------------------------------------------------- SFT

@register_loss("next_token_ce")
def next_token_ce(model, batch, rng=None, *, chunk_size: int = 256) -> LossOutput:
  """Token-level cross-entropy on the supervised tokens (loss_mask), summed; weight = their count."""
  del rng
  h = hidden_states(model, batch)
  targets, mask = next_token_targets(batch)
  lp = chunked_logprobs(h, model.head_weight(), targets, mask, chunk_size=chunk_size, dtype=model.dtype)
  nll = -jnp.sum(lp)
  count = jnp.sum(mask).astype(jnp.float32)
  return LossOutput(loss=nll, weight=count, metrics={})
