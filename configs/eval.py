"""Evaluation on the remote-sensing benchmarks: greedy answers, both scoring rule sets, tables and pictures.

    python -m tinyrs_jax.main --config=configs/eval.py --workdir=runs/eval/grpo \
      --config.init.workdir=runs/grpo --config.benchmarks.aid.path=/data/AID \
      --config.benchmarks.dior_rsvg.path=/data/DIOR-RSVG --config.benchmarks.rsvqa_hr.path=/data/RSVQA-HR
  init.workdir (one of our workdirs, or one of its checkpoints/<step> folders; init.step picks a step) or
  init.hf_dir (e.g. Qwen2-VL-2B-Instruct, to evaluate the starting point). Every benchmark whose path is set
  runs (eval.run=aid,dior_rsvg narrows that); the built-in entries are in tinyrs_jax/evaluation/suite.py.
  Writes DIR/results.json, DIR/results.md, DIR/predictions/<benchmark>.jsonl and DIR/pictures/. A rerun skips
  the benchmarks already finished with the same settings and resumes an interrupted one where it stopped.
  The defaults fit one H100, 8 GPUs, a v5e-16 or a v5p-8; with eval.mc_mode=loglik one H100 takes
  --config.eval.batch_size=32 (README, tools/aot).

The demo (this CPU): the synthetic data's validation split (data.demo_split=val, the default: tuning), every task:
    python -m tinyrs_jax.main --config=configs/eval.py:demo --workdir=runs/demo/eval/cot \
      --config.init.workdir=runs/demo/cot
  launch/demo.sh evaluates the starting point and every stage's final checkpoint this way on the test split
  (--config.data.demo_split=test), which no demo setting was tuned on (docs/demo_tuning.md).
"""
from __future__ import annotations

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def get_config(arg: str | None = None):
  c = common.base("eval")
  c.trainer = "eval"
  # the image sizes: 0 = the checkpoint's own (its tokenizer folder's preprocessor_config.json, as trained)
  c.data.min_pixels = 0
  c.data.max_pixels = 0
  c.data.max_length = 4096  # prompts longer than this are skipped (counted in results.json)
  c.data.demo_split = "val"  # data.demo: the synthetic split evaluated (train | val | test); test for reported numbers
  c.eval = ml_collections.ConfigDict(dict(
      run="",  # comma-separated benchmark names; "" = every benchmark whose path is set
      batch_size=64,  # prompts per generation batch (global)
      max_new_tokens=512,  # answers are cut here (counted as truncated)
      prompt="{question}",  # the default prompt template ({question}: the record's question, image included)
      prompt_style="tinyrs",  # tinyrs: the original work's prompts where their wording is known (compare with
      #                         published tables); ours: the readers' prompts (evaluation/suite.py)
      answer_tag="answer",  # the graded span (rules.py); reasoning inside think_tags is never graded
      think_tags="think,reasoning",
      box_format="qwen1000",  # how a bare [x1,y1,x2,y2] in an answer is read: qwen1000 | pixels | norm1
      mc_mode="generate",  # multiple choice: generate (the first option letter) | loglik (the option text with the
      #                      highest mean log-probability per token after the prompt; no generation)
      limit=-1,  # examples per benchmark at most (-1: all; a benchmark's own limit wins when set)
      pictures=True,  # confusion matrices and grounding grids in DIR/pictures
      picture_examples=6,  # grounding grid: this many best and this many worst examples
      log_every_s=30.0,
  ))
  from tinyrs_jax.evaluation import suite
  c.benchmarks = suite.builtin_benchmarks()
  c.checkpoint.async_save = False
  if arg == "demo":
    c = common.demo(c)
    c.init.allow_random = True  # without init.workdir: the random starting point of the demo chain
    c.eval.batch_size = 64
    c.eval.max_new_tokens = 128  # the demo cot checkpoint writes ~40 tokens (max 73)
    c.eval.limit = 400  # about 80 scenes x 5 tasks of a split's ~990 records (file order: whole scenes)
    c.eval.run = "synthetic,synthetic_caption"
    c.eval.prompt_style = "ours"  # our synthetic data: no original prompt exists
    c.benchmarks.synthetic_caption.limit = 64
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/eval.py; use :demo or nothing")
  return c
