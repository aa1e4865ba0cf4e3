"""Stage 4, GRPO with rule rewards (TinyRS-R1's alignment stage), from stage 3's (chain-of-thought) checkpoint.

The real recipe (a GPU box or a TPU pod; every host runs the same command):
    python -m tinyrs_jax.main --config=configs/grpo.py --workdir=$WORK/grpo \
      --config.init.workdir=$WORK/cot --config.data.train=/data/grpo/train.jsonl \
      --config.data.val=/data/grpo/val.jsonl --config.data.image_root=/data/images
  Prompts are records with a verifiable `answer` (and `boxes` for grounding); records with an assistant turn are
  used as prompts (the turn is dropped). Where each value comes from:
    G = 4 generations, beta 0.001 (k3 KL), temperature 1.0, advantage eps 1e-4, per-sequence aggregation
    (loss_type grpo), one update per rollout (mu = 1, so the clipping never acts), format + accuracy rewards:
    the original TinyRS-R1 GRPO script (TRL). Its tags were <reasoning>/<answer>; ours default to <think>,
    which is what our stage 3 writes (set grpo.think_tag=reasoning to score the original's format).
    epsilon 0.2 / 0.2, top_p 1, top_k 0: TRL's GRPOConfig defaults. lr 1e-6 constant after 3 % warmup: TRL's
    GRPOConfig default lr (the original's script). 32 prompts x 4 = 128 completions per step (the SFT stages'
    global batch) and 1024 new tokens at most (the original allowed 8192; ours fits a v5e-16 / 8 GPUs, see
    tools/aot): our choices.
  Users' own rewards: --config.reward_modules=my_lab.rewards --config.rewards.my_reward=1.0 (the fields a reward
  receives, its time limit grpo.reward_timeout_s and what a failing reward does: docs/grpo.md).
  Plus the flags that make it fit your machine (README, "The real 2B recipe"; tools/aot checks any other), e.g.
  --config.grad_accum_steps=16 on one H100, --config.mesh.fsdp=16 on a v5e-16 (8 GPUs, a v5p-8: the defaults).

The demo (this CPU; synthetic GRPO prompts, the demo model):
    python -m tinyrs_jax.main --config=configs/grpo.py:demo --workdir=/tmp/tinyrs/grpo \
      [--config.init.workdir=/tmp/tinyrs/cot]
  Without init.workdir it first builds its starting policy by running the three demo SFT stages (about 9 minutes
  here, cached under $TINYRS_CACHE, reused by later runs). It aims to raise the held-out eval/rewards/accuracy by
  at least 0.03 while eval/rewards/format does not fall by more than 0.02 (launch/demo.sh prints both). Measured
  +0.047 and +0.102 for seeds 0 and 1 on the synthetic data's version 1; on version 3, from the current SFT
  configs, seeds 0-4 move it by -0.039 to +0.022, mean +0.005 (docs/demo_seeds.md, `python benchmarks/demo_seeds.py`).
"""
from __future__ import annotations

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def get_config(arg: str | None = None):
  c = common.base("grpo")
  c.trainer = "grpo"
  c.batch_size = 32  # prompts per step (global); each is sampled grpo.num_generations times
  c.init.demo_configs_dir = os.path.dirname(os.path.abspath(__file__))  # the demo's SFT stages (configs/*.py)
  c.grpo = ml_collections.ConfigDict(dict(
      num_generations=4,  # G
      max_new_tokens=1024,  # completion length limit
      temperature=1.0,
      top_p=1.0,
      top_k=0,  # 0: off
      # grpo | bnpo | dr_grpo | dapo (TRL's aggregations; train/grpo.py). bnpo here divides by the completion
      # tokens of the WHOLE generation batch (all microbatches and processes); TRL's bnpo divides each
      # microbatch on each device by its own token count and averages those: equal only when every microbatch
      # holds as many tokens (docs/grpo.md)
      loss_type="grpo",
      scale_rewards="group",  # group | batch | none: divide advantages by the group's std, the batch's, or not
      advantage_eps=1e-4,
      epsilon_low=0.2,
      epsilon_high=0.2,  # DAPO's clip-higher: 0.28
      delta=0.0,  # > 0: two-sided clipping caps the unclipped ratio at delta (0: off)
      beta=0.001,  # k3 KL to the reference (the initial policy); 0: no reference model is loaded
      importance_sampling_level="token",  # token | sequence (GSPO)
      num_iterations=1,  # mu: optimizer updates per rollout batch
      mask_truncated_completions=False,  # True: completions cut at max_new_tokens get no loss (DAPO)
      dynamic_sampling=False,  # DAPO: keep only groups whose dynamic_sampling_reward varies; refill from more prompts
      dynamic_sampling_reward="accuracy",  # filter on the binary accuracy, not on a shaped sum
      dynamic_sampling_max_batches=4,  # rollout batches per step at most; then topped up with filtered groups
      think_tag="think",  # the format reward's tags (the original used "reasoning")
      answer_tag="answer",
      reward_timeout_s=600.0,  # a reward call (one batch) slower than this stops the run with an error; <= 0: none
      allow_unverifiable=False,  # True: train on prompts without a verifiable answer (counted, logged); else refuse
      log_samples_every=10,  # steps between sample tables (samples.jsonl, TensorBoard text); 0: never
      num_samples_logged=8,
  ))
  c.rewards = ml_collections.ConfigDict(dict(format=1.0, accuracy=1.0, iou_threshold=0.0, overlong=0.0))
  c.reward_options = ml_collections.ConfigDict(dict(overlong=dict(cache_length=256)))
  c.reward_modules = ""  # comma-separated modules registering extra rewards (tinyrs_jax.rewards.register_reward)
  c.loss = ml_collections.ConfigDict(dict(name="grpo", chunk_size=256))
  c.optim.lr = 1e-6
  c.optim.schedule = "constant"
  c.optim.weight_decay = 0.0
  c.optim.group_lr.vision = -1.0
  c.total_steps = -1  # -1: num_epochs over the prompts
  c.checkpoint.every_steps = 100
  c.eval.every_steps = 100
  c.eval.num_prompts = -1  # held-out prompts per evaluation (-1: all of data.val)
  c.eval.batch_size = 0  # 0: batch_size
  c.log_every_steps = 1

  if arg == "demo":
    c = common.demo(c)
    c.log_every_steps = 1
    c.batch_size = 16  # prompts per step (64 completions): fewer would make the update mostly noise at this size
    c.total_steps = 20  # (data v1) held-out accuracy 0.492 -> 0.531 (step 10) -> 0.539 (step 20); 45 steps: 0.516
    c.grpo.max_new_tokens = 128  # the demo cot checkpoint writes ~40 tokens (p90 62, max 73)
    c.grpo.temperature = 0.7  # the small model's T = 1 samples are far worse than its greedy answers (0.3 vs 0.45
    #                           accuracy): at 0.7 the update sharpens what greedy decoding will say
    c.grpo.beta = 0.04  # a KL anchor to the starting policy keeps its classification while the rest moves
    c.grpo.log_samples_every = 5
    c.reward_options.overlong.cache_length = 32
    c.optim.lr = 5e-5  # 1e-4 and 2e-4 drifted (entropy up, presence and classification down) in 30-40 steps
    c.optim.warmup_frac = 0.0
    c.optim.warmup_steps = 0
    c.checkpoint.every_steps = 10
    c.eval.every_steps = 10
    c.eval.num_prompts = 128
    c.eval.batch_size = 64
    c.eval.num_batches = -1
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/grpo.py; use :demo or nothing")
  return c
