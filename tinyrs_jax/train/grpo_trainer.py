"""The GRPO trainer (stage 4): rollout -> rewards -> group advantages -> policy updates, on the SFT stages' mesh.

    python -m tinyrs_jax.main --config=configs/grpo.py:demo --workdir=/tmp/tinyrs/grpo

One GRPO step, for `batch_size` prompts (global) and G = grpo.num_generations:
  1. rollout   the prompts (left-padded, with their images and metadata) are sampled G times each by the
               generation engine from the policy's current parameters, in place on the mesh (one prefill per
               prompt, its KV cache reused by the G samples); every process gets back its own prompts' rows;
  2. rewards   each process decodes and scores its completions with the configured rewards (host side, parsed,
               never evaluated); rewards are all-gathered, so every process computes the same group advantages
               (train/grpo.py) and the same metrics;
  3. batch     prompt + completion rows, the prompts' image slots shared by their G rows, the completion mask
               from the lengths (optionally zero for truncated completions), advantages, the sampler's
               log-probs; split into grad_accum_steps microbatches of whole prompts;
  4. scoring   reference log-probs from the frozen initial model (beta > 0) and, when num_iterations > 1,
               old-policy log-probs, both by the training forward at the sampling temperature;
  5. update    num_iterations (mu) optimizer steps on that batch with the registered "grpo" loss.
Everything around the step (metrics pipelining, checkpoints, evaluation cadence, SIGTERM, the kill hook,
export) is train/loop.py's, shared with the SFT trainer. A restart resumes exactly: the data iterator and the
GRPO step are saved with each checkpoint (numbered by GRPO step, whether or not an update was skipped), the
rollout's key is fold_in(seed, step, attempt), and the reference policy is the checkpoint recorded at the start
(grpo_reference.json).

Where each piece lives: here GRPOStep (sample / sample_dynamic / build_batch / update / run_updates) and TrainStep
(the loop's train_step: the GRPO step counter, skipped updates, samples); sampling/answers.py the generation path
the rollout shares with the evaluation run (Sampler); train/grpo_rewards.py the rewards (RewardScorer: padding
rows never scored, timeout, a failure named and agreed on by every process; check_verifiable: prompts without a
verifiable answer; the reward and completion metrics); train/grpo_eval.py the held-out evaluation (HeldOutEval,
the loop's evaluate); train/grpo_policy.py the starting policy and the reference (ensure_demo_policy, pin_init,
load_reference). What a user sees on each failure path: docs/grpo.md.

Held-out evaluation (at the start, every eval.every_steps and at the end): greedy completions for the validation
prompts (the evaluation run's path), scored by the same rewards: eval/reward, eval/rewards/<name>,
eval/accuracy/<task>; and by the evaluation suite's two rule sets (tinyrs_jax/evaluation): eval/strict/<metric>,
eval/tinyrs/<metric>. A health monitor (train/grpo_monitor.py) warns once per condition when a run goes wrong.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tinyrs_jax import sharding as sharding_lib
from tinyrs_jax.sharding import gather_rows
from tinyrs_jax.models import batch as batch_lib
from tinyrs_jax.sampling import generate as gen_lib
from tinyrs_jax.sampling.answers import Sampler
from tinyrs_jax.sampling.completions import Completions
from tinyrs_jax.train import grpo as grpo_lib
from tinyrs_jax.train import grpo_monitor
from tinyrs_jax.train import input as input_lib
from tinyrs_jax.train import loop
from tinyrs_jax.train import placement
from tinyrs_jax.train import losses as losses_lib
from tinyrs_jax.train import metrics as metrics_lib
from tinyrs_jax.train import runner
from tinyrs_jax.train import state as state_lib
# The run's other pieces (their names stay importable from here):
from tinyrs_jax.train.grpo_eval import HeldOutEval
from tinyrs_jax.train.grpo_policy import ensure_demo_policy, load_reference, pin_init
from tinyrs_jax.train.grpo_rewards import (RewardFailure, RewardScorer, check_verifiable, completion_stats,
                                           reward_setup, reward_stats)

SCORE_KEYS = ("prompt_ids", "prompt_mask", "pixel_values", "image_grid_thw", "completion_ids", "completion_mask")
SAMPLES_FILE = "samples.jsonl"


# ------------------------------------------------------------------------------------------------- pieces

def grpo_loss_kwargs(config) -> dict:
  g = config.grpo
  return dict(loss_type=g.loss_type, epsilon_low=float(g.epsilon_low), epsilon_high=float(g.epsilon_high),
              delta=float(g.delta), beta=float(g.beta), importance_sampling_level=g.importance_sampling_level,
              max_completion_length=int(g.max_new_tokens), temperature=float(g.temperature),
              chunk_size=int(config.loss.chunk_size))


def make_update_step(config, model: state_lib.Model, opt):
  """The update the trainer runs, `(state, batch) -> (state, metrics)`: the train step with the configured loss
  (the registered "grpo" loss and its grpo.* settings) over grad_accum_steps microbatches. tools/aot compiles
  this same function."""
  kwargs = grpo_loss_kwargs(config)
  loss = losses_lib.get_loss(config.loss.name)
  return state_lib.make_train_step(model, opt, lambda m, b, r: loss(m, b, r, **kwargs),
                                   grad_accum=int(config.get("grad_accum_steps", 1)))


def make_score_fn(model: state_lib.Model, *, temperature: float, chunk_size: int, grad_accum: int):
  """`score(params, batch) -> log-probs (N, Lc)` of the completions (per microbatch when grad_accum > 1)."""
  def score(params, batch):
    m = model.merge(params)
    f = lambda mb: losses_lib.completion_logprobs(m, mb, temperature=temperature, chunk_size=chunk_size)
    return f(batch) if grad_accum == 1 else jax.lax.map(f, batch)
  return score


def split_microbatches(batch: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
  """Whole prompts per microbatch: every array's leading axis (prompts, completions, image slots) cut in k."""
  if k == 1:
    return batch
  for key, v in batch.items():
    if v.shape[0] % k:
      raise ValueError(f"{key}: {v.shape[0]} rows do not split into {k} microbatches")
  return {key: np.stack(np.split(v, k, axis=0)) for key, v in batch.items()}


def global_max(*values: int) -> tuple[int, ...]:
  """The largest of each value over all processes (an all-gather; the values themselves with one process)."""
  return tuple(int(v) for v in gather_rows(np.asarray([values], np.int64)).max(axis=0))


def take_groups(chosen: list[tuple[dict, int]], group: int, pad_id: int, width: int | None = None,
                patches: int | None = None) -> dict:
  """The rollout rows of the chosen prompts (each a (rollout batch, prompt index) pair), in order, padded to
  common shapes: prompts left-padded to `width` tokens, image slots to `patches` patches (default: the widest
  here; dynamic sampling passes the global maxima, so every process compiles the same program)."""
  width = width or max(r["prompt_ids"].shape[1] for r, _ in chosen)
  patches = patches or max(r["pixel_values"].shape[1] for r, _ in chosen)
  out: dict = {}
  for r, i in chosen:
    slots = r["pixel_values"].shape[0] // r["prompt_ids"].shape[0]  # image slots per prompt (pipeline layout)
    rows, srows = slice(i * group, (i + 1) * group), slice(i * slots, (i + 1) * slots)
    pad = width - r["prompt_ids"].shape[1]
    pieces = {
        "prompt_ids": np.pad(r["prompt_ids"][i:i + 1], ((0, 0), (pad, 0)), constant_values=pad_id),
        "prompt_mask": np.pad(r["prompt_mask"][i:i + 1], ((0, 0), (pad, 0))),
        "pixel_values": np.pad(r["pixel_values"][srows], ((0, 0), (0, patches - r["pixel_values"].shape[1]),
                                                          (0, 0))),
        "image_grid_thw": r["image_grid_thw"][srows]}
    for k, v in r.items():
      if k not in pieces and isinstance(v, np.ndarray):
        pieces[k] = v[rows]
    for k, v in pieces.items():
      out.setdefault(k, []).append(v)
    out.setdefault("texts", []).extend(r["texts"][rows])
    out.setdefault("examples", []).extend(r["examples"][rows])
  return {k: (v if k in ("texts", "examples") else np.concatenate(v)) for k, v in out.items()}


def grpo_progress_line(step: int, total: int, m: dict, eta_s: float | None = None) -> str:
  """The progress line with what tells whether GRPO works in place of its loss (~0 by construction at mu = 1)."""
  head = [f"reward {m.get('reward', 0):.3f} (std {m.get('reward_std', 0):.3f})"]
  head += [f"{k[8:-5]} {m[k]:.3f}" for k in sorted(m) if k.startswith("rewards/") and k.endswith("/mean")]
  head += [f"kl {m.get('kl', 0):.4f}",
           f"len {m.get('completions/mean_length', 0):.0f} (cut {100 * m.get('completions/clipped_ratio', 0):.0f}%)"]
  return metrics_lib.progress_line(step, total, m, eta_s, head=head)


# ------------------------------------------------------------------------------------------- one GRPO step

def batch_advantages(batch: dict) -> np.ndarray:
  """This process's advantages in row order (undoing the microbatch axis)."""
  return np.asarray(batch["advantages"]).reshape(-1)


class GRPOStep:
  """The pieces of one GRPO step, shared by the trainer and benchmarks/grpo_step.py (so the benchmark times
  exactly what a run executes):

      r = step.sample(params, host_prompt_batch, step_index)   # rollout, decode, rewards (this process's rows)
      r, stats = step.sample_dynamic(params, r, step_index, next_prompts)  # grpo.dynamic_sampling only
      batch, stats = step.build_batch(r)                        # all-gathered rewards -> advantages, masks
      state, device_metrics, timing = step.update(state, batch) # reference / old log-probs, mu updates

  `update(..., sync=True)` waits for each phase, for a per-phase timing. Rewards are scored by a RewardScorer
  (`self.scorer`); the rollout's key is fold_in(fold_in(key(seed), step), attempt) (`rollout_key`).
  """

  def __init__(self, config, model: state_lib.Model, opt, mesh, shardings, *, tokenizer_dir: str, eos_ids,
               weights: dict[str, float], reward_options: dict, ref_params=None):
    g = config.grpo
    self.config, self.model, self.mesh = config, model, mesh
    self.weights, self.reward_options, self.ref_params = weights, reward_options, ref_params
    self.group, self.max_new, self.mu = int(g.num_generations), int(g.max_new_tokens), int(g.num_iterations)
    self.temperature, self.top_k, self.top_p = float(g.temperature), int(g.top_k), float(g.top_p)
    self.scale, self.eps = g.scale_rewards, float(g.advantage_eps)
    self.mask_truncated = bool(g.mask_truncated_completions)
    self.grad_accum = int(config.get("grad_accum_steps", 1))
    self.seed = int(config.seed)
    self.sampler = Sampler(model, mesh, tokenizer_dir=tokenizer_dir, eos_ids=eos_ids, max_new_tokens=self.max_new)
    self.pad_id = self.sampler.pad_id
    self.scorer = RewardScorer(weights, reward_options, float(g.get("reward_timeout_s", 600)))
    # completion widths the update compiles for: quarters of max_new_tokens (at most 4 shapes per prompt width)
    quarter = max(-(-self.max_new // 4), 1)
    self.completion_buckets = tuple(sorted({min(quarter * k, self.max_new) for k in range(1, 5)}))
    self.dynamic = bool(g.get("dynamic_sampling", False))
    self.filter_reward = g.get("dynamic_sampling_reward", "accuracy")
    self.max_draws = int(g.get("dynamic_sampling_max_batches", 4))
    if self.dynamic and self.filter_reward not in weights:
      raise ValueError(f"grpo.dynamic_sampling filters on the {self.filter_reward!r} reward, which has weight 0")
    log = logging.info
    self.step_fn = state_lib.CompiledStep(make_update_step(config, model, opt), mesh, shardings, donate=True,
                                          grad_accum=self.grad_accum, log=log)
    score = make_score_fn(model, temperature=self.temperature, chunk_size=int(config.loss.chunk_size),
                          grad_accum=self.grad_accum)
    logp_sharding = sharding_lib.named_sharding(mesh, ((None,) if self.grad_accum > 1 else ()) + ("batch", None))
    self.score_policy = state_lib.CompiledStep(score, mesh, shardings.params, donate=False,
                                               grad_accum=self.grad_accum, out_shardings=logp_sharding,
                                               name="old_logps", log=log)
    self.score_ref = state_lib.CompiledStep(score, mesh, shardings.params, donate=False,
                                            grad_accum=self.grad_accum, out_shardings=logp_sharding,
                                            name="ref_logps", log=log)

  @property
  def completions(self) -> Completions:
    """The decoder (its tokenizer loaded on first use)."""
    return self.sampler.completions

  @property
  def num_compiles(self) -> int:
    return (self.step_fn.num_compiles + self.score_policy.num_compiles + self.score_ref.num_compiles
            + gen_lib.compile_count())

  # ---------------------------------------------------------------------------------------------- rollout

  def rollout(self, params, static: dict, *, seed) -> gen_lib.Generation:
    """The G samples of every prompt of a sampler.prompt_batch (benchmarks/grpo_step.py times this call)."""
    return self.sampler.generate(params, static, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                 seed=seed, num_samples=self.group)

  def examples_for(self, meta, lengths, truncated, per_prompt: int) -> list[dict]:
    return [{**meta[i // per_prompt], "completion_length": int(lengths[i]), "max_completion_length": self.max_new,
             "truncated": bool(truncated[i])} for i in range(len(lengths))]

  def sample(self, params, host_batch: dict, step: int, attempt: int = 0) -> dict:
    """One rollout batch of this process's prompts: completions, rewards and what the update needs (host).
    The sampling key follows (config.seed, step, attempt), so a resumed run draws the same completions."""
    static = self.sampler.prompt_batch(host_batch)
    gen = self.rollout(params, static, seed=rollout_key(self.seed, step, attempt))
    texts, lengths, truncated = self.completions.decode(gen)
    examples = self.examples_for(host_batch["meta"], lengths, truncated, self.group)
    total, comps = self.scorer(texts, examples)
    return {"prompt_ids": static["input_ids"], "prompt_mask": static["attention_mask"],
            "pixel_values": static["pixel_values"], "image_grid_thw": static["image_grid_thw"],
            "completion_ids": gen.tokens.astype(np.int32), "sampler_logps": gen.logprobs.astype(np.float32),
            "lengths": lengths, "truncated": truncated, "total": total, **{f"c/{k}": v for k, v in comps.items()},
            "texts": texts, "examples": examples}

  def sample_dynamic(self, params, first: dict, step: int, next_prompts) -> tuple[dict, dict]:
    """DAPO's dynamic sampling: keep the groups whose `dynamic_sampling_reward` varies (the others have zero
    advantage and only dilute the batch), drawing more rollout batches (next_prompts()) until every slot of
    the global batch holds such a group or `dynamic_sampling_max_batches` rollouts were made; a slot still
    empty then keeps its first draw's (filtered) group (counted as topped up).

    Slot by slot: slot i takes the first varying group among the draws' prompt i. A draw's prompt i lives on
    the process owning row i of the global batch, so every process fills its own slots (no images move) and
    the batch is the same for any number of processes; the prompt width and patch count are the global
    maxima (one all-gather), so every process compiles the same programs."""
    local = first["prompt_ids"].shape[0]
    chosen: list = [None] * local
    fallback = [(first, i) for i in range(local)]
    filtered, draws, part = 0, 1, first
    while True:
      varies = part[f"c/{self.filter_reward}"].reshape(-1, self.group).std(axis=1) > 0
      for i in range(local):
        if chosen[i] is None:
          if varies[i]:
            chosen[i] = (part, i)
          else:
            filtered += 1
      done = gather_rows(np.asarray([all(c is not None for c in chosen)])).all()
      if done or draws >= self.max_draws:
        break
      part = self.sample(params, next_prompts(), step, attempt=draws)
      draws += 1
    topped = sum(c is None for c in chosen)
    chosen = [c if c is not None else fb for c, fb in zip(chosen, fallback)]
    width, patches = global_max(max(r["prompt_ids"].shape[1] for r, _ in chosen),
                                max(r["pixel_values"].shape[1] for r, _ in chosen))
    counts = gather_rows(np.asarray([[filtered, topped]])).sum(axis=0)
    stats = {"dynamic_sampling/rollout_batches": float(draws),
             "dynamic_sampling/filtered_groups": float(counts[0]),
             "dynamic_sampling/topped_up_groups": float(counts[1])}
    return take_groups(chosen, self.group, self.pad_id, width, patches), stats

  # ---------------------------------------------------------------------------------------------- update

  def build_batch(self, r: dict) -> tuple[dict, dict]:
    """(this process's update batch, split into microbatches; the step's reward and completion metrics).
    Rewards are all-gathered so every process computes the same advantages and metrics."""
    all_total = gather_rows(r["total"])
    all_comps = {k[2:]: gather_rows(v) for k, v in r.items() if k.startswith("c/")}
    all_lengths, all_truncated = gather_rows(r["lengths"]), gather_rows(r["truncated"])
    advantages = np.asarray(grpo_lib.group_advantages(all_total, self.group, self.scale, self.eps), np.float32)
    lengths, truncated = r["lengths"], r["truncated"]
    n, pi = len(lengths), jax.process_index()
    # The update sees completions cut to a bucket of the longest one in the (global) batch: completions are
    # usually far shorter than max_new_tokens, and every column costs a forward and a backward.
    width = batch_lib.round_up_to_bucket(int(all_lengths.max()), self.completion_buckets)
    completion_mask = np.arange(width)[None, :] < lengths[:, None]
    if self.mask_truncated:
      completion_mask &= ~truncated[:, None]
    batch = {k: r[k] for k in ("prompt_ids", "prompt_mask", "pixel_values", "image_grid_thw")}
    batch.update(completion_ids=r["completion_ids"][:, :width], sampler_logps=r["sampler_logps"][:, :width],
                 completion_mask=completion_mask.astype(np.int32), advantages=advantages[pi * n:(pi + 1) * n])
    stats = {**reward_stats(all_total, all_comps, self.group), **completion_stats(all_lengths, all_truncated),
             "completions/total_tokens": float(all_lengths.sum()),
             "tokens": float(gather_rows(np.asarray([r["prompt_mask"].sum() * self.group])).sum()
                             + all_lengths.sum())}
    return split_microbatches(batch, self.grad_accum), stats

  def update(self, state, batch: dict, *, sync: bool = False):
    """Places the batch, scores it with the reference (beta != 0) and, for mu > 1, the sampling policy, then
    runs mu optimizer steps. Returns (state, device metrics, timing)."""
    t0 = time.time()
    wait = jax.block_until_ready if sync else (lambda x: x)
    gb = placement.place_batch(batch, self.mesh, self.grad_accum)
    scoring = {k: gb[k] for k in SCORE_KEYS}
    if self.ref_params is not None:
      gb["ref_logps"] = wait(self.score_ref(self.ref_params, scoring))
    if self.mu > 1:  # the policy that sampled, before the first update moves it
      gb["old_logps"] = wait(self.score_policy(state.params, scoring))
    t1 = time.time()
    state, metrics = self.run_updates(state, gb)
    if sync:
      metrics = wait(metrics)
    timing = {"scoring_time_s": t1 - t0, "update_time_s": time.time() - t1} if sync else \
        {"update_dispatch_time_s": time.time() - t0}
    return state, metrics, timing

  def run_updates(self, state, gb: dict):
    """mu optimizer steps on one placed batch. The metrics are the mean over the mu updates (TRL logs every
    iteration and averages them over the logging window); "skipped" is then the fraction of updates skipped,
    and sampling/logprob_abs_diff is the first update's (the sampler against the policy that sampled)."""
    total, first = None, None
    for _ in range(self.mu):
      state, metrics = self.step_fn(state, gb)
      first = first if first is not None else metrics
      total = metrics if total is None else jax.tree.map(jnp.add, total, metrics)
    metrics = {k: v / self.mu for k, v in total.items()} if self.mu > 1 else total
    return state, {**metrics, "sampling/logprob_abs_diff": first["sampling/logprob_abs_diff"]}


def rollout_key(seed: int, step: int, attempt: int = 0) -> jax.Array:
  """The rollout's random key: fold_in of (seed, step, attempt), distinct for every triple."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(int(seed)), int(step)), int(attempt))


# ------------------------------------------------------------------------------------------------ trainer

class TrainStep:
  """`train_step(state, step)` for loop.run_loop: one GRPO step (rollout, dynamic sampling, batch, mu updates).

  `step` is the GRPO step (the loop's counter, saved with each checkpoint as the data state's "grpo_step" and
  as the checkpoint's number); state.step counts optimizer updates (it drives the learning-rate schedule) and
  does not advance on a skipped update (a batch with no completion token of weight > 0, e.g. every completion
  truncated under mask_truncated_completions with bnpo/dapo). A skipped update is logged (warning, metric
  "skipped" = the fraction of the mu updates skipped) and the GRPO step still counts."""

  def __init__(self, grpo_step: GRPOStep, prompt_it, writer: metrics_lib.MetricsWriter, workdir: str, config):
    self.s, self.prompt_it, self.writer, self.workdir = grpo_step, prompt_it, writer, workdir
    self.log_samples_every = int(config.grpo.get("log_samples_every", 0))
    self.num_samples_logged = int(config.grpo.get("num_samples_logged", 8))
    self.done = 0  # GRPO steps finished (what the next checkpoint records)

  def data_state(self) -> dict:
    return {"prompts": self.prompt_it.get_state(), "grpo_step": self.done}

  def set_state(self, data_state: dict) -> None:
    """What setup_state restores; a checkpoint from before "grpo_step" existed holds the iterator's state."""
    if "grpo_step" in data_state:
      self.done = int(data_state["grpo_step"])
      self.prompt_it.set_state(data_state["prompts"])
    else:
      self.done = -1  # unknown: derived from state.step by the trainer
      self.prompt_it.set_state(data_state)

  def __call__(self, state, step: int):
    s = self.s
    t0 = time.time()
    r = s.sample(state.params, next(self.prompt_it), step)
    extra = {}
    if s.dynamic:
      r, extra = s.sample_dynamic(state.params, r, step, lambda: next(self.prompt_it))
    t_rollout = time.time() - t0
    batch, stats = s.build_batch(r)
    # The next rollout needs these parameters anyway: waiting here costs nothing and keeps the times honest
    # (otherwise the next step's rollout time would include this update).
    state, dev_metrics, timing = s.update(state, batch, sync=True)
    skipped = float(jax.device_get(dev_metrics["skipped"]))
    if skipped > 0:
      logging.warning("GRPO step %d: %d of %d updates skipped (no completion token carries weight: e.g. every "
                      "completion truncated with grpo.mask_truncated_completions); the step still counts",
                      step + 1, round(skipped * s.mu), s.mu)
    self.done = step + 1
    host = {**stats, **extra, **timing, "rollout_time_s": t_rollout, "step_time_s": time.time() - t0,
            "rollout_tokens_per_s": stats["completions/total_tokens"] / max(t_rollout, 1e-9),
            "optimizer_step": float(jax.device_get(state.step))}
    if self.log_samples_every > 0 and step % self.log_samples_every == 0:
      write_samples(self.writer, self.workdir, step + 1, r["texts"], r["examples"], r["total"],
                    {k[2:]: v for k, v in r.items() if k.startswith("c/")}, batch_advantages(batch),
                    self.num_samples_logged)
    return state, dev_metrics, host


def check_config(config, mesh) -> None:
  """The GRPO settings that must hold before anything is loaded."""
  g = config.grpo
  if int(g.num_generations) < 2:
    raise ValueError(f"grpo.num_generations must be >= 2 (advantages are relative to the group), got "
                     f"{int(g.num_generations)}")
  if float(g.temperature) <= 0:
    raise ValueError("grpo.temperature must be > 0 (GRPO samples; evaluation is greedy)")
  grad_accum = int(config.get("grad_accum_steps", 1))
  if config.batch_size % grad_accum:
    raise ValueError(f"batch_size {config.batch_size} (prompts) not divisible by grad_accum_steps {grad_accum}")
  data_axes = mesh.shape["data"] * mesh.shape["fsdp"]
  pc = jax.process_count()
  placement.check_batch_split(config.batch_size, data_axes, pc, "batch_size (prompts per step)")
  placement.check_batch_split(config.batch_size // grad_accum, data_axes, pc,
                              "prompts per microbatch (batch_size / grad_accum_steps)")


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the GRPO stage described by `config` in `workdir`; returns a small summary."""
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  g = config.grpo
  weights, reward_options = reward_setup(config)
  mesh = runner.make_mesh(config)
  pi, pc = jax.process_index(), jax.process_count()

  from tinyrs_jax.checkpoint import orbax_io
  resuming = orbax_io.latest_step(workdir) is not None
  if (not resuming and config.data.get("demo", False) and not config.init.get("workdir")
      and not config.init.get("hf_dir") and config.init.get("demo_configs_dir")):
    config.init.workdir = ensure_demo_policy(config)
  data = input_lib.resolve_data(config)
  source = runner.resolve_model(config, workdir, data.tokenizer_dir)
  model = runner.make_model(config, source)
  if not source.tokenizer_dir:
    raise ValueError("GRPO decodes completions: it needs a tokenizer (data.tokenizer_dir or the init checkpoint's)")
  check_config(config, mesh)
  mu, beta = int(g.num_iterations), float(g.beta)
  eval_bs = int(config.eval.get("batch_size", 0) or config.batch_size)
  has_eval = bool(data.val_path) and int(config.eval.get("num_prompts", -1)) != 0
  if has_eval:
    placement.check_batch_split(eval_bs, mesh.shape["data"] * mesh.shape["fsdp"], pc, "eval batch size")

  records = input_lib.read_prompt_records(config, data)
  check_verifiable(records, bool(g.get("allow_unverifiable", False)))
  if source.init != "resume":
    pin_init(config, source, workdir)
  runner.write_marker(config, workdir, source)
  prompt_it = input_lib.make_prompt_iterator(config, data, batch_size=config.batch_size,
                                             tokenizer_dir=source.tokenizer_dir, process_index=pi, process_count=pc,
                                             records=records)
  total_steps = input_lib.total_steps(config, data, config.batch_size, prompt_it)
  writer = metrics_lib.MetricsWriter(workdir)
  train_step = TrainStep(None, prompt_it, writer, workdir, config)
  # mu optimizer steps per GRPO step (the schedule's length; skipped updates leave it short)
  opt, shardings, ckpt, state = runner.setup_state(config, workdir, source, model, train_step, total_steps * mu,
                                                   mesh)
  ckpt.numbered_by_loop = True  # checkpoints are numbered by GRPO step, not by optimizer update
  if train_step.done < 0:  # a checkpoint written before the GRPO step was saved: numbered by optimizer step
    train_step.done = int(jax.device_get(state.step)) // mu
  start = train_step.done
  if start >= total_steps:
    writer.close()
    return runner.finished_before(workdir, start, total_steps, ckpt, prompt_it, t_start)

  from tinyrs_jax.models.qwen2_vl import as_dtype
  compute_dtype = jnp.dtype(as_dtype(model.kwargs["dtype"]))
  ref_params = load_reference(config, source, workdir, model, shardings, compute_dtype) if beta != 0 else None
  if start > 0:
    writer.truncate_after(start)
  grpo_step = GRPOStep(config, model, opt, mesh, shardings, tokenizer_dir=source.tokenizer_dir,
                       eos_ids=_eos_ids(source), weights=weights, reward_options=reward_options,
                       ref_params=ref_params)
  train_step.s = grpo_step
  monitor = grpo_monitor.Monitor(config)
  evaluate = None
  if has_eval:
    evaluate = HeldOutEval(grpo_step, input_lib.EvalPrompts(
        config, data, batch_size=eval_bs, num_prompts=int(config.eval.get("num_prompts", -1)),
        tokenizer_dir=source.tokenizer_dir, process_index=pi, process_count=pc), config)

  logging.info("GRPO from step %d to %d: %d prompts x %d generations per step (%d microbatches of %d prompts), "
               "%d new tokens max, mu %d, beta %g, loss %s, rewards %s, %d processes", start, total_steps,
               config.batch_size, grpo_step.group, grpo_step.grad_accum, config.batch_size // grpo_step.grad_accum,
               grpo_step.max_new, mu, beta, g.loss_type, weights, pc)
  try:
    result = loop.run_loop(config, workdir, state=state, start=start, total_steps=total_steps, ckpt=ckpt,
                           writer=writer, train_step=train_step, data_state=train_step.data_state,
                           evaluate=evaluate, num_compiles=lambda: grpo_step.num_compiles,
                           progress_line=grpo_progress_line, on_metrics=monitor.update)
  except RewardFailure as e:
    ckpt.wait()  # the last checkpoint (an asynchronous save may be in flight) is complete on disk
    writer.flush()
    logging.error("stopping: %s; the last checkpoint is step %s of %s", e, ckpt.last_saved, ckpt.directory)
    raise
  loop.close_run(config, workdir, result, prompt_it, writer, model, source.tokenizer_dir)
  summary = {"step": result.step, "preempted": result.preempted, "compiles": grpo_step.num_compiles,
             "first_eval": result.first_eval, "final_eval": result.last_eval, "warnings": monitor.warned,
             "seconds": time.time() - t_start}
  logging.info("done: %s", {k: v for k, v in summary.items() if k not in ("first_eval", "final_eval")})
  return summary


def _eos_ids(source: runner.ModelSource) -> list[int]:
  from tinyrs_jax.sampling.completions import eos_ids
  return eos_ids(source.tokenizer_dir, source.cfg.eos_token_id)


def write_samples(writer: metrics_lib.MetricsWriter, workdir: str, step: int, texts, examples, total, comps,
                  advantages, limit: int) -> None:
  """A few completions with their rewards: samples.jsonl and a TensorBoard text table (process 0)."""
  if jax.process_index() != 0 or limit <= 0:
    return
  rows = []
  for i in range(min(limit, len(texts))):
    ex = examples[i]
    rows.append({"step": step, "id": ex.get("id"), "task": ex.get("task"), "answer": ex.get("answer"),
                 "completion": texts[i], "length": ex["completion_length"], "truncated": ex["truncated"],
                 "reward": float(total[i]), "advantage": float(advantages[i]),
                 **{f"rewards/{k}": float(v[i]) for k, v in comps.items()}})
  with open(os.path.join(workdir, SAMPLES_FILE), "a", encoding="utf-8") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
  table = ["| task | answer | completion | reward | advantage |", "|---|---|---|---|---|"]
  for r in rows:
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")[:400]
    table.append(f"| {r['task']} | {cell(r['answer'])} | {cell(r['completion'])} | {r['reward']:.3f} | "
                 f"{r['advantage']:.3f} |")
  writer.write_text(step, "samples", "\n".join(table))
