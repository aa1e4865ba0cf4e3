"""Will it fit? Ahead-of-time compiles of every program a stage runs, for a TPU topology or GPUs, on this CPU.

    pip install -e ".[tpu]"      # libtpu: compiles for TPU topologies without a TPU
    python -m tinyrs_jax.tools.aot --config=configs/pretrain.py --target=v5e-16 [--config.field=value ...]
    python -m tinyrs_jax.tools.aot --config=configs/grpo.py --target=v5p-8 --json=/tmp/grpo_v5p.json
    pip install -e ".[gpu]"      # jax[cuda12]: the same for GPUs (compile-only devices, no driver needed)
    python -m tinyrs_jax.tools.aot --config=configs/cot.py --target=h100x8

For the stage's real shapes (its batch and microbatch, the largest length bucket its max_length allows, the
patches its data.max_pixels give an image, G and max_new_tokens for GRPO) it lowers and compiles, on the target's
mesh (config.mesh), exactly the programs the trainer runs:
  SFT stages   train_step (state.make_train_step, donated state) and eval_step;
  GRPO         rollout_prefill / rollout_decode (sampling/generate.py's jitted parts, G samples per prompt),
               ref_logps (the scoring pass, grpo_trainer.make_score_fn, when beta > 0; old_logps too when
               num_iterations > 1), update (the train step with the registered "grpo" loss on the batch
               grpo_trainer.train_step builds), eval_prefill / eval_decode (greedy held-out generation);
  evaluation   generate_prefill / generate_decode (configs/eval.py: eval.batch_size prompts, greedy, bf16
               parameters only; data.max_pixels 0, "the checkpoint's own", is taken as the stages' 1280*28*28),
               and option_logprobs with eval.mc_mode=loglik (4 options of up to 16 tokens per prompt).
Per chip it prints arguments, outputs, temporaries, aliased bytes and "other live": long-lived buffers the
program does not take but which stay in device memory while it runs (the optimizer state during a rollout, the
frozen reference model). total = arguments + outputs + temporaries - aliased + other live, against the chip's
capacity; FLOPs per step from the compiled program (cost_analysis; XLA counts a loop body once, so scanned
layers are under-counted; the estimate uses cost.py's count) and from the model's own count, and the MFU a step of --step_time seconds would
reach. Then the step's estimate (estimate.py): each program's roofline time on the target from its compiled
FLOPs and HBM bytes with loop bodies multiplied by their trip counts (cost.py), composed as the trainer runs
them, and the run's wall time, chip-hours and tokens/s per chip (a lower bound: see estimate.py). TPU: libtpu refuses a program above the chip's memory (RESOURCE_EXHAUSTED); that is reported as not
fitting, with the bytes it asked for. GPU: a compile never fails for size; the total is compared with the
share of the device's memory JAX preallocates: 75 % unless XLA_PYTHON_CLIENT_MEM_FRACTION (read here too) says
otherwise.

Exit status 0 when every program fits, 1 when one does not, 2 when the tool itself failed. Overrides are parsed by
the trainer's own parser (tinyrs_jax.main.load_config); --json is rewritten after every compiled program.
When something does not fit, the standard levers are tried in order, each kept once tried: remat_policy=full, fsdp over all chips (of a slice), more
microbatches (grad_accum_steps; for evaluation, fewer prompts per batch: eval.batch_size), a smaller image budget
(data.max_pixels); the first configuration that fits is printed as the --config. flags to add."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import traceback

from tinyrs_jax.tools.aot import estimate as estimate_lib
from tinyrs_jax.tools.aot.compile import _fmt, run
from tinyrs_jax.tools.aot.levers import as_flags, levers
from tinyrs_jax.tools.aot.programs import image_pixels, stage_shapes
from tinyrs_jax.tools.aot.report import batch_line, table
from tinyrs_jax.tools.aot.targets import GPU_HEADROOM, TARGETS, _libtpu_env, parse_target

FITS, DOES_NOT_FIT, FAILED = 0, 1, 2


def main(argv=None) -> int:
  """The tool's one entry point (`python -m tinyrs_jax.tools.aot`)."""
  # libtpu is kept out of the environment (tools/libtpu_aside.py): TPU_LIBRARY_PATH is set for this call only.
  from tinyrs_jax.tools import libtpu_aside
  with libtpu_aside.activated(), _libtpu_env():
    try:
      return _main(sys.argv[1:] if argv is None else list(argv))
    except SystemExit:
      raise
    except Exception:  # noqa: BLE001
      traceback.print_exc()
      print("tools/aot failed (exit status 2): the verdict is unknown", file=sys.stderr)
      return FAILED


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m tinyrs_jax.tools.aot", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="configs/<stage>.py[:variant]")
  p.add_argument("--target", required=True, help=f"{', '.join(TARGETS)}, <tpu target>x<slices>, or a topology")
  p.add_argument("--step_time", type=float, default=10.0, help="assumed seconds per step, for the MFU column "
                 "(the t@peak column is the step time at 100 %% MFU)")
  p.add_argument("--json", default="", help="write the results here (after every compiled program)")
  p.add_argument("--no_levers", action="store_true", help="do not search for a configuration that fits")
  p.add_argument("--only", default="", help="comma-separated program names to compile (default: all)")
  p.add_argument("--headroom", type=float, default=-1.0,
                 help=f"share of the capacity to keep free (default: {GPU_HEADROOM} on GPUs, 0 on TPUs)")
  p.add_argument("--examples", type=int, default=0, help="training examples (prompts for GRPO, benchmark "
                 "questions for evaluation) of the run to price; default: config.total_steps, else 1,000 steps")
  p.add_argument("--completion_tokens", type=int, default=256, help="a typical completion length for the GRPO / "
                 "evaluation estimate (the longest in a batch sets the decode loop's length); the estimate at "
                 "max_new_tokens is printed too")
  return p


def _main(argv: list[str]) -> int:
  from tinyrs_jax import main as trainer_main
  p = parser()
  config_args = [a for a in argv if a.startswith("--config=") or a.startswith("--config.")]
  args = p.parse_args([a for a in argv if not a.startswith("--config.")])
  config, _ = trainer_main.load_config(config_args)  # the trainer's own parser: same fields, types, errors
  overrides = {a[len("--config."):].split("=", 1)[0]: a.split("=", 1)[1] for a in config_args
               if a.startswith("--config.") and "=" in a}
  target = parse_target(args.target)
  if args.headroom >= 0:
    target = dataclasses.replace(target, headroom=args.headroom)

  import jax
  jax.config.update("jax_platforms", "cpu")
  only = tuple(x for x in args.only.split(",") if x)
  print(f"{args.config} on {target.name} ({target.num_chips} x {target.spec.kind}, {_fmt(target.capacity)} "
        f"each, a program fits under {_fmt(target.limit)}), mesh data={config.mesh.data} fsdp={config.mesh.fsdp} "
        f"tensor={config.mesh.tensor}, {batch_line(config)}, remat {config.model.remat_policy}, "
        f"max_pixels {image_pixels(config)[1]}", flush=True)
  shapes = stage_shapes(config)
  print(f"  shapes: {shapes}", flush=True)
  report = {"config": args.config, "target": target.name, "overrides": overrides, "fits": None,
            "programs": [], "suggestion": None, "estimate": None}

  def write(partial=None):
    if partial is not None:
      report["programs"] = [dataclasses.asdict(r) for r in partial]
    if args.json:
      with open(args.json, "w") as f:
        json.dump(report, f, indent=2)

  results = run(config, target, step_time=args.step_time, only=only, on_result=write)
  print(table(results, target, args.step_time))
  ok = all(r.fits for r in results)
  report["fits"] = ok
  print(f"verdict: {'everything fits' if ok else 'DOES NOT FIT'}", flush=True)
  est = estimate_lib.estimate(config, results, target, shapes, examples=args.examples,
                              completion_tokens=args.completion_tokens)
  if est is not None:
    print("\n".join(estimate_lib.lines(est)), flush=True)
    report["estimate"] = estimate_lib.as_dict(est)
  write()
  if not ok and not args.no_levers:
    for flags, c in levers(config, target):
      print(f"trying {as_flags(flags)}", flush=True)
      try:
        rs = run(c, target, step_time=args.step_time, only=only, log=lambda s: print(s, flush=True))
      except ValueError as e:  # e.g. a batch the new mesh does not divide
        print(f"  skipped: {e}")
        continue
      if all(r.fits for r in rs):
        print(table(rs, target, args.step_time))
        print(f"fits with: {as_flags(flags)}")
        report["suggestion"] = {"flags": flags, "programs": [dataclasses.asdict(r) for r in rs]}
        est = estimate_lib.estimate(c, rs, target, stage_shapes(c), examples=args.examples,
                                    completion_tokens=args.completion_tokens)
        if est is not None:
          print("\n".join(estimate_lib.lines(est)), flush=True)
          report["suggestion"]["estimate"] = estimate_lib.as_dict(est)
        break
      write()
    else:
      print("no configuration from the standard levers fits: a bigger target, or freeze part of the model "
            "(--config.optim.freeze=vision)")
  write()
  return FITS if ok else DOES_NOT_FIT
