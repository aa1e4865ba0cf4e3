"""GRPO as small pure functions: group-relative advantages and the clipped policy loss (TRL GRPOTrainer semantics).

Conventions. N completions in a batch, L completion positions per row. The completions of one prompt are
consecutive: rows [k*G, (k+1)*G) are the G = group_size samples of prompt k. Per-token arrays are (N, L) and hold
the log-probability of each sampled completion token; `mask` (N, L) marks the real completion tokens (padding,
and whatever a caller chooses to exclude, is 0). Values at masked positions are never read (they may be garbage,
even inf): they get neither loss nor gradient.

- `group_advantages(rewards, G, scale, eps)`: A = r - mean of r's group, divided by (group std + eps)
  ("group"), by (one std over the whole batch + eps) ("batch") or not at all ("none"); std with Bessel's
  correction. A std over a single value (G = 1, or a batch of one) is defined as 0, as TRL does, so
  such a completion gets A = 0 / (0 + eps) = 0.
- `policy_loss_terms(...)`: per token, ratio rho = exp(logp - old) ("token") or one rho per sequence =
  exp(masked mean of (logp - old)) broadcast over its tokens ("sequence", GSPO); loss
  l = -min(min(rho, delta) * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) (the cap at `delta` only when
  given: two-sided clipping) + beta * k3 with k3 = exp(ref - logp) - (ref - logp) - 1. Returns
  (loss_sum, weight, metric_sums, token_count), every one a sum that adds over gradient-accumulation
  microbatches and data-parallel shards: the loss of the whole generation batch is
  sum(loss_sum) / sum(weight), which is what `train.state.make_train_step` computes from a `LossOutput`.
      grpo     loss_sum = sum over sequences of (sum_t l*m / max(sum_t m, 1)),  weight = N (empty rows count)
      bnpo     loss_sum = sum l*m,  weight = sum m
      dapo     loss_sum = sum l*m,  weight = sum m  (so the total weight is TRL's num_items_in_batch)
      dr_grpo  loss_sum = sum l*m,  weight = N * max_completion_length
  Our bnpo is therefore normalised by the completion tokens of the whole batch; TRL's bnpo normalises each
  microbatch on each process by its own token count and averages those means (equal only when every
  microbatch holds as many tokens). metric_sums are token sums of `kl` (present when ref_logps is given) and
  of the clip indicators `clip_ratio/low_mean` (rho < 1 - eps_low and A < 0), `clip_ratio/high_mean`
  (rho > 1 + eps_high and A > 0), `clip_ratio/region_mean` (either), rho taken after the delta cap as TRL
  does; with importance_sampling_level "sequence" the clip indicators are per sequence and their sums count
  sequences (metric_sums[k + "__den"] = N, as TRL 1.16 averages them over sequences); token_count = sum m.
- `policy_loss(...)`: (loss, metrics) of one batch on top of the terms: loss_sum / max(weight, 1) and
  metric sums / max(token_count, 1); dapo with an explicit `num_items_in_batch` (the completion tokens of the
  whole generation batch, all processes and microbatches) divides by that instead, as TRL does per microbatch.

Why the printed loss is ~0 with one update per rollout (mu = 1). Then old = logp, so rho = 1 and
clipping never acts; every token of completion i has loss -A_i (+ beta * k3, which is 0 while the policy
equals the reference). grpo averages per sequence, giving -mean_i(A_i) = 0 because the advantages of each
group sum to zero (bnpo/dapo weight A_i by lengths, so they are only near 0). The gradient does not vanish:
d rho / d logp = rho = 1, so the gradient is -(1/N) sum_i A_i / |o_i| * sum_t grad logp_it, the REINFORCE
policy gradient with group baselines. Watch reward, clip ratios, kl and grad_norm, not this loss.
Pass `old_logps=None` (or the current log-probs: they are detached here) for mu = 1.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

SCALES = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
IS_LEVELS = ("token", "sequence")
METRIC_NAMES = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")
SEQUENCE_DEN = "__den"  # metric_sums[k + SEQUENCE_DEN]: k's denominator when it is not the token count


def _float(x) -> jax.Array:
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _std(x: jax.Array, axis=None) -> jax.Array:
  """Standard deviation with Bessel's correction; 0 where it is taken over a single value."""
  n = x.size if axis is None else x.shape[axis]
  if n <= 1:
    return jnp.zeros_like(jnp.mean(x, axis=axis))
  return jnp.std(x, axis=axis, ddof=1)


def group_advantages(rewards, group_size: int, scale: str = "group", eps: float = 1e-4) -> jax.Array:
  """(N,) rewards of consecutive groups of `group_size` completions -> (N,) advantages (see module doc)."""
  if scale not in SCALES:
    raise ValueError(f"unknown advantage scale {scale!r}; expected one of {SCALES}")
  r = _float(rewards)
  if r.ndim != 1:
    raise ValueError(f"rewards must be 1-D (N,), got shape {r.shape}")
  group_size = int(group_size)
  if group_size < 1 or r.shape[0] % group_size:
    raise ValueError(f"{r.shape[0]} rewards do not split into groups of {group_size}")
  groups = r.reshape(-1, group_size)
  adv = (groups - jnp.mean(groups, axis=1, keepdims=True)).reshape(-1)
  if scale == "group":
    adv = adv / (jnp.repeat(_std(groups, axis=1), group_size) + eps)
  elif scale == "batch":
    adv = adv / (_std(r) + eps)
  return adv


def _per_token(logps, old_logps, ref_logps, advantages, mask, *, loss_type, epsilon_low, epsilon_high, delta,
               beta, importance_sampling_level):
  """Per-token loss l, the clip indicators and k3 (None without a reference); all (N, L), 0 where not mask."""
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
  if importance_sampling_level not in IS_LEVELS:
    raise ValueError(f"unknown importance_sampling_level {importance_sampling_level!r}; expected one of {IS_LEVELS}")
  if beta != 0 and ref_logps is None:
    raise ValueError("beta != 0 needs ref_logps")
  logps = _float(logps)
  m = jnp.asarray(mask).astype(bool)
  if m.shape != logps.shape or logps.ndim != 2:
    raise ValueError(f"logps {logps.shape} and mask {m.shape} must both be (N, L)")
  old = jax.lax.stop_gradient(logps if old_logps is None else _float(old_logps))
  adv = jax.lax.stop_gradient(_float(advantages))
  adv = adv[:, None] if adv.ndim == 1 else adv  # (N,) or per-token (N, L)

  # Masked positions are set to 0 before exp (their values may be anything); `where` keeps gradients clean.
  log_ratio = jnp.where(m, logps - old, 0.0)
  if importance_sampling_level == "sequence":
    count = jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1)
    log_ratio = jnp.broadcast_to(jnp.sum(log_ratio, axis=1, keepdims=True) / count, logps.shape)
  rho = jnp.exp(log_ratio)
  rho_clipped = jnp.clip(rho, 1.0 - epsilon_low, 1.0 + epsilon_high)  # from the uncapped ratio
  if delta is not None:
    rho = jnp.minimum(rho, delta)
  loss = -jnp.minimum(rho * adv, rho_clipped * adv)

  kl = None
  if ref_logps is not None:
    d = jnp.where(m, jax.lax.stop_gradient(_float(ref_logps)) - logps, 0.0)
    kl = jnp.exp(d) - d - 1.0
    if beta != 0:
      loss = loss + beta * kl

  low = (rho < 1.0 - epsilon_low) & (adv < 0)
  high = (rho > 1.0 + epsilon_high) & (adv > 0)
  clips = {"clip_ratio/low_mean": low, "clip_ratio/high_mean": high, "clip_ratio/region_mean": low | high}
  clips = {k: jnp.where(m, v, False).astype(loss.dtype) for k, v in clips.items()}
  return jnp.where(m, loss, 0.0), m, clips, kl


def policy_loss_terms(logps, old_logps, ref_logps, advantages, mask, *, loss_type: str = "grpo",
                      epsilon_low: float = 0.2, epsilon_high: float = 0.2, delta: float | None = None,
                      beta: float = 0.0, importance_sampling_level: str = "token",
                      max_completion_length: int | None = None, num_items_in_batch: Any = None):
  """-> (loss_sum, weight, metric_sums, token_count): additive over microbatches and shards (see module doc).

  `num_items_in_batch` is accepted for a common signature and unused: dapo's weight is this batch's token
  count, whose sum over the generation batch is num_items_in_batch.
  """
  del num_items_in_batch
  loss, m, clips, kl = _per_token(logps, old_logps, ref_logps, advantages, mask, loss_type=loss_type,
                                  epsilon_low=epsilon_low, epsilon_high=epsilon_high, delta=delta, beta=beta,
                                  importance_sampling_level=importance_sampling_level)
  n, length = loss.shape
  dtype = loss.dtype
  per_seq_count = jnp.sum(m, axis=1).astype(dtype)
  token_count = jnp.sum(per_seq_count)
  if loss_type == "grpo":
    loss_sum = jnp.sum(jnp.sum(loss, axis=1) / jnp.maximum(per_seq_count, 1.0))
    weight = jnp.asarray(n, dtype)
  else:
    loss_sum = jnp.sum(loss)
    if loss_type == "dr_grpo":
      max_len = length if max_completion_length is None else max_completion_length
      weight = jnp.asarray(n * max_len, dtype)
    else:  # bnpo, dapo
      weight = token_count
  if importance_sampling_level == "sequence":
    # one ratio per sequence: the clip indicators count sequences (TRL 1.16's masked_batch_mean of a (N, 1)
    # tensor: the mean over the batch's sequences); the `__den` entry carries the sequence count
    metric_sums = {k: jnp.sum(jnp.max(v, axis=1)) for k, v in clips.items()}
    metric_sums.update({k + SEQUENCE_DEN: jnp.asarray(n, dtype) for k in clips})
  else:
    metric_sums = {k: jnp.sum(v) for k, v in clips.items()}
  if kl is not None:
    metric_sums["kl"] = jnp.sum(kl)
  return loss_sum, weight, metric_sums, token_count


def policy_loss(logps, old_logps, ref_logps, advantages, mask, *, loss_type: str = "grpo",
                epsilon_low: float = 0.2, epsilon_high: float = 0.2, delta: float | None = None,
                beta: float = 0.0, importance_sampling_level: str = "token",
                max_completion_length: int | None = None, num_items_in_batch: Any = None):
  """-> (scalar loss, metrics dict of scalar token means) of one batch, TRL's aggregation by loss_type."""
  loss_sum, weight, sums, count = policy_loss_terms(
      logps, old_logps, ref_logps, advantages, mask, loss_type=loss_type, epsilon_low=epsilon_low,
      epsilon_high=epsilon_high, delta=delta, beta=beta, importance_sampling_level=importance_sampling_level,
      max_completion_length=max_completion_length)
  if loss_type == "dapo" and num_items_in_batch is not None:
    weight = jnp.asarray(num_items_in_batch, loss_sum.dtype)
  loss = loss_sum / jnp.maximum(weight, 1.0)
  count = jnp.maximum(count, 1.0)
  return loss, {k: v / (jnp.maximum(sums[k + SEQUENCE_DEN], 1.0) if k + SEQUENCE_DEN in sums else count)
                for k, v in sums.items() if not k.endswith(SEQUENCE_DEN)}
