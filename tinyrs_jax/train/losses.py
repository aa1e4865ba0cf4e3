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

from tinyrs_jax import sharding


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

def _chunk_logits(h, wt, dtype, temperature=1.0):
  """h (B, C, D), wt (V, D) -> fp32 logits (B*C, V) = h @ wt.T / temperature, one 2-D matmul.

  The head is used as (V, D): for tied embeddings that is the embedding table itself, so neither pass copies
  a transposed vocabulary-sized matrix (the transposes around this function cancel under XLA). The fp32 logits
  are divided by the temperature exactly as the sampler divides them (sampling/generate.py), so a rollout's
  log-probs and the trainer's agree to rounding.
  """
  h2 = h.reshape(-1, h.shape[-1]).astype(dtype)
  logits = jax.lax.dot_general(h2, wt.astype(dtype), (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  return logits if temperature == 1.0 else logits / jnp.float32(temperature)


def _chunk_logprob(h, wt, t, dtype, temperature, with_entropy):
  """(log p(t), entropy or zeros) per position of one chunk, both fp32 of shape t.shape."""
  logits = _chunk_logits(h, wt, dtype, temperature)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, t.reshape(-1, 1), axis=-1)[:, 0]
  if with_entropy:
    entropy = lse - jnp.sum(jnp.exp(logits - lse[:, None]) * logits, axis=-1)
  else:
    entropy = jnp.zeros_like(lse)
  return (picked - lse).reshape(t.shape), entropy.reshape(t.shape)


def _chunk_grads(h, wt, t, m, g, dtype, temperature):
  """(dh (B, C, D), dwt (V, D)) of sum(g * logp(t)) over one chunk: d/dlogits = g * (onehot(t) - softmax) / T."""
  logits = _chunk_logits(h, wt, dtype, temperature)
  gm = jnp.where(m, g, 0.0).reshape(-1, 1)
  if temperature != 1.0:
    gm = gm / jnp.float32(temperature)
  dlogits = -jax.nn.softmax(logits, axis=-1) * gm
  dlogits = dlogits.at[jnp.arange(dlogits.shape[0]), t.reshape(-1)].add(gm[:, 0]).astype(dtype)
  h2 = h.reshape(-1, h.shape[-1]).astype(dtype)
  dh = jnp.dot(dlogits, wt.astype(dtype), preferred_element_type=jnp.float32)
  dwt = jax.lax.dot_general(dlogits, h2, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return dh.reshape(h.shape).astype(h.dtype), dwt


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _chunks_logprob(hs, w, ts, ms, dtype, temperature, with_entropy):
  """hs (n, B, c, D), w (D, V), ts and ms (n, B, c) -> (log p(ts), entropy), each (n, B, c), 0 where not ms;
  chunks without any ms are skipped. The entropy is a diagnostic: it is not differentiated."""
  wt = w.T

  def body(_, xs):
    h, t, m = xs
    zeros = jnp.zeros(t.shape, jnp.float32)
    lp, ent = jax.lax.cond(jnp.any(m), lambda: _chunk_logprob(h, wt, t, dtype, temperature, with_entropy),
                            lambda: (zeros, zeros))
    return None, (jnp.where(m, lp, 0.0), jnp.where(m, ent, 0.0))

  return jax.lax.scan(body, None, (hs, ts, ms))[1]


def _chunks_fwd(hs, w, ts, ms, dtype, temperature, with_entropy):
  return _chunks_logprob(hs, w, ts, ms, dtype, temperature, with_entropy), (hs, w, ts, ms)


def _chunks_bwd(dtype, temperature, with_entropy, res, cotangents):
  """Recomputes each chunk's logits (the first chunk, which holds selected positions whenever any row has
  one, seeds the weight gradient; the others are skipped when they hold none)."""
  hs, w, ts, ms = res
  g = cotangents[0]  # the entropy's cotangent is ignored (not differentiated)
  wt = w.T
  # The (V, D) fp32 weight gradient is sharded like the head (vocab over tensor, embed over fsdp): left to
  # propagation it can end up replicated, a full vocab x hidden fp32 copy per device (0.93 GB at 2B).
  shard = lambda d: sharding.constrain(d, ("vocab", "embed"))
  dh0, dwt = _chunk_grads(hs[0], wt, ts[0], ms[0], g[0], dtype, temperature)
  dwt = shard(dwt)
  if hs.shape[0] == 1:
    return dh0[None], dwt.T.astype(w.dtype), None, None

  def body(dwt, xs):
    h, t, m, gc = xs

    def grads(dwt):
      dh, d = _chunk_grads(h, wt, t, m, gc, dtype, temperature)
      return shard(dwt + d), dh

    return jax.lax.cond(jnp.any(m), grads, lambda dwt: (dwt, jnp.zeros_like(h)), dwt)

  dwt, dhs = jax.lax.scan(body, dwt, (hs[1:], ts[1:], ms[1:], g[1:]))
  return jnp.concatenate([dh0[None], dhs]), shard(dwt).T.astype(w.dtype), None, None


_chunks_logprob.defvjp(_chunks_fwd, _chunks_bwd)


def chunked_logprobs(hidden: jax.Array, head: jax.Array, targets: jax.Array, mask: jax.Array, *,
                     chunk_size: int = 256, dtype=None, temperature: float = 1.0,
                     with_entropy: bool = False):
  """log p(targets) under softmax(hidden @ head / temperature) where mask is set, 0 elsewhere; (B, L) fp32.

  hidden (B, L, D), head (D, V), targets (B, L) int, mask (B, L). Differentiable in hidden and head (a custom
  VJP recomputes each chunk's logits in the backward pass: nothing of size vocab is kept between passes).
  temperature (a Python float) divides the fp32 logits as the sampler does. with_entropy: also return the
  entropy of that distribution at each selected position (B, L), for monitoring only (no gradient).
  """
  b, l, d = hidden.shape
  dtype = dtype or hidden.dtype
  temperature = float(temperature)
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
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
  lps, ents = _chunks_logprob(chunks(hs), head, chunks(ts), chunks(ms), jnp.dtype(dtype), temperature,
                                 bool(with_entropy))
  inverse = jnp.argsort(order, axis=1)
  unchunk = lambda x: jnp.take_along_axis(jnp.moveaxis(x, 0, 1).reshape(b, n * c)[:, :l], inverse, axis=1)
  if with_entropy:
    return unchunk(lps), jax.lax.stop_gradient(unchunk(ents))
  return unchunk(lps)


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


# ------------------------------------------------------------------------------------------------- GRPO

def completion_logprobs(model, batch, *, temperature: float = 1.0, chunk_size: int = 256, with_entropy=False):
  """log p(completion token) under the model at `temperature`, (N, Lc) fp32 (0 outside completion_mask): the
  teacher-forced pass over a GRPO batch (see `grpo_loss`), with the sampler's positions and temperature."""
  h = model.completion_hidden_states(batch["prompt_ids"], batch["prompt_mask"], batch.get("pixel_values"),
                                     batch.get("image_grid_thw"), batch["completion_ids"])
  return chunked_logprobs(h, model.head_weight(), batch["completion_ids"], batch["completion_mask"],
                          chunk_size=chunk_size, dtype=model.dtype, temperature=temperature,
                          with_entropy=with_entropy)


@register_loss("grpo")
def grpo_loss(model, batch, rng=None, *, loss_type: str = "grpo", epsilon_low: float = 0.2,
              epsilon_high: float = 0.2, delta: float = 0.0, beta: float = 0.0,
              importance_sampling_level: str = "token", max_completion_length: int = 0, temperature: float = 1.0,
              chunk_size: int = 256) -> LossOutput:
  """The GRPO policy loss on a batch of G completions per prompt (train/grpo.py's `policy_loss_terms`).

  batch: prompt_ids, prompt_mask (B, Lp) left-padded prompts; pixel_values, image_grid_thw their image slots
  (shared by each prompt's G rows); completion_ids, completion_mask (N = B x G, Lc); advantages (N,);
  optionally old_logps (N, Lc) (absent: one update per rollout, the current log-probs detached), ref_logps
  (N, Lc) (when beta > 0) and sampler_logps (N, Lc) (the rollout's own log-probs, for the
  `sampling/logprob_abs_diff` diagnostic). delta <= 0 means no two-sided clipping.
  """
  del rng
  from tinyrs_jax.train import grpo as grpo_lib
  logps, entropy = completion_logprobs(model, batch, temperature=temperature, chunk_size=chunk_size,
                                       with_entropy=True)
  mask = batch["completion_mask"]
  loss_sum, weight, sums, tokens = grpo_lib.policy_loss_terms(
      logps, batch.get("old_logps"), batch.get("ref_logps"), batch["advantages"], mask, loss_type=loss_type,
      epsilon_low=epsilon_low, epsilon_high=epsilon_high, delta=delta if delta and delta > 0 else None,
      beta=beta, importance_sampling_level=importance_sampling_level,
      max_completion_length=max_completion_length or None)
  m = mask.astype(jnp.float32)
  sums = dict(sums)
  sums["entropy"] = jnp.sum(entropy * m)
  if "sampler_logps" in batch:
    sums["sampling/logprob_abs_diff"] = jnp.sum(jnp.abs(jax.lax.stop_gradient(logps) - batch["sampler_logps"]) * m)
  # token means, whatever the loss's weight (sequence-level clip ratios bring their own sequence count)
  metrics = {**{k + "__den": tokens for k in sums if not k.endswith("__den")}, **sums}
  return LossOutput(loss=loss_sum, weight=weight, metrics=metrics)
