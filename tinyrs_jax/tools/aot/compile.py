"""Compiling a stage's programs for a target: per-device memory (the verdict) and cost (FLOPs, bytes, with loop
bodies multiplied by their trip counts: cost.py)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from typing import Callable

from tinyrs_jax.tools.aot import cost as cost_lib
from tinyrs_jax.tools.aot.programs import Program, build_programs
from tinyrs_jax.tools.aot.targets import GiB, Target, target_devices


@dataclasses.dataclass
class Result:
  name: str
  fits: bool
  arguments: int = 0
  outputs: int = 0
  temporaries: int = 0
  aliased: int = 0
  other_live: int = 0
  total: int = 0
  capacity: int = 0
  limit: int = 0  # the capacity less the headroom: the verdict's bound
  flops_compiled: float = 0.0  # XLA's cost_analysis (a loop body once)
  model_flops_per_chip: float = 0.0
  mfu: float = 0.0
  compile_s: float = 0.0
  error: str = ""
  # per chip, from the compiled HLO with loop bodies x trip counts (cost.py); for a program with a loop of
  # unknown trip count (decode: one iteration per new token) the cost is fixed + per_token x tokens
  flops: float = 0.0
  bytes_accessed: float = 0.0
  collective_bytes: float = 0.0
  per_token_flops: float = 0.0
  per_token_bytes: float = 0.0
  per_token_collective_bytes: float = 0.0
  loop: str = ""
  rows: int = 0

  def cost(self, iterations: float = 0.0) -> cost_lib.Cost:
    """The program's per-chip cost with its data-dependent loop run `iterations` times."""
    return cost_lib.Cost(self.flops, self.bytes_accessed, self.collective_bytes) + cost_lib.Cost(
        self.per_token_flops, self.per_token_bytes, self.per_token_collective_bytes) * iterations


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs / arrays with shardings (the largest shard)."""
  import jax
  import numpy as np
  total = 0
  for x in jax.tree.leaves(tree):
    shape = tuple(x.shape)
    sh = getattr(x, "sharding", None)
    if sh is not None and shape:
      shape = sh.shard_shape(shape)
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


_COMPILED: dict = {}  # (target, lowered text hash) -> memory and cost numbers, or the compiler's refusal
_EXHAUSTED = re.compile(r"RESOURCE_EXHAUSTED|Ran out of memory|exceeds the memory", re.IGNORECASE)


def _fmt(n: float) -> str:
  return f"{n / GiB:.2f}G"


HLO_DIR = os.environ.get("TINYRS_AOT_HLO_DIR", "")  # set: each compiled program's HLO text is written there


def compile_program(p: Program, target: Target, live_bytes: dict[str, int], step_time: float,
                    log: Callable[[str], None] = print) -> Result:
  cap = target.capacity
  other = sum(v for k, v in live_bytes.items()
              if not any(k == a or k.startswith(a + ".") for a in p.live_args))
  # a program that takes the params only still lives beside the optimizer state
  t0 = time.time()
  lowered = p.lower()
  key = (target.name, hashlib.sha1(lowered.as_text().encode()).hexdigest())
  if key not in _COMPILED:  # stages with the same shapes (pretrain, instruct, cot) compile once per process
    try:
      compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001
      msg = str(e)
      if not _EXHAUSTED.search(msg):
        raise
      first = next((line for line in msg.splitlines() if _EXHAUSTED.search(line)), msg.splitlines()[0])
      _COMPILED[key] = f"does not fit (compiler: {first.strip()[:300]})"
    else:
      ma = compiled.memory_analysis()
      try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        flops = float(ca.get("flops", 0.0))
      except Exception:  # noqa: BLE001  (GPU compile-only devices give none)
        flops = 0.0
      text = compiled.as_text()
      if HLO_DIR:
        os.makedirs(HLO_DIR, exist_ok=True)
        with open(os.path.join(HLO_DIR, f"{target.name}_{p.name}.hlo"), "w") as f:
          f.write(text)
      pc = cost_lib.program_cost(text)
      _COMPILED[key] = (int(ma.argument_size_in_bytes), int(ma.output_size_in_bytes), int(ma.temp_size_in_bytes),
                        int(ma.alias_size_in_bytes), flops, pc)
  if isinstance(_COMPILED[key], str):
    return Result(p.name, False, capacity=cap, limit=target.limit, other_live=other, compile_s=time.time() - t0,
                  error=_COMPILED[key], loop=p.loop, rows=p.rows)
  dt = time.time() - t0
  args, outs, temps, alias, flops, pc = _COMPILED[key]
  total = args + outs + temps - alias + other
  n = target.num_chips
  model_per_chip = p.model_flops / n
  peak = target.spec.peak_tflops * 1e12
  mfu = model_per_chip / (step_time * peak) if step_time > 0 and peak > 0 else 0.0
  return Result(p.name, total <= target.limit, args, outs, temps, alias, other, total, cap, target.limit, flops,
                model_per_chip, mfu, dt, flops=pc.fixed.flops, bytes_accessed=pc.fixed.bytes,
                collective_bytes=pc.fixed.collective_bytes, per_token_flops=pc.per_iteration.flops,
                per_token_bytes=pc.per_iteration.bytes, per_token_collective_bytes=pc.per_iteration.collective_bytes,
                loop=p.loop, rows=p.rows)


def live_set_bytes(live: dict) -> dict[str, int]:
  out = {}
  for name, tree in live.items():
    if name == "train_state":
      out["train_state.params"] = per_device_bytes(tree.params)
      out["train_state.opt_state"] = per_device_bytes((tree.opt_state, tree.step, tree.rng))
    else:
      out[name] = per_device_bytes(tree)
  return out


def make_target_mesh(config, devices):
  from tinyrs_jax import sharding as sharding_lib
  m = config.mesh
  return sharding_lib.make_mesh(int(m.data), int(m.fsdp), int(m.tensor), devices=devices)


def run(config, target: Target, *, step_time: float = 1.0, log: Callable[[str], None] = print,
        only: tuple[str, ...] = (), on_result: Callable[[list[Result]], None] | None = None) -> list[Result]:
  """Compiles the stage's programs one by one; `on_result(results so far)` after each (the CLI writes its JSON
  report there, so a long run leaves what it has)."""
  devices = target_devices(target)
  mesh = make_target_mesh(config, devices)
  programs, live = build_programs(config, mesh)
  live_bytes = live_set_bytes(live)
  results = []
  for p in programs:
    if only and p.name not in only:
      continue
    r = compile_program(p, target, live_bytes, step_time, log)
    results.append(r)
    log(f"  compiled {p.name} in {r.compile_s:.0f}s: {'fits' if r.fits else 'DOES NOT FIT'}"
        f" ({_fmt(r.total) if r.total else r.error})")
    if on_result is not None:
      on_result(results)
  return results
