"""Our own checkpoints: an orbax CheckpointManager under `<workdir>/checkpoints`, one step folder each.

Layout of a workdir:
  tinyrs_model.json          the model config (HF config.json form) and the tokenizer folder: marks "ours"
  tokenizer/                 the tokenizer files and the preprocessor_config.json (pixel limits) trained with
  checkpoints/<step>/params  the model parameters (nnx.Param state, pure dict) — what `tinyrs_jax.load` reads
  checkpoints/<step>/opt_state, .../meta, .../data   optimizer state; step and RNG; data-iterator state (trainers)
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

MARKER = "tinyrs_model.json"
TOKENIZER_DIR = "tokenizer"  # inside the workdir, so the tokenizer moves with it


def save_tokenizer(workdir: str, src_dir: str, image_cfg=None) -> str:
  """Copies the tokenizer / processor files of `src_dir` into <workdir>/tokenizer; `image_cfg` (an
  ImageProcessorConfig: the limits trained with) replaces the source's preprocessor_config.json. Returns the
  folder relative to the workdir, as the marker records it."""
  from tinyrs_jax.checkpoint.hf import SIDE_FILES
  dst = os.path.join(workdir, TOKENIZER_DIR)
  os.makedirs(dst, exist_ok=True)
  if os.path.realpath(src_dir) != os.path.realpath(dst):
    for name in SIDE_FILES:
      src, out = os.path.join(src_dir, name), os.path.join(dst, name)
      if os.path.exists(src):
        shutil.copyfile(src, out)
      elif os.path.exists(out):
        os.remove(out)  # left from an earlier tokenizer
  if image_cfg is not None:
    image_cfg.save(dst)
  return TOKENIZER_DIR


def tokenizer_path(workdir: str, marker: dict) -> str | None:
  """The marker's tokenizer folder as a path: relative to the workdir (older markers hold absolute paths)."""
  t = marker.get("tokenizer_dir")
  return os.path.join(os.path.abspath(workdir), t) if t else None


def write_marker(workdir: str, model_cfg, tokenizer_dir: str | None = None, extra: dict | None = None):
  from tinyrs_jax.models import presets
  os.makedirs(workdir, exist_ok=True)
  payload = {"format": "tinyrs_jax", "config": presets.to_hf_dict(model_cfg), "tokenizer_dir": tokenizer_dir,
             **(extra or {})}
  tmp = os.path.join(workdir, MARKER + ".tmp")
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2)
  os.replace(tmp, os.path.join(workdir, MARKER))


def _find(path: str) -> tuple[str, int | None] | None:
  """(workdir, step or None for the latest) when `path` is a workdir or one of its step folders."""
  path = os.path.abspath(path)
  if os.path.exists(os.path.join(path, MARKER)):
    return path, None
  parent = os.path.dirname(path)
  if os.path.basename(parent) == "checkpoints" and os.path.exists(os.path.join(os.path.dirname(parent), MARKER)):
    return os.path.dirname(parent), int(os.path.basename(path))
  return None


def is_our_checkpoint(path: str) -> bool:
  return _find(path) is not None


def read_marker(workdir: str) -> dict:
  with open(os.path.join(workdir, MARKER)) as f:
    return json.load(f)


def checkpoint_manager(workdir: str, *, max_to_keep: int | None = 3, save_interval_steps: int = 1,
                       async_save: bool = True):
  import orbax.checkpoint as ocp
  opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
                                      enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=opts)


def restore_params(workdir: str, step: int | None, abstract_params: nnx.State) -> nnx.State:
  """Restores the 'params' item into the given abstract state (shapes, dtypes and shardings)."""
  import orbax.checkpoint as ocp
  mngr = checkpoint_manager(workdir, async_save=False)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{workdir}: no checkpoint steps under checkpoints/")
  target = jax.tree.map(_abstract, abstract_params.to_pure_dict())
  restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
  mngr.close()
  state = abstract_params
  nnx.replace_by_pure_dict(state, restored["params"])
  return state


def restore_params_pure(workdir: str, step: int | None, abstract_params):
  """Restores the 'params' item as a pure dict into `abstract_params` (ShapeDtypeStructs with shardings)."""
  import orbax.checkpoint as ocp
  mngr = checkpoint_manager(workdir, async_save=False)
  try:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{workdir}: no checkpoint steps under checkpoints/")
    restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
  finally:
    mngr.close()
  return restored["params"]


def _abstract(x):
  sharding = getattr(x, "sharding", None)
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def load_model(path: str, dtype="float32", param_dtype=None, mesh=None):
  """A Qwen2VL from one of our workdirs (or a checkpoints/<step> folder).

  With `mesh`, every parameter is restored straight into its sharding on that mesh (its logical axis names
  through the sharding rules): each device reads only its shard, nothing lands on device 0 first. Without a
  mesh, the parameters go to the default device (one-device use)."""
  from tinyrs_jax import sharding as sharding_lib
  from tinyrs_jax.models import presets
  from tinyrs_jax.models.qwen2_vl import Qwen2VL, as_dtype
  workdir, step = _find(path)
  marker = read_marker(workdir)
  cfg = presets.from_hf_dict(marker["config"], source=os.path.join(workdir, MARKER))
  param_dtype = as_dtype(param_dtype or dtype)
  abstract = nnx.eval_shape(lambda: Qwen2VL(cfg, dtype=dtype, param_dtype=param_dtype))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  if mesh is not None:
    shardings = sharding_lib.state_shardings(params, mesh)
    params = jax.tree.map(lambda v, s: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s.get_value())),
                          params, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
  else:
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=one), params)
  params = restore_params(workdir, step, params)
  params = jax.tree.map(lambda x: x if x.dtype == param_dtype else x.astype(param_dtype), params)
  model = nnx.merge(graphdef, params, rest)
  model.source_dir = tokenizer_path(workdir, marker)  # save_hf and tools.predict take the tokenizer from here
  return model


# ------------------------------------------------------------------------------------- train states
#
# A trainer's checkpoint step holds four items:
#   params     the model parameters (pure dict; what `tinyrs_jax.load` and a later stage's init read)
#   opt_state  the optimizer state (over the trainable parameters)
#   meta       {"step", "rng"} as arrays
#   data       this process's data-iterator state, one JSON file per process (process_<i>-of-<n>.json); a
#              restore under another process count reads process 0's (the state is a global batch index)


def _ocp():
  import orbax.checkpoint as ocp
  return ocp


class ProcessJsonHandler:
  """Orbax handler for a small JSON-able dict per process (data-iterator states): every process writes its own."""

  def save(self, directory, args=None):
    import jax as _jax
    path = os.path.join(str(directory), f"process_{_jax.process_index()}-of-{_jax.process_count()}.json")
    with open(path, "w") as f:
      json.dump(args.state, f)

  def restore(self, directory, args=None):
    import jax as _jax
    path = os.path.join(str(directory), f"process_{_jax.process_index()}-of-{_jax.process_count()}.json")
    if not os.path.exists(path):
      path = _other_process_file(str(directory), path)
    with open(path) as f:
      return json.load(f)

  def metadata(self, directory):
    return None

  def structure(self, directory):
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass

  @classmethod
  def typestr(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _other_process_file(directory: str, wanted: str) -> str:
  """Process 0's file of a save by another process count: the iterator state is the next global batch (the
  same on every process), its skip counts start from process 0's."""
  found = sorted(f for f in (os.listdir(directory) if os.path.isdir(directory) else [])
                 if f.startswith("process_") and f.endswith(".json"))
  if not found:
    raise FileNotFoundError(f"{wanted} not found and no other process's data state in {directory}")
  first = next((f for f in found if f.startswith("process_0-of-")), found[0])
  logging.warning("data state: no %s (saved by another process count: %s); continuing from %s",
                  os.path.basename(wanted), found, first)
  return os.path.join(directory, first)


def _register_process_json():
  import dataclasses as _dc
  ocp = _ocp()

  @ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
  @_dc.dataclass
  class ProcessJsonSave(ocp.args.CheckpointArgs):
    state: dict

  @ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
  @_dc.dataclass
  class ProcessJsonRestore(ocp.args.CheckpointArgs):
    pass

  return ProcessJsonSave, ProcessJsonRestore


_PROCESS_JSON = None


def _process_json_args():
  global _PROCESS_JSON
  if _PROCESS_JSON is None:
    _PROCESS_JSON = _register_process_json()
  return _PROCESS_JSON


def save_train_state(mngr, state, data_state: dict | None = None, *, force: bool = False) -> bool:
  """Saves a TrainState (anything with step/params/opt_state/rng) at its step; returns whether it saved."""
  ocp = _ocp()
  save_json, _ = _process_json_args()
  step = int(jax.device_get(state.step))
  items = dict(params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
               meta=ocp.args.StandardSave({"step": state.step, "rng": state.rng}))
  if data_state is not None:
    items["data"] = save_json(state=data_state)
  return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore_train_state(mngr, abstract_state, step: int | None = None, *, with_data: bool = True):
  """(state, data_state or None) from the latest (or given) step, into abstract_state's shardings.

  `abstract_state` is a TrainState of jax.ShapeDtypeStruct with shardings; returns the same type.
  """
  ocp = _ocp()
  _, restore_json = _process_json_args()
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{mngr.directory}: no checkpoint to restore")
  items = dict(params=ocp.args.StandardRestore(abstract_state.params),
               opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
               meta=ocp.args.StandardRestore({"step": abstract_state.step, "rng": abstract_state.rng}))
  has_data = with_data and os.path.isdir(os.path.join(str(mngr.directory), str(step), "data"))
  if has_data:
    items["data"] = restore_json()
  r = mngr.restore(step, args=ocp.args.Composite(**items))
  state = abstract_state.replace(step=r["meta"]["step"], params=r["params"], opt_state=r["opt_state"],
                                 rng=r["meta"]["rng"])
  return state, (r["data"] if has_data else None)


def latest_step(workdir: str) -> int | None:
  """The latest finalized checkpoint step of a workdir (None when there is none)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  mngr = checkpoint_manager(workdir, async_save=False)
  try:
    return mngr.latest_step()
  finally:
    mngr.close()
