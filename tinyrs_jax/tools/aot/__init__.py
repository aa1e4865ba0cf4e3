"""Will it fit, and what will it cost? Ahead-of-time compiles of every program a stage runs, for a TPU topology or
GPUs, on this CPU: `python -m tinyrs_jax.tools.aot --config=configs/<stage>.py --target=<target>` (cli.py).

  targets.py   chips (capacity, peak, bandwidths, with their sources) and targets, compile-only devices
  programs.py  the programs a stage runs, built through the trainers' constructors
  compile.py   compiling them: memory per device, cost per device
  cost.py      FLOPs and bytes from the compiled HLO, loop bodies x trip counts
  estimate.py  step time, run time, chip-hours and tokens/s per chip (roofline lower bounds)
  levers.py    what to change when a stage does not fit
  report.py    the printed tables
  cli.py       the command line
"""
from tinyrs_jax.tools.aot.compile import Result, per_device_bytes, run
from tinyrs_jax.tools.aot.levers import as_flags, levers
from tinyrs_jax.tools.aot.programs import Program, build_programs, image_pixels, recipe_pixels, stage_shapes
from tinyrs_jax.tools.aot.targets import (CHIP_SOURCES, CHIPS, GPU_HEADROOM, H100_BYTES, H200_BYTES, TARGETS,
                                          GiB, Target, gpu_mem_fraction, parse_target, target_devices)


def _load_config_module(path: str, *overrides: str):
  """The config at `path` (`configs/x.py[:variant]`) with `--config.<field>=value` overrides, as the trainer
  parses them (tinyrs_jax.main.load_config)."""
  from tinyrs_jax import main as trainer_main
  return trainer_main.load_config([f"--config={path}", *overrides])[0]

__all__ = ["CHIP_SOURCES", "CHIPS", "GPU_HEADROOM", "H100_BYTES", "H200_BYTES", "TARGETS", "GiB", "Program", "Result",
           "Target", "as_flags", "build_programs", "gpu_mem_fraction", "image_pixels", "levers", "parse_target",
           "per_device_bytes", "recipe_pixels", "run", "stage_shapes", "target_devices"]
