"""Is tools/aot's estimator right where we can measure? Its roofline, given this CPU's measured matmul rate and
memory bandwidth, against our measured times of the programs benchmarks/train_step.py, generate.py and
grpo_step.py time.

    python benchmarks/roofline_check.py [--parts=train,generate,grpo]

1. Rates, measured here: an fp32 matmul (2048 x 2048 x 2048, jitted: FLOP/s) and memory bandwidth, the larger
   of a streaming elementwise update of 64 M floats (bytes read + written per second; XLA:CPU runs it on one
   thread) and a matrix-vector product reading 128 MB of weights (the kind of kernel a decode step runs).
2. Each benchmark's programs (ours only: the trainer's compiled step, generation's prefill and decode loop,
   the GRPO step's reference scoring and update), run and timed as the benchmark runs them, then priced by
   tools/aot/cost.py from their compiled HLO (loop bodies x trip counts) and estimate's roofline:
   max(FLOPs / matmul rate, bytes / bandwidth).
3. predicted / measured per phase. Times are this process's CPU seconds by default (--clock=cpu): rates and
   phases on the same clock, so the other jobs of a shared machine cancel out of the ratio (--clock=wall for
   elapsed time on a quiet machine). The roofline is a lower bound, so a ratio below 1 is expected: how far below
   says what the roofline misses (kernels below the matmul rate, cache effects, the host's share of a step);
   a ratio above 1 means it over-counts something (e.g. bytes that stay in the CPU's caches).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import our_train_steps, prompt_batch, setup_threads  # noqa: E402

# The clock every time here is read on. "cpu" (the default): this process's CPU seconds, all its threads, so other
# jobs on a shared machine do not move the ratios (the rates and the phases are both measured in CPU seconds);
# "wall": seconds, as the benchmarks print them (on a quiet machine only).
CLOCK = {"fn": time.process_time}


def time_fn(fn, *, warmup: int = 2, iters: int = 5) -> float:
  """benchmarks.common.time_fn on CLOCK: median seconds per call after warm-up."""
  import numpy as np
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(iters):
    t0 = CLOCK["fn"]()
    fn()
    times.append(CLOCK["fn"]() - t0)
  return float(np.median(times))


def measure_rates() -> tuple[float, float]:
  """(fp32 matmul FLOP/s, memory bytes/s) of this machine under XLA:CPU, median of several runs."""
  import jax
  import jax.numpy as jnp
  n = 2048
  a = jnp.ones((n, n), jnp.float32)
  mm = jax.jit(lambda x, y: x @ y)
  t = time_fn(lambda: mm(a, a).block_until_ready(), warmup=2, iters=7)
  flops = 2.0 * n ** 3 / t
  big = jnp.ones((64 * 1024 * 1024,), jnp.float32)
  upd = jax.jit(lambda x: x * 1.0001 + 1.0)
  t = time_fn(lambda: upd(big).block_until_ready(), warmup=2, iters=7)
  stream = 2.0 * big.size * 4 / t  # read + write
  w, x = jnp.ones((8192, 4096), jnp.float32), jnp.ones((8, 4096), jnp.float32)
  gemv = jax.jit(lambda w, x: x @ w.T)  # a decode step's kind of work: 128 MB of weights read, 8 rows
  t = time_fn(lambda: gemv(w, x).block_until_ready(), warmup=2, iters=7)
  read = w.size * 4 / t
  return flops, max(stream, read), stream, read


def predicted(text: str, flops_rate: float, bw: float, iterations: float = 0.0) -> tuple[float, object]:
  from tinyrs_jax.tools.aot import cost
  pc = cost.program_cost(text)
  c = pc.at(iterations)
  return cost.roofline_s(c, flops_rate, bw), c


class GenerationCapture:
  """Records the abstract arguments of generation's jitted prefill and decode loop as they are called, to compile
  the same programs again for their HLO text (the calls themselves are untouched)."""

  def __init__(self):
    from tinyrs_jax.sampling import generate as gen_lib
    self.gen_lib, self.calls = gen_lib, {}

  @contextlib.contextmanager
  def active(self):
    import jax
    g = self.gen_lib
    originals = {name: getattr(g, name) for name in ("prefill", "decode_loop", "decode_loop_unrolled")}

    def wrap(name, fn):
      def call(*args, **kwargs):
        spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                            if isinstance(x, jax.Array) else x, (args, kwargs))
        self.calls[name] = spec
        return fn(*args, **kwargs)
      return call
    for name, fn in originals.items():
      setattr(g, name, wrap(name, fn))
    try:
      yield self
    finally:
      for name, fn in originals.items():
        setattr(g, name, fn)

  def texts(self) -> dict[str, str]:
    out = {}
    for name, (args, kwargs) in self.calls.items():
      fn = getattr(self.gen_lib, name)
      out["decode" if name.startswith("decode") else name] = fn.lower(*args, **kwargs).compile().as_text()
    return out


def row(label: str, pred: float, meas: float, c) -> str:
  return (f"  {label:<36} predicted {pred * 1e3:9.1f} ms  measured {meas * 1e3:9.1f} ms  ratio {pred / meas:5.2f}  "
          f"({c.flops / 1e9:,.2f} GFLOP, {c.bytes / 1e6:,.1f} MB)")


def check_train(args, flops_rate, bw) -> list[str]:
  """benchmarks/train_step.py's ours: bench_30m, batch 4, 224px image + 96 text tokens, loss on 48, fp32."""
  from flax import nnx

  from tinyrs_jax.models import Qwen2VL, get_preset
  cfg = get_preset(args.preset)
  model = Qwen2VL(cfg, dtype="float32", param_dtype="float32", rngs=nnx.Rngs(0))
  inp = prompt_batch(cfg, 4, 224, 96)
  out = []
  for remat, run, step in our_train_steps(model, inp, 48, ("none", "dots_no_batch")):
    run()
    meas = time_fn(run, warmup=1, iters=args.iters)
    (compiled,) = step.cache.values()
    pred, c = predicted(compiled.as_text(), flops_rate, bw)
    out.append(row(f"train_step (remat {remat})", pred, meas, c))
  return out


def check_generate(args, flops_rate, bw) -> list[str]:
  """benchmarks/generate.py's ours: bench_30m, 224px image + 32 text tokens, greedy, 64 new tokens, no EOS;
  prefill = t(1 token), decode per token = (t(64) - t(1)) / 63."""
  from flax import nnx

  import tinyrs_jax
  from tinyrs_jax.models import Qwen2VL, get_preset
  model = Qwen2VL(get_preset(args.preset), dtype="float32", param_dtype="float32", rngs=nnx.Rngs(0))
  out = []
  n = args.new_tokens
  for b in [int(x) for x in args.batches.split(",")]:
    inp = prompt_batch(model.cfg, b, 224, 32)
    cap = GenerationCapture()
    with cap.active():
      t1 = time_fn(lambda: tinyrs_jax.generate(model, inp, max_new_tokens=1), warmup=1, iters=args.iters)
      tn = time_fn(lambda: tinyrs_jax.generate(model, inp, max_new_tokens=n), warmup=1, iters=args.iters)
    texts = cap.texts()  # the last calls: max_new_tokens = n
    p_pre, c_pre = predicted(texts["prefill"], flops_rate, bw)
    p_tok, c_tok = predicted(texts["decode"], flops_rate, bw, 1.0)
    p_tok0, c_tok0 = predicted(texts["decode"], flops_rate, bw, 0.0)
    per_token_c = types.SimpleNamespace(flops=c_tok.flops - c_tok0.flops, bytes=c_tok.bytes - c_tok0.bytes)
    out.append(row(f"generate batch {b}: prefill", p_pre, t1, c_pre))
    out.append(row(f"generate batch {b}: decode per token", p_tok - p_tok0, (tn - t1) / (n - 1), per_token_c))
  return out


def check_grpo(args, flops_rate, bw) -> list[str]:
  """benchmarks/grpo_step.py's ours (run_ours: the trainer's GRPOStep): 8 prompts x G 4, 64 new tokens, beta
  0.001, remat full, fp32; phases generate (prefill + 63 decode steps), scoring (reference), update."""
  import tempfile

  from benchmarks import grpo_step
  from tinyrs_jax.train import state as state_lib
  compiled_steps = {}
  original = state_lib.CompiledStep.compiled

  def recording(self, state_abstract, batch):
    out = original(self, state_abstract, batch)
    compiled_steps[self.name] = out
    return out
  bench_args = types.SimpleNamespace(steps=args.iters, prompts=8, group=4, new_tokens=64, image_size=224,
                                     beta=0.001, loss_type="grpo", gradient_checkpointing=1)
  ckpt = tempfile.mkdtemp(prefix="roofline_grpo_")
  cfg, params = grpo_step.build_checkpoint(ckpt)
  images = grpo_step.make_images(bench_args.prompts, bench_args.image_size)
  cap = GenerationCapture()
  state_lib.CompiledStep.compiled = recording
  # the benchmark's and the trainer's phase timers, read on CLOCK
  from tinyrs_jax.train import grpo_trainer
  clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
  clock.perf_counter = clock.time = CLOCK["fn"]
  saved = grpo_step.time, grpo_trainer.time
  grpo_step.time = grpo_trainer.time = clock
  try:
    with cap.active():
      res = grpo_step.run_ours(bench_args, ckpt, cfg, params, images)
  finally:
    state_lib.CompiledStep.compiled = original
    grpo_step.time, grpo_trainer.time = saved
  texts = cap.texts()
  p_pre, c_pre = predicted(texts["prefill"], flops_rate, bw)
  p_dec, c_dec = predicted(texts["decode"], flops_rate, bw, bench_args.new_tokens - 1)
  gen_c = types.SimpleNamespace(flops=c_pre.flops + c_dec.flops, bytes=c_pre.bytes + c_dec.bytes)
  out = [row("grpo: generate (prefill + decode)", p_pre + p_dec, res["generate"], gen_c)]
  p_ref, c_ref = predicted(compiled_steps["ref_logps"].as_text(), flops_rate, bw)
  out.append(row("grpo: scoring (reference)", p_ref, res["scoring"], c_ref))
  p_up, c_up = predicted(compiled_steps["train_step"].as_text(), flops_rate, bw)
  out.append(row("grpo: update", p_up, res["update"], c_up))
  out.append(f"  (grpo rollout measured {res['rollout']:.2f} s, of which generate {res['generate']:.2f} s: the rest "
             "is host work the roofline does not price: decoding text, rewards, advantages)")
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--parts", default="train,generate,grpo")
  p.add_argument("--preset", default="bench_30m")
  p.add_argument("--batches", default="8,64")
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--iters", type=int, default=3)
  p.add_argument("--clock", default="cpu", choices=("cpu", "wall"),
                 help="cpu: this process's CPU seconds (robust to other jobs on the machine); wall: elapsed seconds")
  args = p.parse_args()
  CLOCK["fn"] = time.process_time if args.clock == "cpu" else time.perf_counter
  setup_threads()
  import jax
  parts = args.parts.split(",")
  for name, fn in (("train", check_train), ("generate", check_generate), ("grpo", check_grpo)):
    if name not in parts:
      continue
    # rates re-measured before each part: on a shared machine they move with the load
    load = os.getloadavg()
    flops_rate, bw, stream, read = measure_rates()
    unit = "CPU-s" if args.clock == "cpu" else "s"
    print(f"{name}: this CPU ({os.cpu_count()} cores, jax {jax.__version__}, load average {load[0]:.1f}; times in "
          f"{'CPU seconds of this process' if args.clock == 'cpu' else 'wall seconds'}): fp32 "
          f"matmul {flops_rate / 1e9:.1f} GFLOP/{unit}, memory {bw / 1e9:.1f} GB/{unit} (measured now: the larger of a "
          f"streaming update, {stream / 1e9:.1f} read + written, and a matrix-vector product's weight reads, "
          f"{read / 1e9:.1f})", flush=True)
    t0 = time.time()
    for line in fn(args, flops_rate, bw):
      print(line, flush=True)
    print(f"  ({name}: {time.time() - t0:.0f} s)", flush=True)
  load = os.getloadavg()
  print(f"load average at the end {load[0]:.1f}")


if __name__ == "__main__":
  main()
