"""Shared pieces of the benchmarks: the same random weights in our model and in transformers', timing."""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np


def setup_threads():
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def our_and_hf_models(preset: str, seed: int = 0, dtype: str = "float32"):
  """Our model with random weights, and transformers' model loaded from our export of the same weights."""
  import jax
  import torch
  from flax import nnx
  from transformers import Qwen2VLForConditionalGeneration

  import tinyrs_jax
  from tinyrs_jax.models import Qwen2VL, get_preset
  model = Qwen2VL(get_preset(preset), dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(seed))
  with tempfile.TemporaryDirectory() as d:
    tinyrs_jax.save_hf(model, d)
    hf = Qwen2VLForConditionalGeneration.from_pretrained(d, dtype=getattr(torch, dtype)).eval()
  jax.block_until_ready(nnx.state(model))
  return model, hf


def our_train_steps(model, inp, answer_tokens: int, remats, chunk_size: int = 64):
  """The trainer's own train step (AdamW, one device, donated state) on `inp` as one static batch, the loss on the
  last `answer_tokens` of every row; weights from `model`. Yields (remat policy, run, step): run() takes one step
  and returns its metrics, step is the CompiledStep (its cache holds the compiled program)."""
  import jax
  import ml_collections
  from flax import nnx

  from tinyrs_jax import sharding as sharding_lib
  from tinyrs_jax.models import batch as batch_lib
  from tinyrs_jax.train import input as input_lib
  from tinyrs_jax.train import losses
  from tinyrs_jax.train import optimizer as optim_lib
  from tinyrs_jax.train import state as state_lib
  b, length = inp["input_ids"].shape
  static = batch_lib.pad_hf_inputs(inp["input_ids"], inp["attention_mask"], inp["pixel_values"],
                                   inp["image_grid_thw"], length_buckets=(length,))
  static.pop("length")
  static["loss_mask"] = np.zeros((b, length), np.int32)
  static["loss_mask"][:, length - answer_tokens:] = 1
  optim = ml_collections.ConfigDict(dict(name="adamw", lr=1e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1,
                                         max_grad_norm=1.0, schedule="constant", warmup_steps=0, freeze=""))
  mesh = sharding_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  loss_fn = lambda m, bt, r: losses.next_token_ce(m, bt, r, chunk_size=chunk_size)  # noqa: E731
  for remat in remats:
    smodel = state_lib.make_model(model.cfg, remat_policy=remat)
    opt = optim_lib.make_optimizer(optim, smodel.abstract_params, total_steps=1000)
    sh = state_lib.state_shardings(smodel, opt, mesh)
    params = jax.device_put(jax.tree.map(np.array, nnx.state(model, nnx.Param).to_pure_dict()), sh.params)
    holder = {"state": state_lib.state_from_params(params, opt, sh, seed=0)}
    step = state_lib.CompiledStep(state_lib.make_train_step(smodel, opt, loss_fn), mesh, sh, donate=True)
    gb = input_lib.to_global(static, state_lib.batch_shardings(mesh, static))

    def run(holder=holder, step=step, gb=gb):
      holder["state"], m = step(holder["state"], gb)
      return jax.block_until_ready(m)
    yield remat, run, step


def time_fn(fn, *, warmup: int = 2, iters: int = 5) -> float:
  """Median seconds per call after warm-up (compilation excluded)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def prompt_batch(cfg, batch: int, image_size: int, text_tokens: int, seed: int = 0):
  """A processor-like batch: each row has one image_size² image and text_tokens random text tokens."""
  rng = np.random.default_rng(seed)
  grid = image_size // 14
  n_img = grid * grid // 4
  rows = []
  for _ in range(batch):
    text = rng.integers(3, min(cfg.text.vocab_size, cfg.image_token_id) - 8, text_tokens)
    rows.append([cfg.vision_start_token_id] + [cfg.image_token_id] * n_img + [cfg.vision_end_token_id] + list(text))
  ids = np.array(rows, np.int64)
  pv = rng.standard_normal((batch * grid * grid, cfg.vision.patch_dim)).astype(np.float32)
  thw = np.array([[1, grid, grid]] * batch, np.int64)
  return dict(input_ids=ids, attention_mask=np.ones_like(ids), pixel_values=pv, image_grid_thw=thw,
              mm_token_type_ids=(ids == cfg.image_token_id).astype(np.int64))
