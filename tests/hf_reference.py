"""Tiny random Hugging Face Qwen2-VL checkpoints, built in the tests (the numerical reference).

Weights are drawn with initializer_range 0.2 and biases / norm weights randomised too: HF's defaults (zero
biases, unit norms) would hide mistakes there.
"""
from __future__ import annotations

import numpy as np

TINY_TEXT = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                 rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                 bos_token_id=None, eos_token_id=2, pad_token_id=0)
TINY_VISION = dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=4, hidden_size=64, in_channels=3, patch_size=14,
                   temporal_patch_size=2, spatial_merge_size=2)
TINY_IDS = dict(image_token_id=250, video_token_id=251, vision_start_token_id=248, vision_end_token_id=249)


def build_hf_model(seed: int = 0, tie: bool = True, text=None, vision=None, ids=None, attn="eager"):
  import torch
  from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
  cfg = Qwen2VLConfig(text_config={**TINY_TEXT, **(text or {})}, vision_config={**TINY_VISION, **(vision or {})},
                      **{**TINY_IDS, **(ids or {})}, tie_word_embeddings=tie, initializer_range=0.2)
  cfg._attn_implementation = attn
  torch.manual_seed(seed)
  model = Qwen2VLForConditionalGeneration(cfg).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.copy_(0.2 * torch.randn(p.shape, generator=g))
      elif "norm" in name or "ln_q" in name:
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
      else:
        p.copy_(0.2 * torch.randn(p.shape, generator=g))
  return model


def save_hf_model(model, path, dtype=None, max_shard_size=None):
  import torch
  if dtype is not None:
    model = model.to(getattr(torch, dtype))
  kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(path, **kw)
  return path


def random_image_batch(rng: np.random.Generator, grids, texts_before, texts_after, image_rows, image_token_id=250,
                       vision_start=248, vision_end=249, pad_id=0, padding_side="left", vocab=240):
  """Builds input_ids/attention_mask/pixel_values/image_grid_thw/mm_token_type_ids like the HF processor.

  image_rows[b] lists the image indices (into grids) in row b; text tokens are random ids < vocab.
  """
  rows = []
  for b, imgs in enumerate(image_rows):
    ids = list(rng.integers(3, vocab, texts_before[b]))
    for j in imgs:
      t, h, w = grids[j]
      ids += [vision_start] + [image_token_id] * (t * h * w // 4) + [vision_end]
      ids += list(rng.integers(3, vocab, 2))
    ids += list(rng.integers(3, vocab, texts_after[b]))
    rows.append(ids)
  length = max(len(r) for r in rows)
  input_ids = np.full((len(rows), length), pad_id, np.int64)
  mask = np.zeros((len(rows), length), np.int64)
  for b, r in enumerate(rows):
    if padding_side == "left":
      input_ids[b, length - len(r):] = r
      mask[b, length - len(r):] = 1
    else:
      input_ids[b, :len(r)] = r
      mask[b, :len(r)] = 1
  order = [j for imgs in image_rows for j in imgs]
  pixel_values = np.concatenate([rng.standard_normal((int(np.prod(grids[j])), 1176)).astype(np.float32)
                                 for j in order]) if order else None
  grid = np.array([grids[j] for j in order], np.int64) if order else None
  mm = (input_ids == image_token_id).astype(np.int64)
  return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, image_grid_thw=grid,
              mm_token_type_ids=mm)


def hf_forward(model, inputs):
  import torch
  kw = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items() if v is not None}
  model.model.rope_deltas = None
  with torch.no_grad():
    return model(**kw).logits.float().numpy()
