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
export) is train/loop.py's, shared with the SFT trainer. A restart resumes exactly: the data iterator is saved
with each checkpoint and the rollout's randomness follows (seed, step).

Held-out evaluation (at the start, every eval.every_steps and at the end): greedy completions for the validation
prompts, scored by the same rewards: eval/reward, eval/rewards/<name>, eval/accuracy/<task>; and by the evaluation
suite's two rule sets (tinyrs_jax/evaluation): eval/strict/<metric>, eval/tinyrs/<metric>. A health monitor
(train/grpo_monitor.py) warns once per condition when a run goes wrong.
"""
from __future__ import annotations

import hashlib
import importlib.util
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

SCORE_KEYS = ("prompt_ids", "prompt_mask", "pixel_values", "image_grid_thw", "completion_ids", "completion_mask")
SAMPLES_FILE = "samples.jsonl"


# ------------------------------------------------------------------------------------------------ rewards

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


def _eval_rewards(weights: dict[str, float]) -> dict[str, float]:
  """Held-out evaluation also reports format and accuracy when their training weight is 0."""
  return {"format": 0.0, "accuracy": 0.0, **weights}


# ------------------------------------------------------------------------------------------ the demo policy

def ensure_demo_policy(config) -> str:
  """The GRPO demo's starting policy: the three demo SFT stages (configs/{pretrain,instruct,cot}.py:demo), run
  once into a cache folder keyed by their configs and the synthetic data's version, then reused."""
  from tinyrs_jax.data import demo_tokenizer, synthetic
  from tinyrs_jax.train import sft
  configs_dir = config.init.demo_configs_dir
  stages = []
  for stage in ("pretrain", "instruct", "cot"):
    path = os.path.join(configs_dir, f"{stage}.py")
    spec = importlib.util.spec_from_file_location(f"_tinyrs_demo_{stage}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stages.append((stage, module.get_config("demo")))
  key = hashlib.sha1(json.dumps([synthetic.GENERATOR_VERSION, demo_tokenizer.TOKENIZER_VERSION]
                                + [c.to_json_best_effort(sort_keys=True) for _, c in stages]).encode()).hexdigest()[:12]
  root = os.path.join(demo_tokenizer.default_cache_root(), f"demo-policy-{key}")
  final = os.path.join(root, "cot")
  t0 = time.time()
  prev = ""
  for stage, c in stages:
    workdir = os.path.join(root, stage)
    c.init.workdir = prev
    if not os.path.exists(os.path.join(workdir, "DONE")):
      logging.info("demo starting policy: running the %s demo stage into %s", stage, workdir)
      summary = sft.train_and_evaluate(c, workdir)
      if summary.get("preempted"):
        raise RuntimeError(f"the {stage} demo stage was preempted; rerun to continue it")
      if jax.process_index() == 0:
        with open(os.path.join(workdir, "DONE"), "w") as f:
          f.write("ok\n")
    prev = workdir
  logging.info("demo starting policy: %s (the demo SFT stages, cached; %.0fs)", final, time.time() - t0)
  return final


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


def take_groups(chosen: list[tuple[dict, int]], group: int, pad_id: int) -> dict:
  """The rollout rows of the chosen prompts (each a (rollout batch, prompt index) pair), in order, padded to
  common shapes: prompts left-padded to the widest, image slots to the most patches."""
  width = max(r["prompt_ids"].shape[1] for r, _ in chosen)
  patches = max(r["pixel_values"].shape[1] for r, _ in chosen)
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


def grpo_progress_line(step: int, total: int, m: dict, eta_s: float | None = None) -> str:
  """The progress line with what tells whether GRPO works in place of its loss (~0 by construction at mu = 1)."""
  head = [f"reward {m.get('reward', 0):.3f} (std {m.get('reward_std', 0):.3f})"]
  head += [f"{k[8:-5]} {m[k]:.3f}" for k in sorted(m) if k.startswith("rewards/") and k.endswith("/mean")]
  head += [f"kl {m.get('kl', 0):.4f}",
           f"len {m.get('completions/mean_length', 0):.0f} (cut {100 * m.get('completions/clipped_ratio', 0):.0f}%)"]
  return metrics_lib.progress_line(step, total, m, eta_s, head=head)


# ---------------------------------------------------------------------------------------------- reference

def load_reference(config, source: runner.ModelSource, workdir: str, model: state_lib.Model, shardings,
                   compute_dtype) -> dict:
  """The frozen reference: the run's initial parameters (also when resuming), held once in the compute dtype,
  sharded like the policy."""
  from tinyrs_jax.checkpoint import sidecar
  if source.init == "resume":
    marker = sidecar.read_marker(workdir)
    init, path = marker.get("init", "random"), marker.get("init_path")
    source = runner.ModelSource(source.cfg, source.tokenizer_dir, init, path)
  params = runner.load_frozen_params(config, source, model, shardings.params, compute_dtype)
  logging.info("reference model: %s (%s), held in %s", source.init_path or "random init", source.init,
               jnp.dtype(compute_dtype).name)
  return params


# ------------------------------------------------------------------------------------------- one GRPO step

def batch_advantages(batch: dict) -> np.ndarray:
  """This process's advantages in row order (undoing the microbatch axis)."""
  return np.asarray(batch["advantages"]).reshape(-1)


class GRPOStep:
  """The pieces of one GRPO step, shared by the trainer and benchmarks/grpo_step.py (so the benchmark times
  exactly what a run executes):

      r = step.sample(params, host_prompt_batch, step_index)   # rollout, decode, rewards (this process's rows)
      batch, stats = step.build_batch(r)                        # all-gathered rewards -> advantages, masks
      state, device_metrics, timing = step.update(state, batch) # reference / old log-probs, mu updates

  `update(..., sync=True)` waits for each phase, for a per-phase timing (the trainer does not wait).
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
    self.pad_id = model.cfg.pad_token_id if model.cfg.pad_token_id is not None else 0
    self.completions = Completions(tokenizer_dir, eos_ids, self.max_new)
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
  def num_compiles(self) -> int:
    return (self.step_fn.num_compiles + self.score_policy.num_compiles + self.score_ref.num_compiles
            + gen_lib.compile_count())

  # ---------------------------------------------------------------------------------------------- rollout

  def prompts_static(self, host_batch: dict) -> dict:
    """The pipeline's prompt batch as the sampler takes it (its width kept: every process pads alike)."""
    return gen_lib.left_pad_prompts({k: host_batch[k] for k in input_lib.PROMPT_KEYS}, pad_token_id=self.pad_id,
                                    patch_dim=self.model.cfg.vision.patch_dim,
                                    length_buckets=(host_batch["input_ids"].shape[1],))

  def rollout(self, params, static: dict, *, seed: int, greedy: bool) -> gen_lib.Generation:
    return gen_lib.generate(self.model.merge(params), static, max_new_tokens=self.max_new,
                            temperature=0.0 if greedy else self.temperature, top_k=self.top_k, top_p=self.top_p,
                            seed=seed, eos_token_ids=sorted(self.completions.eos),
                            num_samples=1 if greedy else self.group, length_buckets=(static["input_ids"].shape[1],),
                            mesh=self.mesh)

  def examples_for(self, meta, lengths, truncated, per_prompt: int) -> list[dict]:
    return [{**meta[i // per_prompt], "completion_length": int(lengths[i]), "max_completion_length": self.max_new,
             "truncated": bool(truncated[i])} for i in range(len(lengths))]

  def sample(self, params, host_batch: dict, step: int, attempt: int = 0) -> dict:
    """One rollout batch of this process's prompts: completions, rewards and what the update needs (host).
    The sampling seed follows (config.seed, step, attempt), so a resumed run draws the same completions."""
    static = self.prompts_static(host_batch)
    seed = (self.seed * 1_000_003 + step * 101 + attempt) % (2 ** 31)
    gen = self.rollout(params, static, seed=seed, greedy=False)
    texts, lengths, truncated = self.completions.decode(gen)
    examples = self.examples_for(host_batch["meta"], lengths, truncated, self.group)
    from tinyrs_jax import rewards as rewards_lib
    total, comps = rewards_lib.compute_rewards(texts, examples, self.weights, self.reward_options)
    return {"prompt_ids": static["input_ids"], "prompt_mask": static["attention_mask"],
            "pixel_values": static["pixel_values"], "image_grid_thw": static["image_grid_thw"],
            "completion_ids": gen.tokens.astype(np.int32), "sampler_logps": gen.logprobs.astype(np.float32),
            "lengths": lengths, "truncated": truncated, "total": total, **{f"c/{k}": v for k, v in comps.items()},
            "texts": texts, "examples": examples}

  def sample_dynamic(self, params, first: dict, step: int, next_prompts) -> tuple[dict, dict]:
    """DAPO's dynamic sampling: keep the groups whose `dynamic_sampling_reward` varies (the others have zero
    advantage and only dilute the batch), drawing more prompts (next_prompts()) until every process holds its
    share of the batch in such groups or `dynamic_sampling_max_batches` rollouts were made; then the batch is
    topped up with filtered groups (counted). Each process keeps its own groups: no images move between hosts."""
    local_prompts = first["prompt_ids"].shape[0]
    kept, dropped, draws = [], [], 1
    part = first
    while True:
      varies = part[f"c/{self.filter_reward}"].reshape(-1, self.group).std(axis=1) > 0
      kept += [(part, i) for i in np.flatnonzero(varies)]
      dropped += [(part, i) for i in np.flatnonzero(~varies)]
      enough = gather_rows(np.asarray([len(kept) >= local_prompts])).all()
      if enough or draws >= self.max_draws:
        break
      part = self.sample(params, next_prompts(), step, attempt=draws)
      draws += 1
    chosen = (kept + dropped)[:local_prompts]
    stats = {"dynamic_sampling/rollout_batches": float(draws),
             "dynamic_sampling/filtered_groups": float(gather_rows(np.asarray([len(dropped)])).sum()),
             "dynamic_sampling/topped_up_groups": float(gather_rows(
                 np.asarray([max(local_prompts - len(kept), 0)])).sum())}
    return take_groups(chosen, self.group, self.pad_id), stats

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
    first = None
    for _ in range(self.mu):
      state, metrics = self.step_fn(state, gb)
      first = first if first is not None else metrics
    metrics = {**metrics, "sampling/logprob_abs_diff": first["sampling/logprob_abs_diff"]}
    if sync:
      metrics = wait(metrics)
    timing = {"scoring_time_s": t1 - t0, "update_time_s": time.time() - t1} if sync else \
        {"update_dispatch_time_s": time.time() - t0}
    return state, metrics, timing


# ------------------------------------------------------------------------------------------------ trainer

def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the GRPO stage described by `config` in `workdir`; returns a small summary."""
  from tinyrs_jax import rewards as rewards_lib
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

  group = int(g.num_generations)
  if group < 2:
    raise ValueError(f"grpo.num_generations must be >= 2 (advantages are relative to the group), got {group}")
  max_new = int(g.max_new_tokens)
  mu = int(g.num_iterations)
  beta = float(g.beta)
  temperature = float(g.temperature)
  if temperature <= 0:
    raise ValueError("grpo.temperature must be > 0 (GRPO samples; evaluation is greedy)")
  grad_accum = int(config.get("grad_accum_steps", 1))
  if config.batch_size % grad_accum:
    raise ValueError(f"batch_size {config.batch_size} (prompts) not divisible by grad_accum_steps {grad_accum}")
  data_axes = mesh.shape["data"] * mesh.shape["fsdp"]
  placement.check_batch_split(config.batch_size, data_axes, pc, "batch_size (prompts per step)")
  placement.check_batch_split(config.batch_size // grad_accum, data_axes, pc,
                              "prompts per microbatch (batch_size / grad_accum_steps)")
  eval_bs = int(config.eval.get("batch_size", 0) or config.batch_size)
  has_eval = bool(data.val_path) and int(config.eval.get("num_prompts", -1)) != 0
  if has_eval:
    placement.check_batch_split(eval_bs, data_axes, pc, "eval batch size")

  runner.write_marker(config, workdir, source)
  prompt_it = input_lib.make_prompt_iterator(config, data, batch_size=config.batch_size,
                                             tokenizer_dir=source.tokenizer_dir, process_index=pi, process_count=pc)
  total_steps = input_lib.total_steps(config, data, config.batch_size, prompt_it)
  # mu optimizer steps per GRPO step
  opt, shardings, ckpt, state = runner.setup_state(config, workdir, source, model, prompt_it, total_steps * mu, mesh)
  start = int(jax.device_get(state.step)) // mu  # mu optimizer steps per GRPO step
  if start >= total_steps:
    return runner.finished_before(workdir, start, total_steps, ckpt, prompt_it, t_start)

  from tinyrs_jax.models.qwen2_vl import as_dtype
  compute_dtype = jnp.dtype(as_dtype(model.kwargs["dtype"]))
  ref_params = load_reference(config, source, workdir, model, shardings, compute_dtype) if beta != 0 else None

  writer = metrics_lib.MetricsWriter(workdir)
  if start > 0:
    writer.truncate_after(start)
  grpo_step = GRPOStep(config, model, opt, mesh, shardings, tokenizer_dir=source.tokenizer_dir,
                       eos_ids=_eos_ids(source), weights=weights, reward_options=reward_options,
                       ref_params=ref_params)
  monitor = grpo_monitor.Monitor(config)
  log_samples_every = int(g.get("log_samples_every", 0))
  eval_weights = _eval_rewards(weights)
  rollout, prompts_static, examples_for = grpo_step.rollout, grpo_step.prompts_static, grpo_step.examples_for
  completions = grpo_step.completions

  def train_step(state, step):
    t0 = time.time()
    r = grpo_step.sample(state.params, next(prompt_it), step)
    extra = {}
    if grpo_step.dynamic:
      r, extra = grpo_step.sample_dynamic(state.params, r, step, lambda: next(prompt_it))
    t_rollout = time.time() - t0
    batch, stats = grpo_step.build_batch(r)
    # The next rollout needs these parameters anyway: waiting here costs nothing and keeps the times honest
    # (otherwise the next step's rollout time would include this update).
    state, dev_metrics, timing = grpo_step.update(state, batch, sync=True)
    host = {**stats, **extra, **timing, "rollout_time_s": t_rollout, "step_time_s": time.time() - t0,
            "rollout_tokens_per_s": stats["completions/total_tokens"] / max(t_rollout, 1e-9)}
    if log_samples_every > 0 and step % log_samples_every == 0:
      write_samples(writer, workdir, step + 1, r["texts"], r["examples"], r["total"],
                    {k[2:]: v for k, v in r.items() if k.startswith("c/")}, batch_advantages(batch),
                    int(g.get("num_samples_logged", 8)))
    return state, dev_metrics, host

  eval_prompts = (input_lib.EvalPrompts(config, data, batch_size=eval_bs,
                                        num_prompts=int(config.eval.get("num_prompts", -1)),
                                        tokenizer_dir=source.tokenizer_dir, process_index=pi, process_count=pc)
                  if has_eval else None)

  from tinyrs_jax.evaluation import evaluator as eval_lib
  from tinyrs_jax.evaluation import metrics as eval_metrics
  from tinyrs_jax.evaluation import rules as eval_rules
  score_kw = dict(answer_tag=g.answer_tag, think_tags=(g.think_tag,))

  def run_eval(state, step):
    rows = {"is_padding": [], "task": [], "lengths": [], "truncated": [], "total": [],
            **{f"c/{k}": [] for k in eval_weights}}
    scored = []  # the evaluation suite's rows (both rule sets), this process's
    for host_batch in eval_prompts:
      static = prompts_static(host_batch)
      gen = rollout(state.params, static, seed=0, greedy=True)
      texts, lengths, truncated = completions.decode(gen)
      examples = examples_for(host_batch["meta"], lengths, truncated, 1)
      scored += [{"task": ex.get("task"), **eval_rules.score(t, ex, **score_kw)}
                 for t, ex in zip(texts, examples) if not ex.get("is_padding")]
      total, comps = rewards_lib.compute_rewards(texts, examples, eval_weights, reward_options)
      total = sum(weights[k] * comps[k] for k in weights)  # the training mixture, not the eval extras
      from tinyrs_jax.data.records import TASKS
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
    from tinyrs_jax.data.records import TASKS
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

  logging.info("GRPO from step %d to %d: %d prompts x %d generations per step (%d microbatches of %d prompts), "
               "%d new tokens max, mu %d, beta %g, loss %s, rewards %s, %d processes", start, total_steps,
               config.batch_size, group, grad_accum, config.batch_size // grad_accum, max_new, mu, beta,
               g.loss_type, weights, pc)
  result = loop.run_loop(config, workdir, state=state, start=start, total_steps=total_steps, ckpt=ckpt,
                         writer=writer, train_step=train_step, data_state=prompt_it.get_state,
                         evaluate=run_eval if eval_prompts is not None else None,
                         num_compiles=lambda: grpo_step.num_compiles,
                         progress_line=grpo_progress_line, on_metrics=monitor.update)
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
