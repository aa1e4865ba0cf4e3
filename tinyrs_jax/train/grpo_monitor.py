"""A health monitor for GRPO runs: warns in the log, once per condition, with what to change.

GRPO fails quietly: the loss is ~0 by construction at mu = 1, so a run that learns nothing looks like one that
works. The monitor watches the metrics that do tell (the failure modes users of GRPO codebases hit most):

  no_signal        every group had zero reward std for `patience` steps: all G completions of each prompt scored
                   the same, so every advantage is 0 and nothing is learned
  truncated        most completions (> `truncated_share`) hit grpo.max_new_tokens, usually before the answer tag
  no_format        the format reward was 0 for `patience` steps: the policy does not write the tags the reward
                   expects
  kl_jump          KL rose above `kl_jump` x its running median (and above `kl_floor`)
  clip_jump        the clipped share of tokens rose above `clip_jump` (the policy moved far from the one that
                   sampled: too large a step)
  length_collapse  mean completion length fell below `collapse_frac` x its mean over the first steps

`Monitor.update(step, metrics)` takes a finished step's metrics (train/loop.py's on_metrics hook) and returns
the conditions that fired for the first time; `warned` lists all that fired so far.
"""
from __future__ import annotations

import statistics

from absl import logging

DEFAULTS = dict(patience=5, truncated_share=0.5, kl_jump=10.0, kl_floor=0.05, clip_jump=0.2, collapse_frac=0.5,
                baseline_steps=3)


class Monitor:

  def __init__(self, config=None, **overrides):
    opts = dict(DEFAULTS)
    if config is not None and "monitor" in config.get("grpo", {}):
      opts.update({k: v for k, v in config.grpo.monitor.items()})
    opts.update(overrides)
    self.o = opts
    self.max_new_tokens = int(config.grpo.max_new_tokens) if config is not None else None
    self.warned: list[str] = []
    self._zero_std = self._no_format = 0
    self._kl: list[float] = []
    self._lengths: list[float] = []

  def _warn(self, name: str, step: int, message: str) -> list[str]:
    if name in self.warned:
      return []
    self.warned.append(name)
    logging.warning("GRPO health [%s] at step %d: %s", name, step, message)
    return [name]

  def update(self, step: int, m: dict) -> list[str]:
    o, fired = self.o, []
    self._zero_std = self._zero_std + 1 if m.get("frac_reward_zero_std", 0.0) >= 1.0 else 0
    if self._zero_std >= o["patience"]:
      fired += self._warn("no_signal", step, f"every group had zero reward std for {self._zero_std} steps: all "
                          "advantages are 0 and nothing is learned. Raise grpo.num_generations or grpo.temperature, "
                          "check that the rewards can tell completions apart (samples.jsonl), or start from a "
                          "policy that sometimes answers right")
    if m.get("completions/clipped_ratio", 0.0) > o["truncated_share"]:
      fired += self._warn("truncated", step, f"{100 * m['completions/clipped_ratio']:.0f}% of completions hit "
                          f"grpo.max_new_tokens={self.max_new_tokens} (mean length "
                          f"{m.get('completions/mean_length', 0):.0f}): most never reach the answer. Raise "
                          "grpo.max_new_tokens, add the overlong reward (--config.rewards.overlong=1.0), or set "
                          "grpo.mask_truncated_completions=True")
    if "rewards/format/mean" in m:
      self._no_format = self._no_format + 1 if m["rewards/format/mean"] <= 0.0 else 0
      if self._no_format >= o["patience"]:
        fired += self._warn("no_format", step, f"the format reward was 0 for {self._no_format} steps: the policy "
                            "does not write the tags the reward expects. Check grpo.think_tag / grpo.answer_tag "
                            "against the SFT data's format, or run the chain-of-thought stage first")
    kl = m.get("kl")
    if kl is not None:
      if len(self._kl) >= o["baseline_steps"]:
        median = statistics.median(self._kl[-20:])
        if kl > o["kl_floor"] and kl > o["kl_jump"] * max(median, 1e-6):
          fired += self._warn("kl_jump", step, f"KL jumped to {kl:.4f} (running median {median:.4f}): the policy "
                              "is moving away from the reference fast. Lower optim.lr, raise grpo.beta, or look "
                              "for reward hacking in samples.jsonl")
      self._kl.append(float(kl))
    clip = m.get("clip_ratio/region_mean")
    if clip is not None and clip > o["clip_jump"]:
      fired += self._warn("clip_jump", step, f"{100 * clip:.0f}% of tokens were clipped: the updates move the "
                          "policy far from the one that sampled. Lower optim.lr or grpo.num_iterations")
    length = m.get("completions/mean_length")
    if length is not None:
      if len(self._lengths) >= o["baseline_steps"]:
        base = sum(self._lengths[:o["baseline_steps"]]) / o["baseline_steps"]
        if length < o["collapse_frac"] * base:
          fired += self._warn("length_collapse", step, f"mean completion length fell to {length:.0f} from "
                              f"{base:.0f}: the policy may be skipping its reasoning. Try loss_type dr_grpo or "
                              "dapo (no per-sequence length normalisation) or a lower optim.lr")
      self._lengths.append(float(length))
    return fired
