"""Which remat policy a config should use on this machine: its SFT train step timed under each policy, on its own
batches (the real pipeline, the config's model), ours only.

  python benchmarks/remat.py [--config=configs/cot.py:demo --policies=full,none,dots,dots_no_batch --iters=10]

Prints seconds per step (median over --iters steps after one warm-up, compilation excluded) per policy. The demo
configs' remat choice (configs/common.py) quotes this script.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(arg: str):
  path, _, variant = arg.partition(":")
  spec = importlib.util.spec_from_file_location("_bench_cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant or None)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/cot.py:demo")
  p.add_argument("--policies", default="full,none")
  p.add_argument("--iters", type=int, default=10)
  args = p.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import numpy as np

  from tinyrs_jax.train import input as input_lib
  from tinyrs_jax.train import losses
  from tinyrs_jax.train import optimizer as optim_lib
  from tinyrs_jax.train import runner
  from tinyrs_jax.train import state as state_lib

  config = load_config(args.config)
  data = input_lib.resolve_data(config)
  source = runner.resolve_model(config, "/nonexistent-bench-workdir", data.tokenizer_dir)
  mesh = runner.make_mesh(config)
  it = input_lib.make_iterator(config, data, "train", source.cfg, batch_size=config.batch_size,
                               tokenizer_dir=source.tokenizer_dir)
  batches = [input_lib.arrays(next(it)) for _ in range(args.iters + 1)]
  loss = losses.get_loss(config.loss.name)
  loss_fn = lambda m, b, r: loss(m, b, r, chunk_size=int(config.loss.chunk_size))  # noqa: E731
  print(f"{args.config}: {source.cfg.text.num_hidden_layers}-layer model, batch {config.batch_size}, "
        f"{len(jax.devices())} device(s) {jax.devices()[0].platform}")
  for policy in args.policies.split(","):
    model = state_lib.make_model(source.cfg, dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                                 remat_policy=policy)
    opt = optim_lib.make_optimizer(config.optim, model.abstract_params, 1000)
    sh = state_lib.state_shardings(model, opt, mesh)
    state = state_lib.init_state(model, opt, sh, 0)
    step = state_lib.CompiledStep(state_lib.make_train_step(model, opt, loss_fn), mesh, sh, donate=True)
    times = []
    for b in batches:
      gb = input_lib.place_batch(b, mesh)
      compiles = step.num_compiles
      t0 = time.perf_counter()
      state, m = step(state, gb)
      jax.block_until_ready(m)
      if step.num_compiles == compiles:  # a step that compiled a new length bucket is not timed
        times.append(time.perf_counter() - t0)
    print(f"  remat {policy:14s} {float(np.median(times)):.3f} s/step (median of {len(times)})")


if __name__ == "__main__":
  main()
