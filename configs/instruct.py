"""Stage 2, visual instruction tuning (TinyRS: VHM SFT instructions: classification, VQA, grounding, captions).

Starts from stage pretrain's checkpoint; everything else as stage 1 (full fine-tuning, lr 1e-5 / 2e-6 vision,
AdamW wd 0.1, 3 % warmup, cosine, global batch 128, 1 epoch, bf16 + fp32 master weights, full remat):
    python -m tinyrs_jax.main --config=configs/instruct.py --workdir=$WORK/instruct \
      --config.init.workdir=$WORK/pretrain --config.data.train=/data/vhm/sft.jsonl --config.data.image_root=/data/images
  Plus the flags that make it fit your machine (docs/fitting.md, "The real 2B recipe"; tools/aot checks any other), e.g.
  --config.grad_accum_steps=16 on one H100, --config.mesh.fsdp=16 --config.grad_accum_steps=2 on a v5e-16.

The demo (this CPU, about four minutes, synthetic instruct data, demo_8m model):
    python -m tinyrs_jax.main --config=configs/instruct.py:demo --workdir=/tmp/tinyrs/instruct \
      [--config.init.workdir=/tmp/tinyrs/pretrain]
  on its own from scratch, or from the pretrain demo's workdir when init.workdir says so; should reach a final
  eval_loss <= 0.9 x the eval_loss at step 0 (measured with `bash launch/demo.sh`, from the pretrain demo:
  eval_loss 9.05 at step 0 -> 0.914 at the end, synthetic data v3; 1000 steps of batch 8 at lr 5e-4, see get_config
  and docs/demo_tuning.md, tries q1-q13).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def get_config(arg: str | None = None):
  c = common.base("instruct")
  if arg == "demo":
    c = common.demo(c)
    # Gentle: it teaches the tasks' short answers without overwriting pretrain's visual features (at 2e-3 the
    # cot checkpoint classified at chance). 250 steps at 5e-4: greedy held-out classification 0.58 (8 classes;
    # 60 steps left it at 0.00, answering "yes" to everything); 250 at 1e-3: 0.48 (synthetic data v1).
    # 1000 steps, not 250: presence and comparison answers start to use the image only once the cosine schedule
    # has annealed a long run (validation presence 0.704 = its most common answer at 250 steps, 0.827 at 1000:
    # docs/demo_tuning.md, q4; 1500 gave 0.840, q1).
    c.total_steps = 1000
    c.optim.lr = 5e-4
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/instruct.py; use :demo or nothing")
  return c
