"""GRPO's starting policy and its frozen reference: the demo's starting policy (the three demo SFT stages, run
once and cached: ensure_demo_policy), the checkpoint a fresh run starts from, pinned and recorded in
workdir/grpo_reference.json (pin_init), and the reference parameters, reloaded from exactly that checkpoint on
resume (load_reference). What a user sees when the reference is gone: docs/grpo.md.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time

import jax
import jax.numpy as jnp
from absl import logging

from tinyrs_jax.train import runner
from tinyrs_jax.train import state as state_lib


def ensure_demo_policy(config) -> str:
  """The GRPO demo's starting policy: the three demo SFT stages (configs/{pretrain,instruct,cot}.py:demo), run
  once into a cache folder keyed by their configs and the synthetic data's version, then reused."""
  from tinyrs_jax.data import demo_tokenizer, synthetic
  from tinyrs_jax.train import sft
  configs_dir = config.init.demo_configs_dir
  stages = []
  for stage in ("pretrain", "instruct", "cot"):
    path = os.path.join(configs_dir, f"{stage}.py")
    spec = importlib.util.spec_from_file_location(f"_tinyrs_demo_{stage}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stages.append((stage, module.get_config("demo")))
  key = hashlib.sha1(json.dumps([synthetic.GENERATOR_VERSION, demo_tokenizer.TOKENIZER_VERSION]
                                + [c.to_json_best_effort(sort_keys=True) for _, c in stages]).encode()).hexdigest()[:12]
  root = os.path.join(demo_tokenizer.default_cache_root(), f"demo-policy-{key}")
  final = os.path.join(root, "cot")
  t0 = time.time()
  prev = ""
  for stage, c in stages:
    workdir = os.path.join(root, stage)
    c.init.workdir = prev
    if not os.path.exists(os.path.join(workdir, "DONE")):
      logging.info("demo starting policy: running the %s demo stage into %s", stage, workdir)
      summary = sft.train_and_evaluate(c, workdir)
      if summary.get("preempted"):
        raise RuntimeError(f"the {stage} demo stage was preempted; rerun to continue it")
      if jax.process_index() == 0:
        with open(os.path.join(workdir, "DONE"), "w") as f:
          f.write("ok\n")
    prev = workdir
  logging.info("demo starting policy: %s (the demo SFT stages, cached; %.0fs)", final, time.time() - t0)
  return final


REFERENCE_FILE = "grpo_reference.json"


def pin_init(config, source: runner.ModelSource, workdir: str) -> dict:
  """A fresh run: resolves the checkpoint it starts from ("latest" becomes a step number), makes the policy load
  exactly that one (config.init.step) and records it in workdir/grpo_reference.json, so the reference policy
  of a resumed run is the same. Returns the record."""
  from tinyrs_jax.checkpoint import orbax_io, sidecar
  rec = {"init": source.init, "init_path": source.init_path, "step": None}
  if source.init == "workdir":
    found = sidecar.find_checkpoint(source.init_path)
    init_dir, step = found if found else (source.init_path, None)
    if step is None:
      want = int(config.init.get("step", -1))
      step = want if want >= 0 else orbax_io.latest_step(init_dir)
    if step is None:
      raise FileNotFoundError(f"init.workdir {source.init_path} holds no checkpoint")
    rec.update(init_path=init_dir, step=int(step))
    config.init.step = int(step)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, REFERENCE_FILE), "w") as f:
      json.dump(rec, f)
  return rec


def load_reference(config, source: runner.ModelSource, workdir: str, model: state_lib.Model, shardings,
                   compute_dtype) -> dict:
  """The frozen reference: the run's initial parameters, held once in the compute dtype, sharded like the
  policy. A resumed run reloads exactly the checkpoint recorded by pin_init and refuses when it is gone."""
  from tinyrs_jax.checkpoint import sidecar
  if source.init == "resume":
    path = os.path.join(workdir, REFERENCE_FILE)
    if os.path.exists(path):
      with open(path) as f:
        rec = json.load(f)
    else:  # a workdir from before the record existed
      marker = sidecar.read_marker(workdir)
      rec = {"init": marker.get("init", "random"), "init_path": marker.get("init_path"), "step": None}
      logging.warning("%s has no %s: the reference is reloaded from %s at its latest step", workdir,
                      REFERENCE_FILE, rec["init_path"])
    init, init_path = rec["init"], rec["init_path"]
    if init == "workdir" and rec.get("step") is not None:
      init_path = os.path.join(init_path, sidecar.CHECKPOINTS_DIR, str(int(rec["step"])))
      if not os.path.isdir(init_path):
        raise FileNotFoundError(
            f"the reference policy of this GRPO run, {rec['init_path']} at step {rec['step']} (recorded in "
            f"{path}), is gone: {init_path} does not exist. The KL term is to the policy the run started from; "
            "restore that checkpoint, or start a new run in a fresh workdir.")
    if init == "hf" and not os.path.isdir(str(init_path)):
      raise FileNotFoundError(f"the reference policy of this GRPO run, the Hugging Face folder {init_path} "
                              f"(recorded in {path}), is gone")
    source = runner.ModelSource(source.cfg, source.tokenizer_dir, init, init_path)
  params = runner.load_frozen_params(config, source, model, shardings.params, compute_dtype)
  logging.info("reference model: %s (%s), held in %s", source.init_path or "random init", source.init,
               jnp.dtype(compute_dtype).name)
  return params
