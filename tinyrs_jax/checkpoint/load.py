"""`tinyrs_jax.load`: a model from whatever the path is — a Hugging Face Qwen2-VL folder, or one of our
workdirs (or one of its checkpoints/<step> folders) that the trainers and tools/convert write.

Above both formats (hf, orbax_io), which know nothing of each other: the marker file (sidecar) tells them apart.
"""
from __future__ import annotations

from tinyrs_jax.checkpoint import hf, orbax_io, sidecar


def load(path: str, dtype="float32", param_dtype=None, remat_policy="none"):
  """A Qwen2VL from an HF folder or a workdir / checkpoint step of ours (remat_policy applies to HF folders)."""
  if sidecar.is_our_checkpoint(path):
    return orbax_io.load_model(path, dtype=dtype, param_dtype=param_dtype)
  return hf.load_model(path, dtype=dtype, param_dtype=param_dtype, remat_policy=remat_policy)
