"""GRPO's held-out evaluation (the loop's `evaluate`, at the start, every eval.every_steps and at the end): greedy
completions for the validation prompts by the path the evaluation run takes (sampling/answers.py
Sampler.greedy_answers), scored by the training rewards (eval/reward, eval/rewards/<name>), per task
(eval/accuracy/<task>) and by the evaluation suite's two rule sets (eval/strict/<metric>, eval/tinyrs/<metric>).
"""
from __future__ import annotations

import numpy as np
from absl import logging

from tinyrs_jax.sharding import gather_rows
from tinyrs_jax.train.grpo_rewards import completion_stats, eval_reward_weights


class HeldOutEval:
  """`evaluate(state, step)` for loop.run_loop: greedy completions for the validation prompts, scored by the
  training rewards (eval/reward, eval/rewards/<name>; format and accuracy always, also at training weight 0),
  per task (eval/accuracy/<task>) and by the evaluation suite's two rule sets (eval/strict/*, eval/tinyrs/*).
  Padding rows are never scored. `grpo_step` is the run's GRPOStep (its sampler, scorer and reward weights)."""

  def __init__(self, grpo_step, eval_prompts, config):
    self.s, self.eval_prompts = grpo_step, eval_prompts
    self.weights = grpo_step.weights
    self.eval_weights = eval_reward_weights(self.weights)
    self.score_kw = dict(answer_tag=config.grpo.answer_tag, think_tags=(config.grpo.think_tag,))

  def score_batch(self, texts: list[str], examples: list[dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(the training mixture's total, every eval reward's values) of one batch; padding rows get 0."""
    _, comps = self.s.scorer(texts, examples, self.eval_weights)
    total = sum(self.weights[k] * comps[k] for k in self.weights if self.weights[k] != 0)
    return np.asarray(total, np.float32), comps

  def __call__(self, state, step: int) -> dict:
    from tinyrs_jax.data.records import TASKS
    from tinyrs_jax.evaluation import evaluator as eval_lib
    from tinyrs_jax.evaluation import metrics as eval_metrics
    from tinyrs_jax.evaluation import rules as eval_rules
    s, eval_weights = self.s, self.eval_weights
    rows = {"is_padding": [], "task": [], "lengths": [], "truncated": [], "total": [],
            **{f"c/{k}": [] for k in eval_weights}}
    scored = []  # the evaluation suite's rows (both rule sets), this process's
    for host_batch in self.eval_prompts:
      texts, lengths, truncated = s.sampler.greedy_answers(state.params, host_batch)
      examples = s.examples_for(host_batch["meta"], lengths, truncated, 1)
      scored += [{"task": ex.get("task"), **eval_rules.score(t, ex, **self.score_kw)}
                 for t, ex in zip(texts, examples) if not ex.get("is_padding")]
      total, comps = self.score_batch(texts, examples)
      task_ids = [list(TASKS).index(m["task"]) if m.get("task") in TASKS else -1 for m in host_batch["meta"]]
      for key, v in (("is_padding", [bool(m.get("is_padding")) for m in host_batch["meta"]]), ("task", task_ids),
                     ("lengths", lengths), ("truncated", truncated), ("total", total),
                     *((f"c/{k}", comps[k]) for k in eval_weights)):
        rows[key].append(gather_rows(np.asarray(v)))
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in rows.items()}
    keep = ~cat["is_padding"].astype(bool)
    r = {"eval/reward": float(cat["total"][keep].mean()) if keep.any() else 0.0, "eval/num_prompts": int(keep.sum())}
    for k in eval_weights:
      r[f"eval/rewards/{k}"] = float(cat[f"c/{k}"][keep].mean()) if keep.any() else 0.0
    tasks = np.asarray(cat["task"], np.int64)
    for t in sorted(set(tasks[keep].tolist())):
      sel = keep & (tasks == t)
      name = list(TASKS)[t] if t >= 0 else "unknown"
      r[f"eval/accuracy/{name}"] = float(cat["c/accuracy"][sel].mean())
    if keep.any():
      r.update(completion_stats(cat["lengths"][keep].astype(np.int32), cat["truncated"][keep].astype(bool),
                                prefix="eval/completions/"))
    r.update(eval_lib.flat_metrics(eval_metrics.aggregate(eval_lib.gather_scored_rows(scored),
                                                          caption_metrics=False)))
    logging.info("eval step %d over %d prompts: reward %.3f | %s | per task: %s", step, r["eval/num_prompts"],
                 r["eval/reward"], " ".join(f"{k} {r[f'eval/rewards/{k}']:.3f}" for k in eval_weights),
                 " ".join(f"{k[14:]} {v:.3f}" for k, v in r.items() if k.startswith("eval/accuracy/")))
    return r
