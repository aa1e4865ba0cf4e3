"""Our own checkpoints: an orbax CheckpointManager under `<workdir>/checkpoints`, one step folder each.

Layout of a workdir:
  tinyrs_model.json          the model config (HF config.json form) and the tokenizer folder: marks "ours"
  tokenizer/                 the tokenizer files and the preprocessor_config.json (pixel limits) trained with
  checkpoints/<step>/params  the model parameters (nnx.Param state, pure dict) — what `tinyrs_jax.load` reads
  checkpoints/<step>/opt_state, .../meta, .../data   optimizer state; step and RNG; data-iterator state (trainers)
"""
from __future__ import annotations

import contextlib
import json
import os

import jax
from absl import logging
from flax import nnx

# The marker and the tokenizer copy live in sidecar (HF exports share them); importable from here as before.
from tinyrs_jax.checkpoint.sidecar import (MARKER, TOKENIZER_DIR, find_checkpoint, is_our_checkpoint,  # noqa: F401
                                           read_marker, save_tokenizer, tokenizer_path, write_marker)
from tinyrs_jax.checkpoint import sidecar


def _ocp():
  import orbax.checkpoint as ocp  # imported on first use: `import tinyrs_jax` and HF-only loads skip it
  return ocp


def checkpoint_manager(workdir: str, *, max_to_keep: int | None = 3, save_interval_steps: int = 1,
                       async_save: bool = True):
  ocp = _ocp()
  opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
                                      enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), sidecar.CHECKPOINTS_DIR), options=opts)


@contextlib.contextmanager
def _manager(workdir: str):
  """A synchronous manager over the workdir's checkpoints, closed on exit (reads; one-off saves)."""
  mngr = checkpoint_manager(workdir, async_save=False)
  try:
    yield mngr
  finally:
    mngr.close()


def restore_items(mngr, step: int | None, abstract: dict, *, with_data: bool = False) -> tuple[int, dict]:
  """The one restore path: (step, {item: restored}) of checkpoint `step` (None: the latest).

  `abstract` maps item names (params, opt_state, meta) to trees of jax.ShapeDtypeStruct with shardings, which
  the restored arrays take; with_data adds the "data" item (this process's data-iterator state) when the step
  holds one.
  """
  ocp = _ocp()
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{mngr.directory}: no checkpoint steps to restore")
  items = {name: ocp.args.StandardRestore(tree) for name, tree in abstract.items()}
  if with_data and os.path.isdir(os.path.join(str(mngr.directory), str(step), "data")):
    _, restore_json = _process_json_args()
    items["data"] = restore_json()
  return step, dict(mngr.restore(step, args=ocp.args.Composite(**items)).items())


def restore_params_pure(workdir: str, step: int | None, abstract_params):
  """Restores the 'params' item as a pure dict into `abstract_params` (ShapeDtypeStructs with shardings)."""
  with _manager(workdir) as mngr:
    return restore_items(mngr, step, {"params": abstract_params})[1]["params"]


def restore_params(workdir: str, step: int | None, abstract_params: nnx.State) -> nnx.State:
  """Restores the 'params' item into the given abstract state (shapes, dtypes and shardings)."""
  pure = restore_params_pure(workdir, step, jax.tree.map(_abstract, abstract_params.to_pure_dict()))
  nnx.replace_by_pure_dict(abstract_params, pure)
  return abstract_params


def _abstract(x):
  sharding = getattr(x, "sharding", None)
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def load_model(path: str, dtype="float32", param_dtype=None, mesh=None):
  """A Qwen2VL from one of our workdirs (or a checkpoints/<step> folder).

  With `mesh`, every parameter is restored straight into its sharding on that mesh (its logical axis names
  through the sharding rules): each device reads only its shard, nothing lands on device 0 first. Without a
  mesh, the parameters go to the default device (one-device use)."""
  from tinyrs_jax import sharding as sharding_lib
  from tinyrs_jax.models.qwen2_vl import Qwen2VL, as_dtype
  workdir, step = find_checkpoint(path)
  marker = read_marker(workdir)
  cfg = sidecar.marker_config(workdir, marker)
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


def save_train_state(mngr, state, data_state: dict | None = None, *, force: bool = False,
                     step: int | None = None) -> bool:
  """Saves a TrainState (anything with step/params/opt_state/rng) as checkpoint number `step` (default: its
  step); returns whether it saved."""
  ocp = _ocp()
  save_json, _ = _process_json_args()
  step = int(jax.device_get(state.step)) if step is None else int(step)
  items = dict(params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
               meta=ocp.args.StandardSave({"step": state.step, "rng": state.rng}))
  if data_state is not None:
    items["data"] = save_json(state=data_state)
  return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore_train_state(mngr, abstract_state, step: int | None = None, *, with_data: bool = True):
  """(state, data_state or None) from the latest (or given) step, into abstract_state's shardings.

  `abstract_state` is a TrainState of jax.ShapeDtypeStruct with shardings; returns the same type.
  """
  step, r = restore_items(mngr, step, dict(params=abstract_state.params, opt_state=abstract_state.opt_state,
                                           meta={"step": abstract_state.step, "rng": abstract_state.rng}),
                          with_data=with_data)
  state = abstract_state.replace(step=r["meta"]["step"], params=r["params"], opt_state=r["opt_state"],
                                 rng=r["meta"]["rng"])
  return state, r.get("data")


def latest_step(workdir: str) -> int | None:
  """The latest finalized checkpoint step of a workdir (None when there is none)."""
  if not os.path.isdir(os.path.join(workdir, sidecar.CHECKPOINTS_DIR)):
    return None
  with _manager(workdir) as mngr:
    return mngr.latest_step()
