"""Hugging Face Qwen2-VL folders ⇄ our parameters, without torch and without transformers' config classes.

Loading streams tensor by tensor from one or several safetensors files (index.json), straight into arrays of
the target dtype: peak host memory is one copy of the model in that dtype plus one tensor. Saving writes the
key set and layout transformers' own `save_pretrained` writes (hub names, no lm_head when tied), sharded above
`max_shard_bytes`, and copies tokenizer / preprocessor / generation files from the source folder.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from tinyrs_jax.checkpoint import sidecar
from tinyrs_jax.models import presets
from tinyrs_jax.models.qwen2_vl import Qwen2VL, as_dtype

NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class CheckpointMismatch(ValueError):
  """A checkpoint whose keys or shapes do not fit the model its config.json describes."""


# ---------------------------------------------------------------------------------------------- the table

@dataclasses.dataclass(frozen=True)
class Entry:
  ours: tuple[str, ...]  # path in nnx.state(model)
  hf: str  # HF key; "{i}" for stacked layers
  kind: str  # how the HF tensor maps to ours: linear (transpose), copy, patch (conv -> matrix)
  stacked: bool = False


def _linear(ours, hf, bias=True):
  out = [Entry(ours + ("kernel",), hf + ".weight", "linear", "{i}" in hf)]
  if bias:
    out.append(Entry(ours + ("bias",), hf + ".bias", "copy", "{i}" in hf))
  return out


def _norm(ours, hf, bias):
  out = [Entry(ours + ("scale",), hf + ".weight", "copy", "{i}" in hf)]
  if bias:
    out.append(Entry(ours + ("bias",), hf + ".bias", "copy", "{i}" in hf))
  return out


def param_table(cfg: presets.Qwen2VLConfig) -> list[Entry]:
  """Every parameter of the model with its HF key: the one source of truth for conversion both ways."""
  vb, dl = ("visual", "blocks"), ("decoder", "layers")
  t = [Entry(("visual", "patch_embed"), "visual.patch_embed.proj.weight", "patch")]
  t += _norm(vb + ("norm1",), "visual.blocks.{i}.norm1", True)
  t += _norm(vb + ("norm2",), "visual.blocks.{i}.norm2", True)
  t += _linear(vb + ("qkv",), "visual.blocks.{i}.attn.qkv")
  t += _linear(vb + ("proj",), "visual.blocks.{i}.attn.proj")
  t += _linear(vb + ("fc1",), "visual.blocks.{i}.mlp.fc1")
  t += _linear(vb + ("fc2",), "visual.blocks.{i}.mlp.fc2")
  t += _norm(("visual", "merger", "ln_q"), "visual.merger.ln_q", True)
  t += _linear(("visual", "merger", "fc1"), "visual.merger.mlp.0")
  t += _linear(("visual", "merger", "fc2"), "visual.merger.mlp.2")
  t += [Entry(("embed_tokens",), "model.embed_tokens.weight", "copy")]
  t += _norm(dl + ("input_norm",), "model.layers.{i}.input_layernorm", False)
  t += _norm(dl + ("post_attention_norm",), "model.layers.{i}.post_attention_layernorm", False)
  for p in ("q", "k", "v"):
    t += _linear(dl + (f"{p}_proj",), f"model.layers.{{i}}.self_attn.{p}_proj")
  t += _linear(dl + ("o_proj",), "model.layers.{i}.self_attn.o_proj", bias=False)
  for p in ("gate", "up", "down"):
    t += _linear(dl + (f"{p}_proj",), f"model.layers.{{i}}.mlp.{p}_proj", bias=False)
  t += _norm(("decoder", "norm"), "model.norm", False)
  if not cfg.text.tie_word_embeddings:
    t += [Entry(("lm_head",), "lm_head.weight", "linear")]
  return t


def _num_layers(cfg, entry: Entry) -> int:
  return cfg.vision.depth if entry.hf.startswith("visual.") else cfg.text.num_hidden_layers


def _to_ours(kind: str, x: np.ndarray) -> np.ndarray:
  if kind == "linear":
    return x.T
  if kind == "patch":
    return x.reshape(x.shape[0], -1).T
  return x


def _to_hf(kind: str, x: np.ndarray, hf_shape_of_patch=None) -> np.ndarray:
  if kind == "linear":
    return np.ascontiguousarray(x.T)
  if kind == "patch":
    return np.ascontiguousarray(x.T.reshape(hf_shape_of_patch))
  return x


def _normalize_key(k: str) -> str:
  """Accepts transformers 5's in-memory names too (model.language_model.*, model.visual.*)."""
  if k.startswith("model.language_model."):
    return "model." + k[len("model.language_model."):]
  if k.startswith("model.visual."):
    return k[len("model."):]
  return k


# ---------------------------------------------------------------------------------------------- reading

class SafetensorsFolder:
  """Random access to the tensors of one or several safetensors files in a folder.

  Each read opens its file and closes it again: keeping the memory maps open would keep every page read so
  far mapped into the process, doubling its footprint by the end of a 2B load.
  """

  def __init__(self, path: str):
    from safetensors import safe_open
    self._open = safe_open
    self.path = path
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
      if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors files (and no model.safetensors.index.json)")
    self.where: dict[str, tuple[str, str]] = {}  # normalized key -> (file, raw key)
    self.shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
      with safe_open(os.path.join(path, f), framework="np") as h:
        for k in h.keys():
          self.where[_normalize_key(k)] = (f, k)
          self.shapes[_normalize_key(k)] = tuple(h.get_slice(k).get_shape())

  def shape(self, key: str) -> tuple[int, ...]:
    return self.shapes[key]

  def get(self, key: str) -> np.ndarray:
    f, raw = self.where[key]
    with self._open(os.path.join(self.path, f), framework="np") as h:
      return h.get_tensor(raw)  # numpy's view of a bytes copy: independent of the (now closed) map


def read_config(path: str) -> presets.Qwen2VLConfig:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face Qwen2-VL folder)")
  with open(cfg_path) as f:
    return presets.from_hf_dict(json.load(f), source=cfg_path)


def _expected_hf_shape(entry: Entry, our_shape: tuple[int, ...], cfg) -> tuple[int, ...]:
  shape = our_shape[1:] if entry.stacked else our_shape
  if entry.kind == "linear":
    return tuple(reversed(shape))
  if entry.kind == "patch":
    v = cfg.vision
    return (shape[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
  return tuple(shape)


def load_hf_params(path: str, model_abstract: nnx.Module, cfg, dtype, host: bool = False) -> nnx.State:
  """Fills the abstract model's state from the folder, checking every key and shape.

  host=True keeps NumPy arrays, for a trainer that places each one straight into its sharding (nothing
  unsharded ever lands on one device); otherwise each tensor becomes a jax array as soon as it is filled.
  """
  folder = SafetensorsFolder(path)
  _, state = nnx.split(model_abstract)
  flat = dict(nnx.to_flat_state(state))
  table = param_table(cfg)
  expected_keys = set()
  problems = []
  np_dtype = np.dtype(jnp.dtype(dtype))
  for e in table:
    var = flat.get(e.ours)
    if var is None:
      raise RuntimeError(f"internal: parameter {'.'.join(e.ours)} missing from the model")
    our_shape = tuple(var.get_value().shape)
    hf_shape = _expected_hf_shape(e, our_shape, cfg)
    keys = [e.hf.format(i=i) for i in range(_num_layers(cfg, e))] if e.stacked else [e.hf]
    expected_keys.update(keys)
    out = np.empty(our_shape, np_dtype) if e.stacked else None
    for i, k in enumerate(keys):
      if k not in folder.where:
        problems.append(f"missing key {k} (expected shape {hf_shape})")
        continue
      got = folder.shape(k)
      if got != hf_shape:
        problems.append(f"key {k}: checkpoint shape {got} != model shape {hf_shape}")
        continue
      x = _to_ours(e.kind, folder.get(k))
      if e.stacked:
        out[i] = x  # casts on assignment: no intermediate copy
      else:
        out = np.asarray(x, np_dtype)
      del x
    if out is not None:  # hand each tensor over as it is filled: one copy of the model at a time
      var.set_value(out if host else jnp.asarray(out))
    del out
  extra = sorted(set(folder.where) - expected_keys)
  if cfg.text.tie_word_embeddings:
    extra = [k for k in extra if k != "lm_head.weight"]  # some tied exports still carry the copy
  if extra:
    problems.append(f"unexpected keys: {extra[:10]}{' …' if len(extra) > 10 else ''}")
  if problems:
    raise CheckpointMismatch(f"{path} does not match its config.json:\n  " + "\n  ".join(problems))
  return nnx.from_flat_state(flat)


def load_model(path: str, dtype="float32", param_dtype=None, remat_policy="none") -> Qwen2VL:
  """A Qwen2VL from a Hugging Face Qwen2-VL folder (`tinyrs_jax.load` also takes our workdirs: checkpoint.load)."""
  cfg = read_config(path)
  param_dtype = as_dtype(param_dtype or dtype)
  abstract = nnx.eval_shape(lambda: Qwen2VL(cfg, dtype=dtype, param_dtype=param_dtype,
                                            remat_policy=remat_policy))
  graphdef, _ = nnx.split(abstract)
  state = load_hf_params(path, abstract, cfg, param_dtype)
  model = nnx.merge(graphdef, state)
  model.source_dir = path  # tokenizer / processor files travel with exports
  return model


# ---------------------------------------------------------------------------------------------- writing

def hf_tensors(model: Qwen2VL, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
  """(HF key, tensor) pairs of the model, in the HF layout, one at a time."""
  cfg = model.cfg
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  v = cfg.vision
  for e in param_table(cfg):
    arr = np.asarray(jax.device_get(flat[e.ours].get_value()))
    if dtype is not None:
      arr = arr.astype(NP_DTYPES[dtype])
    patch_shape = (v.embed_dim, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    if e.stacked:
      for i in range(arr.shape[0]):
        yield e.hf.format(i=i), _to_hf(e.kind, arr[i], patch_shape)
    else:
      yield e.hf, _to_hf(e.kind, arr, patch_shape)


def _dtype_name(model: Qwen2VL) -> str:
  leaf = jax.tree.leaves(nnx.state(model, nnx.Param))[0]
  return {np.dtype(np.float32): "float32", np.dtype(ml_dtypes.bfloat16): "bfloat16",
          np.dtype(np.float16): "float16"}[np.dtype(leaf.dtype)]


def save_hf(model: Qwen2VL, out_dir: str, dtype: str | None = None, source_dir: str | None = None,
            max_shard_bytes: int = 5 * 1024 ** 3) -> str:
  """Writes config.json + safetensors (sharded above max_shard_bytes) in transformers' own layout."""
  from safetensors.numpy import save_file
  dtype = dtype or _dtype_name(model)
  if dtype not in NP_DTYPES:
    raise ValueError(f"dtype {dtype!r} not one of {sorted(NP_DTYPES)}")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(presets.to_hf_dict(model.cfg, dtype), f, indent=2)
  # Each shard is written as soon as it is full (host memory: one shard, not the model), under a temporary
  # name; the final names need the shard count, known only at the end.
  meta = {"format": "pt"}
  shard: dict[str, np.ndarray] = {}
  written: list[tuple[str, list[str]]] = []
  size = total = 0

  def flush():
    nonlocal shard, size
    tmp = os.path.join(out_dir, f".shard-{len(written):05d}.safetensors.tmp")
    save_file(shard, tmp, metadata=meta)
    written.append((tmp, list(shard)))
    shard, size = {}, 0

  for key, arr in hf_tensors(model, dtype):
    if shard and size + arr.nbytes > max_shard_bytes:
      flush()
    shard[key] = arr
    size += arr.nbytes
    total += arr.nbytes
  flush()
  if len(written) == 1:
    os.replace(written[0][0], os.path.join(out_dir, "model.safetensors"))
  else:
    weight_map = {}
    for n, (tmp, keys) in enumerate(written):
      name = f"model-{n + 1:05d}-of-{len(written):05d}.safetensors"
      os.replace(tmp, os.path.join(out_dir, name))
      weight_map.update({k: name for k in keys})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
  source_dir = source_dir or getattr(model, "source_dir", None)
  if source_dir:
    sidecar.copy_side_files(source_dir, out_dir)
  return out_dir
