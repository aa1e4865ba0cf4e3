"""Forward pass: ours vs transformers' Qwen2VLForConditionalGeneration, same weights and inputs, one process.

  python benchmarks/forward.py [--preset=bench_30m --batch=4 --image_size=224 --text_tokens=32]

Prints tokens/s of each and the ratio. Ours is timed twice: the jitted static-batch forward the trainers and
evaluators use (device arrays in, logits out), and the HF-style `model(...)` call (host padding and transfer
included). Both produce full (B, L, vocab) logits, as transformers does.
"""
from __future__ import annotations

import argparse
import sys
import os

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import our_and_hf_models, prompt_batch, setup_threads, time_fn  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="bench_30m")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--text_tokens", type=int, default=32)
  p.add_argument("--iters", type=int, default=5)
  args = p.parse_args()
  setup_threads()
  import jax
  import jax.numpy as jnp
  import torch
  from flax import nnx

  from tinyrs_jax.models import batch as batch_lib

  model, hf = our_and_hf_models(args.preset)
  inp = prompt_batch(model.cfg, args.batch, args.image_size, args.text_tokens)
  n_tokens = inp["input_ids"].size

  static = batch_lib.pad_hf_inputs(inp["input_ids"], inp["attention_mask"], inp["pixel_values"],
                                   inp["image_grid_thw"], length_buckets=(inp["input_ids"].shape[1],))
  static.pop("length")
  static = {k: jnp.asarray(v) for k, v in static.items()}

  graphdef, state = nnx.split(model)

  @jax.jit
  def fwd(state, b):
    m = nnx.merge(graphdef, state)
    return m.logits(m.hidden_states(b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"]))

  t_ours = time_fn(lambda: jax.block_until_ready(fwd(state, static)), iters=args.iters)
  t_call = time_fn(lambda: jax.block_until_ready(model(**inp)), iters=args.iters)
  tin = {k: torch.from_numpy(v) for k, v in inp.items()}

  def hf_call():
    hf.model.rope_deltas = None
    with torch.no_grad():
      hf(**tin)

  t_hf = time_fn(hf_call, iters=args.iters)
  print(f"forward {args.preset} batch {args.batch}, {args.image_size}px image + {args.text_tokens} text tokens "
        f"({inp['input_ids'].shape[1]} tokens/row), torch threads {torch.get_num_threads()}")
  print(f"  transformers          {n_tokens / t_hf:10.0f} tokens/s  ({t_hf * 1e3:.1f} ms)")
  print(f"  ours (jitted static)  {n_tokens / t_ours:10.0f} tokens/s  ({t_ours * 1e3:.1f} ms)  "
        f"ratio {t_hf / t_ours:.2f}x")
  print(f"  ours (HF-style call)  {n_tokens / t_call:10.0f} tokens/s  ({t_call * 1e3:.1f} ms)  "
        f"ratio {t_hf / t_call:.2f}x")


if __name__ == "__main__":
  main()
