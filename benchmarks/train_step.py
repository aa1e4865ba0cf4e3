"""One SFT train step: ours vs transformers + torch AdamW, same weights and batch, one process.

  python benchmarks/train_step.py [--preset=bench_30m --batch=4 --image_size=224 --text_tokens=96
                                   --answer_tokens=48 --iters=5]

Per step: forward, next-token cross-entropy on the answer tokens, backward, gradient clipping to norm 1.0,
AdamW (lr 1e-5, weight decay 0.1) on every parameter, fp32 on this CPU. Ours is the trainer's step
(tinyrs_jax.train.state.make_train_step: donated, compiled once; the chunked loss computes logits at the
supervised positions only). Transformers is timed two ways:
  full logits      Qwen2VLForConditionalGeneration(labels=...): what a user calls; the LM head runs at every
                   position (more work than ours: vocabulary x all positions);
  logits_to_keep   the same model called with logits_to_keep = answer tokens + 1 and the loss on those
                   positions: the same work as ours.
Prints tokens/s of each (all batch positions), the ratios against both, and the first-step losses (they must
agree). Ours is timed under each remat policy of --remat (on XLA:CPU recomputing is often faster than stacking
residuals). docs/benchmarks.md quotes the logits_to_keep ratio (the like-for-like one) and the full-logits one beside it.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import our_and_hf_models, our_train_steps, prompt_batch, setup_threads, time_fn  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="bench_30m")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--text_tokens", type=int, default=96)
  p.add_argument("--answer_tokens", type=int, default=48)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--chunk_size", type=int, default=64)
  p.add_argument("--remat", default="none,dots_no_batch",
                 help="our remat policies to time, comma-separated (none, full, dots, dots_no_batch)")
  args = p.parse_args()
  setup_threads()
  import jax
  import numpy as np
  import torch

  model, hf = our_and_hf_models(args.preset)
  cfg = model.cfg
  inp = prompt_batch(cfg, args.batch, args.image_size, args.text_tokens)
  b, length = inp["input_ids"].shape
  n_tokens = b * length
  loss_mask = np.zeros((b, length), np.int32)
  loss_mask[:, length - args.answer_tokens:] = 1

  # ---- ours: the trainer's step on the static batch, weights taken from the same model.
  ours = {}
  for remat, run_ours, _ in our_train_steps(model, inp, args.answer_tokens, args.remat.split(","), args.chunk_size):
    first = float(run_ours()["loss"])
    ours[remat] = (first, time_fn(run_ours, warmup=1, iters=args.iters))

  # ---- transformers + torch AdamW.
  hf.train()
  labels = np.where(loss_mask == 1, inp["input_ids"], -100)
  tin = {k: torch.from_numpy(v) for k, v in inp.items()}
  tin["labels"] = torch.from_numpy(labels)
  decay = [p_ for n, p_ in hf.named_parameters() if not (n.endswith("bias") or "norm" in n or "ln_q" in n)]
  no_decay = [p_ for n, p_ in hf.named_parameters() if n.endswith("bias") or "norm" in n or "ln_q" in n]
  topt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                           lr=1e-5, betas=(0.9, 0.999), eps=1e-8)
  first_hf = {}

  def theirs():
    hf.model.rope_deltas = None
    out = hf(**tin)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
    topt.step()
    topt.zero_grad(set_to_none=True)
    first_hf.setdefault("loss", float(out.loss))

  theirs()
  t_hf = time_fn(theirs, warmup=1, iters=args.iters)

  keep = args.answer_tokens + 1  # the logits that predict the answer tokens (each predicts the next token)
  tin_keep = {k: v for k, v in tin.items() if k != "labels"}
  targets = torch.from_numpy(inp["input_ids"][:, length - args.answer_tokens:])
  first_keep = {}

  def theirs_keep():
    hf.model.rope_deltas = None
    logits = hf(**tin_keep, logits_to_keep=keep).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
    topt.step()
    topt.zero_grad(set_to_none=True)
    first_keep.setdefault("loss", float(loss))

  theirs_keep()
  t_keep = time_fn(theirs_keep, warmup=1, iters=args.iters)

  print(f"train step {args.preset} batch {args.batch}, {args.image_size}px image + {args.text_tokens} text tokens "
        f"({length} tokens/row, loss on the last {args.answer_tokens}), fp32, torch threads "
        f"{torch.get_num_threads()}, jax devices {jax.devices()[0].platform}")
  print(f"  first-step loss: transformers {first_hf['loss']:.6f}, "
        + ", ".join(f"ours (remat {r}) {v[0]:.6f}" for r, v in ours.items()))
  print(f"  {'transformers, full logits':38s} {n_tokens / t_hf:8.0f} tokens/s  ({t_hf * 1e3:.1f} ms/step)")
  print(f"  {'transformers, logits_to_keep=' + str(keep):38s} {n_tokens / t_keep:8.0f} tokens/s  "
        f"({t_keep * 1e3:.1f} ms/step)")
  for r, (_, t) in ours.items():
    print(f"  {'ours, train_step, remat ' + r:38s} {n_tokens / t:8.0f} tokens/s  ({t * 1e3:.1f} ms/step)  "
          f"ratio {t_keep / t:.2f}x (same work), {t_hf / t:.2f}x (vs full logits)")


if __name__ == "__main__":
  main()
