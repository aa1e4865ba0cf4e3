"""tinyrs_jax: TinyRS-R1 (Qwen2-VL-2B for remote sensing) in JAX / Flax NNX.

Public API: `load`, `save_hf`, `generate`. Imported lazily so `import tinyrs_jax` stays cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"


def load(path, dtype="float32", **kw):
  """A Qwen2VL model from a Hugging Face Qwen2-VL folder or a checkpoint our trainers wrote."""
  from tinyrs_jax.checkpoint.load import load as _load
  return _load(path, dtype=dtype, **kw)


def save_hf(model, out_dir, dtype=None, **kw):
  """Writes a folder transformers' Qwen2VLForConditionalGeneration.from_pretrained loads."""
  from tinyrs_jax.checkpoint.hf import save_hf as _save
  return _save(model, out_dir, dtype=dtype, **kw)


def generate(model, batch, **kw):
  """Batched sampling with a static KV cache; see tinyrs_jax.sampling.generate."""
  from tinyrs_jax.sampling.generate import generate as _generate
  return _generate(model, batch, **kw)
