"""Stage 1, image-caption pretraining (TinyRS: VHM VersaD captions), full fine-tuning of Qwen2-VL-2B.

The real recipe (a GPU box or a TPU pod; every host runs the same command):
    python -m tinyrs_jax.main --config=configs/pretrain.py --workdir=$WORK/pretrain \
      --config.init.hf_dir=/data/Qwen2-VL-2B-Instruct \
      --config.data.train=/data/versad/captions.jsonl --config.data.image_root=/data/versad/images
  lr 1e-5 (LLM, merger) / 2e-6 (vision), AdamW wd 0.1, 3 % warmup, cosine, global batch 128, 1 epoch, bf16
  compute with fp32 master weights, full remat, images 512..1280 x 28² pixels.
  Plus the flags that make it fit your machine (docs/fitting.md, "The real 2B recipe"; tools/aot checks any other), e.g.
  --config.grad_accum_steps=16 on one H100, --config.mesh.fsdp=16 --config.grad_accum_steps=2 on a v5e-16.

The demo (this CPU, about two minutes, synthetic captions, demo_8m model from scratch):
    python -m tinyrs_jax.main --config=configs/pretrain.py:demo --workdir=/tmp/tinyrs/pretrain
  should reach: final eval_loss <= 0.9 x the eval_loss at step 0 (measured with `bash launch/demo.sh`: eval_loss
  6.99 at step 0 -> 0.346 at the end, 100 steps of batch 8).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def get_config(arg: str | None = None):
  c = common.base("pretrain")
  if arg == "demo":
    c = common.demo(c)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/pretrain.py; use :demo or nothing")
  return c
