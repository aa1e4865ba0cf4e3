"""What a step and a run cost on the target: each program's roofline time from its compiled cost (cost.py) and
the chip's facts (targets.CHIPS), composed as the trainer runs them.

  SFT          train_step (its grad_accum_steps microbatches are one program)
  GRPO         rollout_prefill + rollout_decode x new tokens + ref_logps (beta > 0) + old_logps (mu > 1)
               + mu x update (each over grad_accum_steps microbatches); priced with every completion at
               grpo.max_new_tokens and at a typical completion length (--completion_tokens)
  evaluation   generate_prefill + generate_decode x new tokens (+ option_logprobs for mc_mode=loglik), per batch

A program's time is max(FLOPs / peak bf16 FLOP/s, HBM bytes / HBM bandwidth, collective bytes / interconnect):
what a chip that overlaps compute, memory and communication perfectly cannot beat. Every estimate here is a
LOWER BOUND for the compiled shapes (the largest length bucket the data allows, the largest image): no kernel
reaches peak, host work (rewards, detokenizing, the input pipeline) and launch overheads are not counted, and
collectives are assumed to overlap with compute. benchmarks/roofline_check.py measures how far real steps sit
from it on this CPU.
"""
from __future__ import annotations

import dataclasses

from tinyrs_jax.tools.aot import cost as cost_lib
from tinyrs_jax.tools.aot.targets import Target

DEFAULT_STEPS = 1000  # the run priced when the config does not say how many steps it takes


@dataclasses.dataclass
class Phase:
  name: str
  seconds: float
  flops: float  # per chip
  bytes: float
  bound: str  # "compute", "memory" or "interconnect": which term set the time


@dataclasses.dataclass
class Estimate:
  stage: str
  lower_bound: bool
  phases: list[Phase]
  step_s: float  # the step as priced (GRPO: completions at the typical length)
  step_s_at_max: float  # GRPO / evaluation: every completion at max_new_tokens
  tokens_per_step: float
  steps: int
  steps_from: str  # where the number of steps came from
  run_s: float
  chip_hours: float
  tokens_per_s_per_chip: float
  num_chips: int
  completion_tokens: int = 0
  note: str = ""
  compute_s: float = 0.0  # the step's FLOPs alone at peak: a strict lower bound (the roofline's bytes may over-count)


def program_time(r, target: Target, iterations: float = 0.0) -> Phase:
  c = r.cost(iterations)
  spec = target.spec
  peak = spec.peak_tflops * 1e12
  terms = {"compute": c.flops / peak if peak else 0.0,
           "memory": c.bytes / spec.hbm_bandwidth if spec.hbm_bandwidth else 0.0,
           "interconnect": c.collective_bytes / spec.interconnect if spec.interconnect else 0.0}
  bound = max(terms, key=terms.get)
  return Phase(r.name, terms[bound], c.flops, c.bytes, bound)


def _steps(config, examples: int) -> tuple[int, str]:
  total = int(config.get("total_steps", -1) or -1)
  if total > 0:
    return total, "config.total_steps"
  if config.trainer == "eval":
    if examples > 0:
      return -(-examples // int(config.eval.batch_size)), f"{examples} examples / eval.batch_size"
    return DEFAULT_STEPS, "a default: pass --examples=N for a data set's size"
  if examples > 0:
    epochs = float(config.get("num_epochs", 1.0))
    steps = max(int(examples * epochs // int(config.batch_size)), 1)
    return steps, f"{examples} examples x {epochs:g} epochs / batch {config.batch_size}"
  return DEFAULT_STEPS, "a default: the config runs num_epochs over its data, pass --examples=N"


def estimate(config, results, target: Target, shapes: dict, *, examples: int = 0,
             completion_tokens: int = 0) -> Estimate | None:
  """The step and run estimate of a stage from its compiled programs (None when a program did not compile)."""
  by = {r.name: r for r in results}
  if not results or any(r.error for r in results):
    return None
  length = int(shapes["length"])
  n = target.num_chips
  phases: list[Phase] = []
  note = ""
  if config.trainer == "sft":
    if "train_step" not in by:
      return None
    phases.append(program_time(by["train_step"], target))
    step = step_max = phases[0].seconds
    tokens = int(config.batch_size) * length
    typical = 0
  else:
    prefix = "generate" if config.trainer == "eval" else "rollout"
    if f"{prefix}_prefill" not in by or f"{prefix}_decode" not in by:
      return None
    max_new = int(config.eval.max_new_tokens if config.trainer == "eval" else config.grpo.max_new_tokens)
    typical = min(int(completion_tokens) or max_new, max_new)
    prefill = program_time(by[f"{prefix}_prefill"], target)
    # the first new token comes from prefill; the loop makes the rest
    decode_max = program_time(by[f"{prefix}_decode"], target, max_new - 1)
    decode_typ = program_time(by[f"{prefix}_decode"], target, typical - 1)
    decode_typ.name = f"{prefix}_decode x {typical - 1}"
    rest: list[Phase] = []
    if config.trainer == "grpo":
      mu = int(config.grpo.num_iterations)
      for name in ("ref_logps", "old_logps"):
        if name in by:
          rest.append(program_time(by[name], target))
      if "update" in by:
        u = program_time(by["update"], target)
        rest.append(Phase(f"update x {mu}" if mu > 1 else "update", u.seconds * mu, u.flops * mu, u.bytes * mu,
                          u.bound))
      rows = int(config.batch_size) * int(config.grpo.num_generations)
      tokens = rows * (length + typical)
      note = (f"scoring and the update are compiled at {max_new} completion columns (the trainer cuts them to a "
              "quarter-of-max bucket of the longest completion in the batch); the decode loop runs until the "
              "batch's longest completion ends")
    else:
      if "option_logprobs" in by:
        rest.append(program_time(by["option_logprobs"], target))
      tokens = int(config.eval.batch_size) * (length + typical)
    phases = [prefill, decode_typ, *rest]
    step = sum(p.seconds for p in phases)
    step_max = step - decode_typ.seconds + decode_max.seconds
    if typical == max_new:
      phases[1] = dataclasses.replace(decode_max, name=f"{prefix}_decode x {max_new - 1}")
  steps, source = _steps(config, examples)
  run_s = step * steps
  peak = target.spec.peak_tflops * 1e12
  compute = sum(p.flops for p in phases) / peak if peak else 0.0
  return Estimate(config.trainer, True, phases, step, step_max, float(tokens), steps, source, run_s,
                  run_s * n / 3600.0, tokens / step / n if step > 0 else 0.0, n, typical, note, compute)


def lines(e: Estimate) -> list[str]:
  """The estimate as the CLI prints it, next to the verdict."""
  out = ["estimate (roofline, a LOWER BOUND: peak FLOP/s, HBM bandwidth and interconnect perfectly overlapped, no "
         "host work):"]
  for p in e.phases:
    out.append(f"  {p.name:<24} {p.seconds:>9.4g} s  ({p.flops / 1e12:,.4g} TFLOP, {p.bytes / 1e9:,.4g} GB per "
               f"chip; {p.bound}-bound)")
  if e.completion_tokens:
    out.append(f"  step {e.step_s:.3g} s at {e.completion_tokens} new tokens per completion, "
               f"{e.step_s_at_max:.3g} s at every completion's limit")
  else:
    out.append(f"  step {e.step_s:.3g} s")
  out.append(f"  (its FLOPs alone at peak: {e.compute_s:.3g} s, the strict floor; the memory term counts the HBM traffic "
             "the compiled program's fusions imply, which can over-count where the compiler streams in place)")
  out.append(f"  run: {e.steps:,} {'batches' if e.stage == 'eval' else 'steps'} ({e.steps_from}): "
             f"{e.run_s / 3600:.3g} h, {e.chip_hours:,.3g} chip-hours on {e.num_chips} chips, "
             f"{e.tokens_per_s_per_chip:,.0f} tokens/s per chip (all lower / upper bounds of a real run's time / "
             "throughput)")
  if e.note:
    out.append(f"  ({e.note})")
  return out


def as_dict(e: Estimate | None) -> dict | None:
  return None if e is None else dataclasses.asdict(e)


__all__ = ["Estimate", "Phase", "estimate", "lines", "as_dict", "program_time", "cost_lib"]
