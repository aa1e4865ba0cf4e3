"""The tables tools/aot prints: memory per program against the chip's capacity, FLOPs, and the roofline time."""
from __future__ import annotations

from tinyrs_jax.tools.aot.compile import Result, _fmt
from tinyrs_jax.tools.aot.targets import Target


def table(results: list[Result], target: Target, step_time: float) -> str:
  head = (f"{'program':<16} {'arguments':>10} {'outputs':>9} {'temps':>9} {'aliased':>9} {'other live':>10} "
          f"{'total':>9} {'capacity':>9} {'GFLOP/chip':>11} {'t@peak':>7} {'MFU@' + format(step_time, 'g') + 's':>9}  verdict")
  lines = [head]
  peak = target.spec.peak_tflops * 1e12
  for r in results:
    if r.error:
      lines.append(f"{r.name:<16} {'':>10} {'':>9} {'':>9} {'':>9} {_fmt(r.other_live):>10} {'>cap':>9} "
                   f"{_fmt(r.capacity):>9} {'':>11} {'':>7} {'':>9}  {r.error}")
      continue
    lines.append(f"{r.name:<16} {_fmt(r.arguments):>10} {_fmt(r.outputs):>9} {_fmt(r.temporaries):>9} "
                 f"{_fmt(r.aliased):>9} {_fmt(r.other_live):>10} {_fmt(r.total):>9} {_fmt(r.capacity):>9} "
                 f"{r.model_flops_per_chip / 1e9:>11.0f} {r.model_flops_per_chip / peak:>6.2f}s {r.mfu:>9.1%}  "
                 f"{'fits' if r.fits else 'DOES NOT FIT'}")
  if target.limit < target.capacity:
    lines.append(f"(fits: total <= {_fmt(target.limit)}, the capacity less {1 - target.limit / target.capacity:.0%} "
                 "headroom; --headroom changes it)")
  if target.platform == "cuda":
    lines.append(f"(GPU: capacity is the {target.capacity / target.spec.capacity:.0%} of {_fmt(target.spec.capacity)} JAX preallocates "
                 "(XLA_PYTHON_CLIENT_MEM_FRACTION, default .75); run the job with the same setting)")
  return "\n".join(lines)


def batch_line(config) -> str:
  if config.trainer == "eval":
    return f"eval batch {config.eval.batch_size} prompts, {config.eval.max_new_tokens} new tokens"
  line = f"batch {config.batch_size} / grad_accum {config.get('grad_accum_steps', 1)}"
  if config.trainer == "grpo":
    line += f", G {config.grpo.num_generations}, {config.grpo.max_new_tokens} new tokens"
  return line
