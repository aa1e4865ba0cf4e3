"""GRPO's rewards, host side (train/grpo_trainer.py scores every rollout with them, train/grpo_eval.py the held-out
prompts): the configured rewards and their options (reward_setup), what the held-out evaluation adds
(eval_reward_weights), scoring that never hands a padding row to a reward and stops every process when one reward
fails (RewardScorer, RewardFailure), the refusal of training prompts without a verifiable answer
(check_verifiable), and TRL's reward and completion-length metrics (reward_stats, completion_stats).
What a user sees when a reward fails: docs/grpo.md.
"""
from __future__ import annotations

import jax
import numpy as np
from absl import logging

from tinyrs_jax.sharding import gather_rows


def reward_setup(config) -> tuple[dict[str, float], dict[str, dict]]:
  """(weights of the rewards in use, options per reward) from config.rewards / config.reward_options, after
  importing the user's reward modules (config.reward_modules) so their rewards are registered."""
  from tinyrs_jax import rewards as rewards_lib
  if config.get("reward_modules", ""):
    rewards_lib.load_reward_modules(config.reward_modules)
  weights = {k: float(v) for k, v in config.rewards.items() if float(v) != 0.0}
  if not weights:
    raise ValueError("every reward weight is 0: set e.g. --config.rewards.accuracy=1.0")
  for name in weights:
    rewards_lib.get_reward(name)  # unknown names fail here, before any compile
  options = {k: dict(v) for k, v in config.get("reward_options", {}).items()}
  tags = {"think_tag": config.grpo.think_tag, "answer_tag": config.grpo.answer_tag}
  options.setdefault("format", {}).update({k: v for k, v in tags.items() if k not in options["format"]})
  options.setdefault("accuracy", {}).setdefault("answer_tag", config.grpo.answer_tag)
  options.setdefault("iou_threshold", {}).setdefault("answer_tag", config.grpo.answer_tag)
  return weights, options


def eval_reward_weights(weights: dict[str, float]) -> dict[str, float]:
  """What the held-out evaluation computes: the training rewards, plus format and accuracy (weight 1 for the
  call only) when their training weight is 0, so an ablation arm still reports both."""
  return {"format": 1.0, "accuracy": 1.0, **{k: v for k, v in weights.items() if v != 0}}


class RewardFailure(RuntimeError):
  """A reward raised or timed out on some process: raised on every process, with that process's message."""


_MESSAGE_BYTES = 2048


def agree_on_failure(error: str) -> None:
  """Every process learns whether any failed (one all-gather of a fixed-size message) and raises the first
  failing process's message; a single process raises its own. No process is left waiting in a collective."""
  if jax.process_count() == 1:
    if error:
      raise RewardFailure(error)
    return
  raw = np.zeros(_MESSAGE_BYTES, np.uint8)
  b = error.encode("utf-8")[:_MESSAGE_BYTES]
  raw[:len(b)] = np.frombuffer(b, np.uint8)
  every = gather_rows(raw[None])
  for p, row in enumerate(every):
    if row.any():
      msg = bytes(row[row != 0]).decode("utf-8", errors="replace")
      raise RewardFailure(msg if p == jax.process_index() else f"(on process {p}) {msg}")


class RewardScorer:
  """Scores completions with the configured rewards, host side: padding rows never reach a reward (they score
  0); a reward that raises or runs longer than `timeout_s` stops every process with RewardFailure naming the
  reward, the example id and the completion's first characters."""

  def __init__(self, weights: dict[str, float], options: dict, timeout_s: float | None):
    self.weights, self.options, self.timeout_s = weights, options, timeout_s

  def __call__(self, texts: list[str], examples: list[dict], weights: dict[str, float] | None = None
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from tinyrs_jax import rewards as rewards_lib
    weights = self.weights if weights is None else weights
    n = len(texts)
    real = [i for i, ex in enumerate(examples) if not ex.get("is_padding")]
    total = np.zeros(n, np.float32)
    comps = {k: np.zeros(n, np.float32) for k, w in weights.items() if w != 0}
    error = ""
    if real:
      try:
        t, c = rewards_lib.compute_rewards([texts[i] for i in real], [examples[i] for i in real], weights,
                                           self.options, timeout_s=self.timeout_s)
        total[real] = t
        for k, v in c.items():
          comps[k][real] = v
      except rewards_lib.RewardError as e:
        error = str(e)
    agree_on_failure(error)
    return total, comps


def check_verifiable(records: list, allow: bool) -> int:
  """Counts the training prompts without a verifiable answer (scoring.is_verifiable: a reference answer, or a
  box for grounding; the accuracy reward scores them 0). Refuses with the first one's file and line unless
  `allow` (grpo.allow_unverifiable), in which case they are logged. Returns the count."""
  from tinyrs_jax.rewards import scoring
  bad = [r for r in records if not scoring.is_verifiable(
      {"task": r.task, "answer": r.answer, "boxes": list(r.boxes)})]
  if not bad:
    return 0
  first = ", ".join(f"{r.source or '?'}:{r.line if r.line is not None else '?'} (id {r.id!r}, task {r.task})"
                    for r in bad[:3])
  msg = (f"{len(bad)} of {len(records)} training prompts have no verifiable answer (no reference answer, or no "
         f"box for grounding); the accuracy reward scores them 0. First: {first}")
  if not allow:
    raise ValueError(msg + ". Remove them, or set --config.grpo.allow_unverifiable=True to train on them.")
  logging.warning("%s (grpo.allow_unverifiable=True: trained on)", msg)
  return len(bad)


def completion_stats(lengths: np.ndarray, truncated: np.ndarray, prefix: str = "completions/") -> dict[str, float]:
  term = lengths[~truncated]
  out = {f"{prefix}mean_length": float(lengths.mean()), f"{prefix}min_length": float(lengths.min()),
         f"{prefix}max_length": float(lengths.max()), f"{prefix}clipped_ratio": float(truncated.mean())}
  out[f"{prefix}mean_terminated_length"] = float(term.mean()) if len(term) else 0.0
  out[f"{prefix}min_terminated_length"] = float(term.min()) if len(term) else 0.0
  out[f"{prefix}max_terminated_length"] = float(term.max()) if len(term) else 0.0
  return out


def reward_stats(total: np.ndarray, comps: dict[str, np.ndarray], group_size: int) -> dict[str, float]:
  """TRL's reward metrics: reward, reward_std (mean of the groups' stds), rewards/<name>/mean|std,
  frac_reward_zero_std (groups with nothing to learn from)."""
  groups = total.reshape(-1, group_size)
  std = groups.std(axis=1, ddof=1) if group_size > 1 else np.zeros(len(groups))
  out = {"reward": float(total.mean()), "reward_std": float(std.mean()),
         "frac_reward_zero_std": float(np.isclose(std, 0.0).mean())}
  for name, v in comps.items():
    out[f"rewards/{name}/mean"] = float(v.mean())
    out[f"rewards/{name}/std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
  return out
