"""Stage 3, chain-of-thought fine-tuning: <think>...</think><answer>...</answer> targets.

Starts from stage instruct's checkpoint; everything else as stage 1 (full fine-tuning, lr 1e-5 / 2e-6 vision,
AdamW wd 0.1, 3 % warmup, cosine, global batch 128, 1 epoch, bf16 + fp32 master weights, full remat):
    python -m tinyrs_jax.main --config=configs/cot.py --workdir=$WORK/cot \
      --config.init.workdir=$WORK/instruct --config.data.train=/data/vhm/sft_cot.jsonl --config.data.image_root=/data/images
  Plus the flags that make it fit your machine (docs/fitting.md, "The real 2B recipe"; tools/aot checks any other), e.g.
  --config.grad_accum_steps=16 on one H100, --config.mesh.fsdp=16 --config.grad_accum_steps=2 on a v5e-16.

The demo (this CPU, about four minutes, synthetic cot data, demo_8m model):
    python -m tinyrs_jax.main --config=configs/cot.py:demo --workdir=/tmp/tinyrs/cot \
      [--config.init.workdir=/tmp/tinyrs/instruct]
  on its own from scratch, or from the instruct demo's workdir when init.workdir says so; should reach a final
  eval_loss <= 0.9 x the eval_loss at step 0 (measured with `bash launch/demo.sh`, from the instruct demo:
  eval_loss 7.94 at step 0 -> 0.235 at the end, 600 steps of batch 8, synthetic data v3). Greedy on 400 test
  questions (configs/eval.py:demo --config.data.demo_split=test, asked to think first) that checkpoint scores:
  classify 1.000, presence 0.877, count 0.753, compare 0.537, grounding Acc@0.5 0.000, caption CIDEr 3.79
  (runs/demo/eval.md; docs/demo.md).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def get_config(arg: str | None = None):
  c = common.base("cot")
  if arg == "demo":
    c = common.demo(c)
    # 600 steps, not 200: the reasoning's "I find one / none" has to learn again to look at the image (from the
    # 1000-step instruct checkpoint, validation presence 0.556 after 200 cot steps, 0.679 after 400, 0.802 after
    # 600: docs/demo_tuning.md, q8-q13); a lower lr keeps less, not more (q5, q6).
    c.total_steps = 600
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/cot.py; use :demo or nothing")
  return c
