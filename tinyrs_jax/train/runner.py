"""What every trainer does around its step function: the workdir's marker, the initial state (resume, an earlier
stage's workdir, a Hugging Face folder, or random), checkpoints, preemption, the kill hook, export.

SFT (train/sft.py) and GRPO use these pieces unchanged; only the loop body and the loss differ. The mesh, the
model and restoring parameters are not training's: they are in tinyrs_jax/runtime.py (evaluation and the tools
use them too), re-exported here under their old names for the trainers.
"""
from __future__ import annotations

import os
import signal
import time

import jax
import numpy as np
from absl import logging

from tinyrs_jax.checkpoint import orbax_io, sidecar
from tinyrs_jax.runtime import (ModelSource, check_special_ids, load_frozen_params, load_init_params,  # noqa: F401
                                make_mesh, resolve_model)
from tinyrs_jax.runtime import configured_model as make_model  # noqa: F401  (runner.make_model(config, source))
from tinyrs_jax.train import state as state_lib


def write_marker(config, workdir: str, source: ModelSource) -> None:
  """A fresh workdir records what it is (model config, stage, where it started) and, from process 0, gets a copy
  of the tokenizer with the pixel limits it is trained with (the workdir then moves with its tokenizer)."""
  if jax.process_index() != 0 or source.init == "resume":
    return
  tok = None
  if source.tokenizer_dir:
    from tinyrs_jax.train import input as input_lib
    image_cfg = input_lib.image_config(config, source.tokenizer_dir)
    tok = sidecar.save_tokenizer(workdir, source.tokenizer_dir, image_cfg)
  sidecar.write_marker(workdir, source.cfg, tok,
                        extra={"stage": config.get("stage", ""), "init": source.init, "init_path": source.init_path})


def setup_state(config, workdir: str, source: ModelSource, model: state_lib.Model, data_it, optimizer_steps: int,
                mesh):
  """Optimizer (schedule over `optimizer_steps`), state shardings, checkpointer and the initial state: resumed from
  the workdir (the data iterator put back where it was) or fresh. Returns (opt, shardings, ckpt, state)."""
  from tinyrs_jax.train import optimizer as optim_lib
  opt = optim_lib.make_optimizer(config.optim, model.abstract_params, optimizer_steps)
  shardings = state_lib.state_shardings(model, opt, mesh)
  ckpt = Checkpointer(workdir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep,
                      async_save=config.checkpoint.get("async_save", True))
  state, data_state = initial_state(config, source, model, opt, shardings, ckpt, int(config.seed))
  if data_state is not None:
    data_it.set_state(data_state)
  return opt, shardings, ckpt, state


def finished_before(workdir: str, start: int, total_steps: int, ckpt: "Checkpointer", train_it, t_start: float) -> dict:
  """The summary of a run that was already finished when (re)started: nothing is trained."""
  logging.info("%s already finished (step %d of %d): nothing to do", workdir, start, total_steps)
  ckpt.close()
  if hasattr(train_it, "close"):
    train_it.close()
  return {"step": start, "preempted": False, "compiles": 0, "finished_before": True, "seconds": time.time() - t_start}


# ----------------------------------------------------------------------------------------- initial state

def initial_state(config, source: ModelSource, model: state_lib.Model, opt, shardings, ckpt: "Checkpointer",
                  seed: int):
  """(state, data_state or None): resumed from the workdir, or fresh (params from init or random)."""
  if source.init == "resume":
    abstract = state_lib.abstract_state(model, opt, shardings)
    state, data_state = ckpt.restore(abstract)
    logging.info("resumed from %s at step %d", ckpt.directory, int(state.step))
    return state, data_state
  if source.init in ("workdir", "hf"):
    t0 = time.time()
    params = load_init_params(source, model, shardings, config.init.get("step", -1))
    logging.info("initial parameters from %s (%s) in %.1fs", source.init_path, source.init, time.time() - t0)
    return state_lib.state_from_params(params, opt, shardings, seed), None
  logging.info("random initial parameters (preset %s, seed %d)", config.model.preset, seed)
  return state_lib.init_state(model, opt, shardings, seed), None


# ------------------------------------------------------------------------------------------ checkpoints

class Checkpointer:
  """An orbax CheckpointManager over <workdir>/checkpoints: every N steps and at the end, keep K, async."""

  def __init__(self, workdir: str, *, every_steps: int, keep: int, async_save: bool = True):
    self.every_steps = max(int(every_steps), 0)
    self.async_save = bool(async_save)  # kept here: CheckpointManager has no public accessor for its options
    self.mngr = orbax_io.checkpoint_manager(workdir, max_to_keep=keep if keep > 0 else None,
                                            save_interval_steps=1, async_save=async_save)
    self.directory = str(self.mngr.directory)
    self.last_saved = self.mngr.latest_step()
    # False: a checkpoint's number is state.step (SFT: optimizer steps); True: the loop's step passed to save
    # (GRPO: its own step counter, whether or not an update was skipped)
    self.numbered_by_loop = False

  def due(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(self, state, data_state: dict | None, *, force: bool = False, step: int | None = None) -> bool:
    """Saves unless this number is already saved; `step` (the loop's) numbers it when numbered_by_loop."""
    step = int(step) if self.numbered_by_loop and step is not None else int(jax.device_get(state.step))
    if step == self.last_saved:
      return False
    saved = orbax_io.save_train_state(self.mngr, state, data_state, force=force, step=step)
    if saved:
      self.last_saved = step
      logging.info("checkpoint step %d -> %s%s", step, self.directory,
                   " (async)" if self.async_save else "")
    return saved

  def restore(self, abstract_state):
    return orbax_io.restore_train_state(self.mngr, abstract_state)

  def wait(self):
    self.mngr.wait_until_finished()

  def close(self):
    self.mngr.wait_until_finished()
    self.mngr.close()


# ------------------------------------------------------------------------------------------ preemption

def _jax_preemption_service() -> bool:
  """Whether jax.distributed started its preemption sync service (it catches SIGTERM itself, in C++).

  Public APIs only: jax.distributed.initialize starts the service exactly when jax_enable_preemption_service is
  on (the default), and there is no public accessor for the service itself."""
  return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


class Preemption:
  """SIGTERM (preemption) -> save a checkpoint at the next step boundary and stop.

  With jax.distributed, jax's preemption sync service catches SIGTERM and agrees on one step for all processes
  (orbax's reached_preemption, a local check meant for every step); a Python handler would replace its C++ one,
  so none is installed then. Otherwise a handler sets a flag (and calls any earlier Python handler); several
  processes share their flags with an all-gather every `check_every` steps only, as the all-gather waits for the
  step in flight.
  """

  def __init__(self, ckpt: Checkpointer | None = None, check_every: int = 10):
    self.flag = False
    self.ckpt = ckpt
    self.check_every = max(int(check_every), 1)
    self.installed = False
    self._previous = None
    if _jax_preemption_service():
      return
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
      self.installed = True
    except ValueError:  # not the main thread
      pass

  def _handler(self, signum, frame):
    self.flag = True
    if callable(self._previous):
      self._previous(signum, frame)

  def requested(self, step: int) -> bool:
    synced = self.ckpt is not None and self.ckpt.mngr.reached_preemption(step)
    if jax.process_count() == 1:
      return self.flag or bool(synced)
    if step % self.check_every:
      return bool(synced)
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray([self.flag], np.int32))
    return bool(np.asarray(flags).any()) or bool(synced)

  def restore_handler(self):
    if self.installed:
      signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
      self.installed = False


def debug_kill(step: int, ckpt: Checkpointer | None) -> None:
  """Test hook (config.debug_kill_at_step): SIGKILL this process right after `step`, once the checkpoints
  already started are on disk, as a crash at a well-defined point would."""
  if ckpt is not None:
    ckpt.wait()
  logging.warning("debug_kill_at_step=%d: SIGKILL", step)
  logging.flush()
  os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- export

def export_hf(model: state_lib.Model, params, out_dir: str, *, dtype: str | None = None,
              tokenizer_dir: str | None = None) -> str | None:
  """Writes a transformers-loadable folder (process 0; parameters gathered to host NumPy, one array at a time, and
  never put back on a device: the whole model on one device could exceed its memory)."""
  import tinyrs_jax
  from jax.experimental import multihost_utils
  host = jax.tree.map(np.asarray, multihost_utils.process_allgather(params, tiled=True))
  if jax.process_index() != 0:
    return None
  module = model.merge(host)
  path = tinyrs_jax.save_hf(module, out_dir, dtype=dtype or None, source_dir=tokenizer_dir)
  logging.info("exported a Hugging Face folder to %s", path)
  return path
