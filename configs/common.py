"""Fields shared by the stage configs (pretrain, instruct, cot): the TinyRS recipe's defaults.

Not a config of its own; `configs/<stage>.py` call `base(stage)` and change what differs. Every field can be
overridden on the command line (`--config.optim.lr=2e-5`); a field that does not exist is an error.
"""
from __future__ import annotations

import ml_collections


def base(stage: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = "sft"
  c.stage = stage
  c.seed = 0

  # The model: from init.hf_dir / init.workdir when set (their config wins), else this preset.
  c.model = ml_collections.ConfigDict(dict(
      preset="qwen2_vl_2b", dtype="bfloat16", param_dtype="float32", remat_policy="full"))
  c.init = ml_collections.ConfigDict(dict(
      hf_dir="",  # a Hugging Face Qwen2-VL folder (e.g. Qwen2-VL-2B-Instruct)
      workdir="",  # an earlier stage's workdir (or one of its checkpoints/<step> folders)
      step=-1,  # which step of init.workdir; -1: the latest
      allow_random=False))  # without hf_dir / workdir: random weights (demo) or an error (real runs)

  c.data = ml_collections.ConfigDict(dict(
      source="pipeline",  # "pipeline" (JSON/JSONL conversations through tinyrs_jax.data) or "random"
      demo=False,  # True: the embedded synthetic data set and demo tokenizer (built once, cached)
      demo_examples=2000,  # scenes in the synthetic data set (demo)
      format="llava",  # reader for train/val files (tinyrs_jax.data.readers)
      train="",  # training file (JSON/JSONL); for demo: DIR/<stage>/train.jsonl is used
      val="",  # validation file; "" = no evaluation
      image_root="",  # images are relative to this folder ("" = the file's folder)
      tokenizer_dir="",  # "" = from init.hf_dir / init.workdir
      min_pixels=512 * 28 * 28,
      max_pixels=1280 * 28 * 28,
      max_length=2048,  # longer examples are skipped (counted)
      length_buckets=(),  # () = tinyrs_jax.models.batch.DEFAULT_LENGTH_BUCKETS
      patch_buckets=(),  # () = tinyrs_jax.models.batch.DEFAULT_PATCH_BUCKETS
      length=64,  # data.source=random only: sequence length
      num_workers=0,  # grain worker processes (0 = in the main process)
      read_threads=1,  # threads computing batches (per process)
  ))

  c.batch_size = 128  # global, per optimizer step
  c.grad_accum_steps = 1  # microbatch = batch_size / grad_accum_steps
  c.num_epochs = 1.0
  c.total_steps = -1  # > 0 overrides num_epochs

  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, max_grad_norm=1.0,
      schedule="cosine", warmup_frac=0.03, warmup_steps=-1, end_lr_frac=0.0, mu_dtype="",
      group_lr=ml_collections.ConfigDict(dict(vision=2e-6, merger=-1.0, llm=-1.0)),  # -1: optim.lr
      freeze="",  # comma-separated groups to freeze: vision, merger, llm
  ))
  c.loss = ml_collections.ConfigDict(dict(name="next_token_ce", chunk_size=256))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: all remaining devices
  # preemption_check_every: several processes agree on a SIGTERM every this many steps (an all-gather waits for
  # the step in flight, so not every step)
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=500, keep=3, async_save=True, preemption_check_every=10))
  # generate_examples > 0: each evaluation also answers that many data.val records greedily and scores them like
  # configs/eval.py (eval/strict/<metric>, eval/tinyrs/<metric>; workdir/eval_predictions/step_<k>.jsonl)
  c.eval = ml_collections.ConfigDict(dict(every_steps=500, num_batches=-1, batch_size=0, at_start=True,
                                          generate_examples=0, generate_max_new_tokens=256))
  c.log_every_steps = 10
  c.peak_tflops = 0.0  # per device, for MFU; 0 = guess from the device kind
  c.export_hf_dir = ""  # write a Hugging Face folder here at the end
  c.export_dtype = "bfloat16"  # the model's compute dtype; a 2B fp32 export is 8.8 GB. "" = the parameters' dtype
  c.distributed = ml_collections.ConfigDict(dict(
      mode="auto", coordinator_address="", num_processes=-1, process_id=-1, initialization_timeout=300))
  c.debug_kill_at_step = -1  # tests: SIGKILL the process after this step
  c.debug_sigterm_at_step = -1  # tests: send SIGTERM (a preemption notice) to the process after this step
  return c


def demo(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The laptop-CPU variant: synthetic data, demo tokenizer, the demo_8m model, fp32 (remat stays "full": on
  XLA:CPU recomputing a layer costs nothing here, 0.263 s a step against 0.272 s without remat for the cot demo's
  step, `python benchmarks/remat.py`, quiet 2-core machine).

  Batch 8 (twice the optimizer updates of batch 16 for the same tokens); the stage files set the
  steps: pretrain 100 (captions teach the vision tower the scenes), instruct 1000 at a gentle lr 5e-4 (at 2e-3
  it overwrites what pretrain learned: classification fell to chance, 0.13, downstream), cot 600. What each
  stage's checkpoint answers (greedy, test split): launch/demo.sh's table, docs/demo.md."""
  c.init.allow_random = True
  c.model.preset = "demo_8m"
  c.model.dtype = "float32"
  c.data.demo = True
  c.data.min_pixels = 56 * 56
  c.data.max_pixels = 112 * 112
  c.data.max_length = 256
  c.data.length_buckets = (64, 96, 128, 160, 192, 256)  # tight buckets: little padding, a few compilations
  c.loss.chunk_size = 128
  c.batch_size = 8
  c.total_steps = 100
  c.optim.lr = 2e-3
  c.optim.group_lr.vision = -1.0
  c.optim.warmup_frac = 0.05
  c.checkpoint.every_steps = 100
  c.checkpoint.keep = 2
  c.eval.every_steps = 100
  c.eval.num_batches = 8  # 64 held-out rows, as with batch 16 x 4 before
  c.log_every_steps = 10
  c.export_dtype = ""  # fp32, as trained: exports compare exactly in tests
  return c
