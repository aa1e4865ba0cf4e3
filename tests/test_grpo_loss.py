"""GRPO advantages and policy loss against an independent NumPy restatement of TRL's formulas."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinyrs_jax.train import grpo

G = 4
N, L = 12, 7  # three prompts of four completions
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
MAX_LEN = 9


# ------------------------------------------------------------------------------------ NumPy reference

def np_advantages(rewards, group_size, scale, eps=1e-4):
  rewards = np.asarray(rewards, np.float64)
  out = np.zeros_like(rewards)
  all_mean = rewards.mean()
  batch_std = math.sqrt(sum((r - all_mean) ** 2 for r in rewards) / (len(rewards) - 1)) if len(rewards) > 1 else 0.0
  for start in range(0, len(rewards), group_size):
    grp = rewards[start:start + group_size]
    mean = sum(grp) / len(grp)
    std = math.sqrt(sum((r - mean) ** 2 for r in grp) / (len(grp) - 1)) if len(grp) > 1 else 0.0
    for j, r in enumerate(grp):
      a = r - mean
      if scale == "group":
        a = a / (std + eps)
      elif scale == "batch":
        a = a / (batch_std + eps)
      out[start + j] = a
  return out


def np_policy_loss(logps, old, ref, adv, mask, loss_type, eps_low, eps_high, delta, beta, level,
                   max_len=None, num_items=None):
  n, length = logps.shape
  loss = np.zeros((n, length))
  low = np.zeros((n, length))
  high = np.zeros((n, length))
  kl = np.zeros((n, length))
  for i in range(n):
    toks = [t for t in range(length) if mask[i, t]]
    seq_log_ratio = sum(logps[i, t] - old[i, t] for t in toks) / max(len(toks), 1)
    for t in toks:
      rho = math.exp(seq_log_ratio if level == "sequence" else logps[i, t] - old[i, t])
      clipped = min(max(rho, 1 - eps_low), 1 + eps_high)
      capped = rho if delta is None else min(rho, delta)
      loss[i, t] = -min(capped * adv[i], clipped * adv[i])
      if ref is not None:
        x = ref[i, t] - logps[i, t]
        kl[i, t] = math.exp(x) - x - 1
        loss[i, t] += beta * kl[i, t]
      low[i, t] = capped < 1 - eps_low and adv[i] < 0
      high[i, t] = capped > 1 + eps_high and adv[i] > 0
  total_tokens = mask.sum()
  if loss_type == "grpo":
    value = sum(loss[i][mask[i]].sum() / max(mask[i].sum(), 1) for i in range(n)) / n
  elif loss_type == "bnpo":
    value = loss[mask].sum() / max(total_tokens, 1)
  elif loss_type == "dr_grpo":
    value = loss[mask].sum() / (n * (max_len or length))
  else:
    value = loss[mask].sum() / max(num_items if num_items is not None else total_tokens, 1)
  den = max(total_tokens, 1)
  if level == "sequence":  # one ratio per sequence: TRL 1.16 averages the clip indicators over sequences
    seq = lambda x: sum(bool(x[i][mask[i]].any()) for i in range(n)) / n
    metrics = {"clip_ratio/low_mean": seq(low), "clip_ratio/high_mean": seq(high),
               "clip_ratio/region_mean": seq(np.logical_or(low, high))}
  else:
    metrics = {"clip_ratio/low_mean": low[mask].sum() / den, "clip_ratio/high_mean": high[mask].sum() / den,
               "clip_ratio/region_mean": np.logical_or(low, high)[mask].sum() / den}
  if ref is not None:
    metrics["kl"] = kl[mask].sum() / den
  return value, metrics


def make_inputs(seed=0, n=N, length=L):
  rng = np.random.default_rng(seed)
  logps = -rng.random((n, length)) * 3
  # per-token and per-row ratios spread over roughly [0.5, 2]: clipping acts at the token and sequence level
  old = logps + rng.normal(0, 0.3, (n, length)) + rng.uniform(-0.4, 0.4, (n, 1))
  ref = logps + rng.normal(0, 0.3, (n, length))
  lengths = rng.integers(1, length + 1, n)
  mask = np.arange(length)[None] < lengths[:, None]
  mask[5] = False  # an empty completion
  rewards = rng.integers(0, 3, n).astype(np.float64)
  rewards[:G] = 1.0  # a group with zero reward std
  return logps, old, ref, rewards, mask


# ----------------------------------------------------------------------------------------- advantages

@pytest.mark.parametrize("scale", grpo.SCALES)
def test_group_advantages_match_numpy(scale):
  _, _, _, rewards, _ = make_inputs()
  got = np.asarray(grpo.group_advantages(rewards, G, scale))
  np.testing.assert_allclose(got, np_advantages(rewards, G, scale), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got[:G], 0.0)  # zero-std group
  for k in range(N // G):  # each group's advantages sum to zero
    assert abs(got[k * G:(k + 1) * G].sum()) < 1e-4


def test_group_advantages_edge_cases():
  r = np.array([0.0, 1.0, 3.0])
  np.testing.assert_array_equal(np.asarray(grpo.group_advantages(r, 1)), 0.0)  # std over one value is 0
  np.testing.assert_array_equal(np.asarray(grpo.group_advantages(r[:1], 1, "batch")), 0.0)
  np.testing.assert_allclose(np.asarray(grpo.group_advantages(r, 3, "none")), r - r.mean(), atol=1e-6)
  jitted = jax.jit(grpo.group_advantages, static_argnums=(1, 2))
  np.testing.assert_allclose(np.asarray(jitted(jnp.asarray(r), 3, "group")), np_advantages(r, 3, "group"),
                             rtol=1e-5)
  with pytest.raises(ValueError):
    grpo.group_advantages(r, 2)
  with pytest.raises(ValueError):
    grpo.group_advantages(r, 3, "global")


# ------------------------------------------------------------------------------------------ the loss

COMBOS = list(itertools.product(grpo.SCALES, [(0.2, 0.2), (0.2, 0.28)], [None, 1.5], [0.0, 0.04]))


@pytest.mark.parametrize("level", grpo.IS_LEVELS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_policy_loss_matches_numpy(loss_type, level):
  logps, old, ref, rewards, mask = make_inputs()
  any_clip = False
  for scale, (el, eh), delta, beta in COMBOS:
    adv = np_advantages(rewards, G, scale)
    kw = dict(loss_type=loss_type, epsilon_low=el, epsilon_high=eh, delta=delta, beta=beta,
              importance_sampling_level=level)
    if loss_type == "dr_grpo":
      kw["max_completion_length"] = MAX_LEN
    ref_in = ref if beta else (None if delta is None else ref)  # with and without a reference at beta = 0
    loss, metrics = grpo.policy_loss(logps, old, ref_in, grpo.group_advantages(rewards, G, scale), mask, **kw)
    want, want_metrics = np_policy_loss(logps, old, ref_in, adv, mask, loss_type, el, eh, delta, beta, level,
                                        max_len=kw.get("max_completion_length"))
    case = (scale, el, eh, delta, beta)
    np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=2e-5, err_msg=str(case))
    assert set(metrics) == set(want_metrics), case
    for k, v in want_metrics.items():
      np.testing.assert_allclose(float(metrics[k]), v, rtol=2e-5, atol=2e-6, err_msg=f"{k} {case}")
    any_clip |= want_metrics["clip_ratio/region_mean"] > 0
  assert any_clip


def test_inputs_exercise_every_branch():
  logps, old, _, rewards, mask = make_inputs()
  rho = np.exp(logps - old)[mask]
  assert (rho < 0.8).any() and (rho > 1.28).any() and (rho > 1.5).any()
  seq = np.array([np.exp((logps[i] - old[i])[mask[i]].mean()) for i in range(N) if mask[i].any()])
  assert (seq < 0.8).any() and (seq > 1.28).any()


def test_dapo_explicit_num_items_and_dr_grpo_default_length():
  logps, old, _, rewards, mask = make_inputs()
  adv = np_advantages(rewards, G, "group")
  loss, _ = grpo.policy_loss(logps, old, None, adv, mask, loss_type="dapo", num_items_in_batch=123)
  want, _ = np_policy_loss(logps, old, None, adv, mask, "dapo", 0.2, 0.2, None, 0.0, "token", num_items=123)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  loss, _ = grpo.policy_loss(logps, old, None, adv, mask, loss_type="dr_grpo")
  want, _ = np_policy_loss(logps, old, None, adv, mask, "dr_grpo", 0.2, 0.2, None, 0.0, "token")
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_empty_batch_is_finite_zero(loss_type):
  logps, old, ref, rewards, mask = make_inputs()
  mask = np.zeros_like(mask)
  for level in grpo.IS_LEVELS:
    fn = lambda lp: grpo.policy_loss(lp, old, ref, np_advantages(rewards, G, "group"), mask, loss_type=loss_type,
                                     beta=0.04, delta=1.5, importance_sampling_level=level)
    (loss, metrics), g = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(logps, jnp.float32))
    assert float(loss) == 0.0
    assert all(float(v) == 0.0 for v in metrics.values())
    assert not np.any(np.asarray(g))


def test_jit_and_unit_ratio():
  """mu = 1: old = logp -> ratio 1, grpo loss = -mean(A) = 0, yet the gradient is the policy gradient."""
  logps, _, _, rewards, mask = make_inputs()
  mask[5, :2] = True  # no empty row here: an empty completion would count with loss 0 instead of -A
  adv = grpo.group_advantages(rewards, G)
  f = jax.jit(lambda lp: grpo.policy_loss(lp, None, None, adv, mask)[0])
  lp = jnp.asarray(logps, jnp.float32)
  assert abs(float(f(lp))) < 1e-5
  g = np.asarray(jax.grad(f)(lp))
  counts = np.maximum(mask.sum(1, keepdims=True), 1)
  np.testing.assert_allclose(g, np.where(mask, -np.asarray(adv)[:, None] / counts / N, 0.0), rtol=1e-5, atol=1e-7)
  assert np.abs(g).max() > 0


def test_bad_arguments():
  logps, old, ref, rewards, mask = make_inputs()
  adv = np.zeros(N)
  with pytest.raises(ValueError):
    grpo.policy_loss(logps, old, ref, adv, mask, loss_type="ppo")
  with pytest.raises(ValueError):
    grpo.policy_loss(logps, old, ref, adv, mask, importance_sampling_level="batch")
  with pytest.raises(ValueError):
    grpo.policy_loss(logps, old, None, adv, mask, beta=0.1)


# ------------------------------------------------------------------------------------- microbatches

@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_terms_add_over_microbatches(loss_type):
  logps, old, ref, rewards, mask = make_inputs()
  adv = np.asarray(grpo.group_advantages(rewards, G))
  for level, beta in [("token", 0.04), ("sequence", 0.0)]:
    kw = dict(loss_type=loss_type, epsilon_high=0.28, delta=1.5, beta=beta, importance_sampling_level=level,
              max_completion_length=MAX_LEN)
    full_loss, full_metrics = grpo.policy_loss(logps, old, ref, adv, mask, **kw)
    for parts in (2, 4):
      rows = np.array_split(np.arange(N), parts)
      terms = [grpo.policy_loss_terms(logps[r], old[r], ref[r], adv[r], mask[r], **kw) for r in rows]
      loss_sum, weight, sums, count = jax.tree.map(lambda *xs: sum(xs), *terms)
      np.testing.assert_allclose(float(loss_sum / weight), float(full_loss), rtol=1e-5, atol=1e-6)
      for k, v in full_metrics.items():
        den = sums.get(k + grpo.SEQUENCE_DEN, count)  # sequence-level clip ratios count sequences
        np.testing.assert_allclose(float(sums[k] / den), float(v), rtol=1e-5, atol=1e-6)
      if loss_type == "dapo":  # TRL's way: each microbatch divided by the generation batch's token count
        total = sum(grpo.policy_loss(logps[r], old[r], ref[r], adv[r], mask[r], num_items_in_batch=mask.sum(),
                                     **kw)[0] for r in rows)
        np.testing.assert_allclose(float(total), float(full_loss), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradient_matches_finite_differences(loss_type):
  logps, old, ref, rewards, mask = make_inputs(seed=3)
  with jax.enable_x64(True):
    adv = grpo.group_advantages(jnp.asarray(rewards), G)
    for level in grpo.IS_LEVELS:
      def f(lp):
        return grpo.policy_loss(lp, old, ref, adv, mask, loss_type=loss_type, epsilon_high=0.28, delta=1.5,
                                beta=0.04, importance_sampling_level=level, max_completion_length=MAX_LEN)[0]
      f = jax.jit(f)
      lp = jnp.asarray(logps, jnp.float64)
      g = np.asarray(jax.grad(f)(lp))
      assert g.dtype == np.float64
      h = 1e-6
      fd = np.zeros_like(logps)
      for i, t in zip(*np.nonzero(mask)):
        e = np.zeros_like(logps)
        e[i, t] = h
        fd[i, t] = (float(f(lp + e)) - float(f(lp - e))) / (2 * h)
      np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-8, err_msg=level)
      assert not np.any(g[~mask])


def test_masked_positions_never_read():
  """Garbage (huge, inf) at masked positions changes neither the loss nor the gradient, and gets none."""
  logps, old, ref, rewards, mask = make_inputs()
  adv = np_advantages(rewards, G, "group")
  bad_lp, bad_old, bad_ref = logps.copy(), old.copy(), ref.copy()
  bad_lp[~mask], bad_old[~mask], bad_ref[~mask] = 1e4, -np.inf, np.inf
  for level in grpo.IS_LEVELS:
    def f(lp, o, r):
      return grpo.policy_loss(lp, o, r, adv, mask, beta=0.04, importance_sampling_level=level)[0]
    clean_val, clean_g = jax.value_and_grad(f)(jnp.asarray(logps, jnp.float32), old, ref)
    val, g = jax.value_and_grad(f)(jnp.asarray(bad_lp, jnp.float32), bad_old, bad_ref)
    assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(float(val), float(clean_val), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g), np.asarray(clean_g), rtol=1e-6, atol=1e-9)
    assert not np.any(np.asarray(g)[~mask])


# ------------------------------------------------------------------------------------------- metrics

def test_clip_metrics_hand_made():
  # Row 0 (A = +1): ratios 1.0, 1.3, 1.5 -> two above 1 + 0.28. Row 1 (A = -1): 0.7, 0.9, then a masked 0.5.
  rho = np.array([[1.0, 1.3, 1.5], [0.7, 0.9, 0.5]])
  logps, old = np.log(rho), np.zeros_like(rho)
  adv = np.array([1.0, -1.0])
  mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
  loss, m = grpo.policy_loss(logps, old, None, adv, mask, epsilon_low=0.2, epsilon_high=0.28)
  assert float(m["clip_ratio/low_mean"]) == pytest.approx(1 / 5)
  assert float(m["clip_ratio/high_mean"]) == pytest.approx(2 / 5)
  assert float(m["clip_ratio/region_mean"]) == pytest.approx(3 / 5)
  assert "kl" not in m
  # per token: -1, -1.28, -1.28 | 0.8, 0.9 -> grpo = mean of the row means
  assert float(loss) == pytest.approx(((-1 - 1.28 - 1.28) / 3 + (0.8 + 0.9) / 2) / 2, rel=1e-6)
  # A delta cap below 1 + eps_high: TRL counts clipping on the capped ratio, so nothing is "high" clipped.
  _, m = grpo.policy_loss(logps, old, None, adv, mask, epsilon_low=0.2, epsilon_high=0.28, delta=1.25)
  assert float(m["clip_ratio/high_mean"]) == 0.0
  assert float(m["clip_ratio/region_mean"]) == pytest.approx(1 / 5)
  # Sequence level: row 0 ratio exp(mean log) = (1.95)^(1/3) ~ 1.249 (not clipped at 0.28, clipped at 0.2).
  _, m = grpo.policy_loss(logps, old, None, adv, mask, importance_sampling_level="sequence")
  assert float(m["clip_ratio/high_mean"]) == pytest.approx(1 / 2)  # sequences, as TRL 1.16: 1 of 2 (not 3/5)
  assert float(m["clip_ratio/low_mean"]) == pytest.approx(1 / 2)  # row 1: sqrt(0.63) ~ 0.794 < 0.8
