"""Multi-host start-up: `jax.distributed.initialize` for TPU pods, SLURM jobs and explicit coordinator flags.

config.distributed.mode:
  "auto"      explicit flags when a coordinator address is set; else SLURM when SLURM_NTASKS > 1; else a
              Cloud TPU VM (pod slice or single host); else a single process
  "none"      single process, never initialise
  "explicit"  coordinator_address, num_processes, process_id from the config (e.g. --config.distributed.*)
  "slurm"     from SLURM_* variables (jax's own cluster detection)
  "tpu"       jax's TPU cluster detection (every host runs the same command)

CPU multi-process runs (tests, laptops) need gloo collectives: always selected here (it only concerns the CPU
backend).
Must be called before anything touches the JAX backend.
"""
from __future__ import annotations

import os

import jax
from absl import logging


def _slurm_tasks() -> int:
  try:
    return int(os.environ.get("SLURM_NTASKS", os.environ.get("SLURM_NPROCS", "1")))
  except ValueError:
    return 1


def _on_tpu_vm() -> bool:
  """A Cloud TPU VM (a pod slice's host or a single host): TPU runtime variables or TPU device files."""
  if any(os.environ.get(k) for k in ("TPU_WORKER_HOSTNAMES", "TPU_NAME", "CLOUD_TPU_TASK_ID", "TPU_ACCELERATOR_TYPE")):
    return True
  return os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")


def detect_mode(dcfg) -> str:
  mode = dcfg.get("mode", "auto") if dcfg is not None else "auto"
  if mode != "auto":
    return mode
  if dcfg is not None and dcfg.get("coordinator_address"):
    return "explicit"
  if _slurm_tasks() > 1:
    return "slurm"
  if _on_tpu_vm():
    return "tpu"  # jax reads the slice's hosts from the TPU metadata (a single host is a cluster of one)
  return "none"


_INITIALIZED = False


def initialize(dcfg=None) -> str:
  """Initialises jax.distributed as the config (or environment) asks; returns the mode used."""
  global _INITIALIZED
  mode = detect_mode(dcfg)
  if mode == "none" or _INITIALIZED:
    return mode
  try:  # only the CPU backend's collectives; harmless on GPU / TPU hosts
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):
    pass
  kw = {}
  if dcfg is not None and dcfg.get("initialization_timeout", 0):
    kw["initialization_timeout"] = int(dcfg.initialization_timeout)
  if mode == "explicit":
    if not dcfg.get("coordinator_address") or dcfg.get("num_processes", -1) < 1 or dcfg.get("process_id", -1) < 0:
      raise ValueError("distributed.mode=explicit needs coordinator_address, num_processes and process_id")
    jax.distributed.initialize(coordinator_address=dcfg.coordinator_address,
                               num_processes=int(dcfg.num_processes), process_id=int(dcfg.process_id), **kw)
  elif mode in ("slurm", "tpu"):
    jax.distributed.initialize(**kw)  # jax's cluster auto-detection (SLURM variables, TPU metadata)
  else:
    raise ValueError(f"unknown distributed.mode {mode!r}; use auto, none, explicit, slurm or tpu")
  _INITIALIZED = True
  logging.info("jax.distributed initialised (%s): process %d of %d, %d local / %d global devices", mode,
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
  return mode
