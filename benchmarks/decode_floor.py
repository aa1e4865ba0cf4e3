"""The floor under decode on this CPU: the time of a decode step's weight matmuls alone, in torch.

  python benchmarks/decode_floor.py [--preset=bench_30m --batch=8 --iters=50]

One decode step multiplies a (batch, hidden) activation by every weight of every decoder layer (q, k, v, o,
gate, up, down) and by the LM head. This times exactly those matmuls (torch, fp32, the threads transformers uses),
nothing else: no attention over the cache, no norms, no sampling. When transformers' measured decode step
(benchmarks/generate.py: batch x (new tokens - 1) / decode tokens/s) is close to this number, decode is bound by
reading the weights and no implementation can be much faster on this machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="bench_30m")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--iters", type=int, default=50)
  args = p.parse_args()
  import numpy as np
  import torch

  from tinyrs_jax.models import get_preset
  t = get_preset(args.preset).text
  d, f, heads, kv, hd = t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim
  shapes = [(d, heads * hd), (d, kv * hd), (d, kv * hd), (heads * hd, d), (d, f), (d, f), (f, d)]
  weights = [torch.randn(a, b) for _ in range(t.num_hidden_layers) for a, b in shapes]
  head = torch.randn(d, t.vocab_size)

  inputs = {k: torch.randn(args.batch, k) for k in {a for a, _ in shapes}}  # made once: only matmuls are timed

  def step():
    for w in weights:
      inputs[w.shape[0]] @ w
    return inputs[d] @ head

  with torch.no_grad():
    for _ in range(5):
      step()
    times = []
    for _ in range(args.iters):
      t0 = time.perf_counter()
      step()
      times.append(time.perf_counter() - t0)
  ms = float(np.median(times)) * 1e3
  n = sum(a * b for a, b in shapes) * t.num_hidden_layers + d * t.vocab_size
  print(f"decode floor {args.preset}, batch {args.batch}: {ms:.2f} ms/step for the weight matmuls alone "
        f"({n / 1e6:.1f}M weights, {n * 4 / ms / 1e6:.1f} GB/s of weights read), torch threads "
        f"{torch.get_num_threads()}")


if __name__ == "__main__":
  main()
