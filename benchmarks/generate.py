"""Generation: ours (static KV cache, jitted prefill + while_loop decode) vs transformers' generate.

  python benchmarks/generate.py [--preset=bench_30m --batches=8,64 --new_tokens=64]

Same weights, same prompts (a 224×224 image + 32 text tokens each), greedy, no stop token, in one process.
Each side is timed generating 1 token (≈ prefill) and `new_tokens` tokens; prefill tokens/s = prompt tokens /
t(1), decode tokens/s = rows × (new_tokens − 1) / (t(new_tokens) − t(1)). Prints both and the ratios.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import our_and_hf_models, prompt_batch, setup_threads, time_fn  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="bench_30m")
  p.add_argument("--batches", default="8,64")
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--text_tokens", type=int, default=32)
  p.add_argument("--iters", type=int, default=3)
  args = p.parse_args()
  setup_threads()
  import torch

  import tinyrs_jax
  model, hf = our_and_hf_models(args.preset)
  print(f"generate {args.preset}, {args.image_size}px image + {args.text_tokens} text tokens per prompt, "
        f"{args.new_tokens} new tokens, greedy; torch threads {torch.get_num_threads()}")
  for b in [int(x) for x in args.batches.split(",")]:
    inp = prompt_batch(model.cfg, b, args.image_size, args.text_tokens)
    prompt_tokens = inp["input_ids"].size
    tin = {k: torch.from_numpy(v) for k, v in inp.items()}

    def hf_gen(n):
      hf.model.rope_deltas = None
      with torch.no_grad():
        out = hf.generate(**tin, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
      assert out.shape[1] == inp["input_ids"].shape[1] + n

    def ours_gen(n):
      g = tinyrs_jax.generate(model, inp, max_new_tokens=n)
      assert g.tokens.shape == (b, n)

    iters = max(1, args.iters if b <= 8 else args.iters - 1)
    res = {}
    for name, fn in (("transformers", hf_gen), ("ours", ours_gen)):
      t1 = time_fn(lambda: fn(1), warmup=1, iters=iters)
      tn = time_fn(lambda: fn(args.new_tokens), warmup=1, iters=iters)
      res[name] = (prompt_tokens / t1, b * (args.new_tokens - 1) / max(tn - t1, 1e-9), tn)
    (hp, hd, ht), (op, od, ot) = res["transformers"], res["ours"]
    print(f"batch {b}:")
    print(f"  transformers  prefill {hp:9.0f} tok/s   decode {hd:8.0f} tok/s   total {ht:6.2f} s")
    print(f"  ours          prefill {op:9.0f} tok/s   decode {od:8.0f} tok/s   total {ot:6.2f} s")
    print(f"  ratio         prefill {op / hp:8.2f}x    decode {od / hd:7.2f}x    total {ht / ot:5.2f}x")


if __name__ == "__main__":
  main()
