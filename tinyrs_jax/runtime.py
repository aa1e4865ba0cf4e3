"""What every entry point builds before it runs: the mesh from the config, the model (from a preset, a Hugging Face
folder or one of our workdirs) with its parameter shardings, and the parameters restored into them.

Training (train/sft.py, train/grpo_trainer.py through train/runner.py), evaluation (evaluation/evaluator.py) and
the tools import this module; none of it is about training. train/runner.py keeps what only a trainer needs
(the optimizer state, resuming, checkpoints, preemption, export).

  make_mesh(config)                              the (data, fsdp, tensor) mesh of config.mesh
  resolve_model(config, workdir) -> ModelSource  model config + tokenizer folder + where the weights come from
  make_model(cfg, dtype=, ...) -> Model          the static half of the model: graphdef, abstract params, names
  configured_model(config, source) -> Model      make_model with the config's model.* settings
  load_init_params / load_frozen_params          parameters from a workdir or an HF folder, in their shardings
"""
from __future__ import annotations

import dataclasses
import os
import types
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx

from tinyrs_jax import sharding as sharding_lib
from tinyrs_jax.checkpoint import hf, orbax_io, sidecar
from tinyrs_jax.models import presets
from tinyrs_jax.models.presets import Qwen2VLConfig
from tinyrs_jax.models.qwen2_vl import Qwen2VL


# ------------------------------------------------------------------------------------------------- mesh

def make_mesh(config):
  m = config.mesh
  mesh = sharding_lib.make_mesh(int(m.data), int(m.fsdp), int(m.tensor))
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())
  return mesh


# ------------------------------------------------------------------------------------------------ model

@dataclasses.dataclass(frozen=True)
class Model:
  """The static half of the model: config, graphdef, abstract params (ShapeDtypeStructs) and kwargs."""
  cfg: Qwen2VLConfig
  graphdef: Any
  abstract_params: Any  # pure dict of ShapeDtypeStruct
  logical_names: Any  # pure dict of logical axis-name tuples
  kwargs: dict

  def build(self, rng) -> Any:
    """Fresh parameters (pure dict) from an rng; meant to run under jit."""
    model = Qwen2VL(self.cfg, rngs=nnx.Rngs(params=rng), **self.kwargs)
    return nnx.state(model, nnx.Param).to_pure_dict()

  def merge(self, params) -> Qwen2VL:
    return nnx.merge(self.graphdef, params)

  def param_shardings(self, mesh) -> Any:
    return jax.tree.map(lambda names, a: sharding_lib.named_sharding(mesh, names, a.shape),
                        self.logical_names, self.abstract_params, is_leaf=lambda x: isinstance(x, tuple))


def make_model(cfg: Qwen2VLConfig, *, dtype="float32", param_dtype="float32", remat_policy="none") -> Model:
  kwargs = dict(dtype=dtype, param_dtype=param_dtype, remat_policy=remat_policy)
  abstract = nnx.eval_shape(lambda: Qwen2VL(cfg, rngs=nnx.Rngs(0), **kwargs))
  graphdef, params = nnx.split(abstract, nnx.Param)
  flat = nnx.to_flat_state(params)
  names = nnx.from_flat_state([(k, v.replace(tuple(v.get_metadata().get("out_sharding") or ())))
                               for k, v in flat]).to_pure_dict()
  shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), params.to_pure_dict())
  return Model(cfg=cfg, graphdef=graphdef, abstract_params=shapes, logical_names=names, kwargs=kwargs)


@dataclasses.dataclass(frozen=True)
class ModelSource:
  cfg: presets.Qwen2VLConfig
  tokenizer_dir: str | None
  init: str  # "resume", "workdir", "hf" or "random"
  init_path: str | None = None


def _has_tokenizer(path: str | None) -> bool:
  return bool(path) and os.path.exists(os.path.join(path, "tokenizer.json"))


def check_special_ids(cfg: presets.Qwen2VLConfig, tokenizer_dir: str | None, where: str) -> None:
  """presets.check_tokenizer_ids against the tokenizer in `tokenizer_dir` (nothing to check without one)."""
  if not _has_tokenizer(tokenizer_dir):
    return
  from tinyrs_jax.data.tokenizer import Tokenizer
  presets.check_tokenizer_ids(cfg, Tokenizer.from_folder(tokenizer_dir), where, tokenizer_dir)


def resolve_model(config, workdir: str, tokenizer_dir: str | None = None) -> ModelSource:
  """The model config and tokenizer folder: from this workdir when resuming, else from init.workdir's marker,
  init.hf_dir's config.json, or the preset (with the tokenizer's special ids)."""
  init = config.init
  if orbax_io.latest_step(workdir) is not None:
    marker = sidecar.read_marker(workdir)
    cfg = sidecar.marker_config(workdir, marker)
    return ModelSource(cfg, sidecar.tokenizer_path(workdir, marker) or tokenizer_dir, "resume", workdir)
  if init.get("workdir"):
    src = init.workdir
    found = sidecar.find_checkpoint(src)
    if found is None:
      raise FileNotFoundError(f"init.workdir={src!r} is not a tinyrs_jax workdir (no {sidecar.MARKER})")
    src_workdir = found[0]
    marker = sidecar.read_marker(src_workdir)
    cfg = sidecar.marker_config(src_workdir, marker)
    tok = tokenizer_dir or sidecar.tokenizer_path(src_workdir, marker)
    check_special_ids(cfg, tok, os.path.join(src_workdir, sidecar.MARKER))
    return ModelSource(cfg, tok, "workdir", src)
  if init.get("hf_dir"):
    cfg = hf.read_config(init.hf_dir)
    tok = tokenizer_dir or (init.hf_dir if _has_tokenizer(init.hf_dir) else None)
    check_special_ids(cfg, tok, os.path.join(init.hf_dir, "config.json"))
    return ModelSource(cfg, tok, "hf", init.hf_dir)
  if not init.get("allow_random", False):
    raise ValueError("no initial weights: set --config.init.hf_dir=<Hugging Face Qwen2-VL folder> or "
                     "--config.init.workdir=<an earlier stage's workdir> (or init.allow_random=True)")
  cfg = presets.get_preset(config.model.preset)
  if tokenizer_dir:
    from tinyrs_jax.data.tokenizer import Tokenizer
    cfg = presets.with_tokenizer(cfg, Tokenizer.from_folder(tokenizer_dir))
  return ModelSource(cfg, tokenizer_dir, "random")


def configured_model(config, source: ModelSource) -> Model:
  """The Model for `source` with the config's model.dtype, model.param_dtype and model.remat_policy."""
  m = config.model
  return make_model(source.cfg, dtype=m.dtype, param_dtype=m.get("param_dtype", "float32"),
                              remat_policy=m.get("remat_policy", "none"))


# ----------------------------------------------------------------------------------------------- params

def _put_global(x: np.ndarray, sharding) -> jax.Array:
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def load_init_params(source: ModelSource, model: Model, shardings, init_step=-1):
  """Parameters from an earlier stage's workdir or an HF folder, placed in their shardings (`shardings.params`:
  a TrainState's shardings, or any object with a `params` tree of shardings)."""
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          model.abstract_params, shardings.params)
  if source.init == "workdir":
    workdir, step = sidecar.find_checkpoint(source.init_path)
    step = step if step is not None else (None if init_step is None or init_step < 0 else int(init_step))
    return orbax_io.restore_params_pure(workdir, step, abstract)
  if source.init == "hf":
    abstract_module = nnx.eval_shape(lambda: Qwen2VL(source.cfg, rngs=nnx.Rngs(0), **model.kwargs))
    # NumPy on the host, each array then cut straight into its shards: the whole unsharded model never sits on
    # one device (a 2B model in fp32 is 8.8 GB).
    host = hf.load_hf_params(source.init_path, abstract_module, source.cfg,
                             model.kwargs.get("param_dtype", "float32"), host=True)
    host = host.to_pure_dict()
    return jax.tree.map(lambda x, a: _put_global(np.asarray(x, a.dtype), a.sharding), host, abstract)
  raise ValueError(f"no parameters to load for init {source.init!r}")


def load_frozen_params(config, source: ModelSource, model: Model, param_shardings, dtype):
  """Parameters for inference (a GRPO reference, evaluation): from init (or random, the same draw as
  train.state.init_state), cast once to `dtype`, in their shardings."""
  cast_sh = jax.tree.map(lambda a, s: s, model.abstract_params, param_shardings)
  cast = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p), in_shardings=(cast_sh,),
                 out_shardings=cast_sh, donate_argnums=0)
  if source.init in ("workdir", "hf"):
    params = load_init_params(source, model, types.SimpleNamespace(params=param_shardings),
                              config.init.get("step", -1))
  else:
    pkey = jax.random.split(jax.random.PRNGKey(int(config.seed)))[0]
    params = jax.jit(model.build, out_shardings=param_shardings)(pkey)
  return cast(params)
