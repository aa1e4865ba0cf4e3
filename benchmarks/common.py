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
