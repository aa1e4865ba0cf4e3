"""The training loop every trainer shares: the step cadence around a trainer's own step function.

A trainer (train/sft.py, train/grpo_trainer.py) builds its state and its step, then calls `run_loop`, which
owns what must be the same for all of them:
  - metrics pipelining: a step's device metrics are read back while the next step runs (the host never waits
    on the device in between), then written to metrics.jsonl / TensorBoard with throughput, compile count and
    a progress line every `log_every_steps`;
  - checkpoints every `checkpoint.every_steps` and at the end (with the data iterator's state);
  - evaluation at the start (`eval.at_start`), every `eval.every_steps` and at the end;
  - preemption (SIGTERM: save at the next step boundary and stop, exit code 143 from main) and the test hooks
    `debug_sigterm_at_step` / `debug_kill_at_step`;
  - closing: the last checkpoint, the iterator, the signal handler, the Hugging Face export when asked.

The trainer's pieces are plain callables:
  train_step(state, step) -> (state, device_metrics, host_metrics)
      one optimizer step; `step` is the index of the step being taken (state.step before it). host_metrics are
      floats known on the host; "tokens" and "flops" there give tokens/s and MFU.
  evaluate(state, step) -> dict of floats, or None for a trainer without evaluation
  data_state() -> the data iterator's JSON-able state, saved beside each checkpoint
  on_metrics(step, metrics) -> None: sees every step's finished metrics (e.g. a health monitor)
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Callable

import jax
from absl import logging

from tinyrs_jax.checkpoint import sidecar
from tinyrs_jax.train import metrics as metrics_lib
from tinyrs_jax.train import runner


@dataclasses.dataclass
class LoopResult:
  state: Any
  step: int
  preempted: bool
  first_eval: dict | None
  last_eval: dict | None


def run_loop(config, workdir: str, *, state, start: int, total_steps: int, ckpt: runner.Checkpointer,
             writer: metrics_lib.MetricsWriter, train_step: Callable, data_state: Callable[[], dict],
             evaluate: Callable | None = None, num_compiles: Callable[[], int] = lambda: 0,
             peak_flops: float = 0.0, progress_line: Callable = metrics_lib.progress_line,
             on_metrics: Callable[[int, dict], None] | None = None) -> LoopResult:
  """Runs steps start..total_steps (see the module docstring); returns the final state and what happened."""
  eval_every = int(config.eval.get("every_steps", 0))
  log_every = max(int(config.get("log_every_steps", 1)), 1)
  kill_at = int(config.get("debug_kill_at_step", -1))
  sigterm_at = int(config.get("debug_sigterm_at_step", -1))
  preempt = runner.Preemption(ckpt, check_every=config.checkpoint.get("preemption_check_every", 10))
  timer = metrics_lib.StepTimer()

  def run_eval(state, step):
    t0 = time.time()
    r = evaluate(state, step)
    r = {**r, "eval_time_s": time.time() - t0}
    writer.write(step, r)
    writer.flush()
    timer.reset()  # the next step's time would include the evaluation
    return r

  def finish(pending):
    step, dev_metrics, host = pending
    m = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
    host = dict(host)
    flops = host.pop("flops", None)
    m.update(host)
    dt = timer.tick()
    if "step_time_s" in host:  # a step that waits for itself measures itself (GRPO: the rollout needs the params)
      dt = host.pop("step_time_s")
    if dt is not None:
      m["step_time_s"] = dt
      if "tokens" in host:
        m["tokens_per_s"] = host["tokens"] / dt
      if flops is not None and peak_flops > 0:
        m["mfu"] = flops / dt / peak_flops
    m["compiles"] = num_compiles()
    writer.write(step, m)
    if on_metrics is not None:
      on_metrics(step, m)
    if step % log_every == 0 or step == total_steps:
      eta = None if dt is None else dt * (total_steps - step)
      logging.info(progress_line(step, total_steps, m, eta))
      writer.flush()

  first_eval = last_eval = None
  last_eval_step = -1
  if evaluate is not None and start == 0 and eval_every >= 0 and config.eval.get("at_start", True):
    first_eval = last_eval = run_eval(state, 0)
    last_eval_step = 0

  pending = None  # (step, device metrics, host metrics) of the step in flight
  preempted = False
  step = start
  while step < total_steps:
    state, dev_metrics, host = train_step(state, step)
    step += 1
    if pending is not None:
      finish(pending)  # the previous step's metrics, while this one runs
    pending = (step, dev_metrics, host)
    if ckpt.due(step) and step < total_steps:
      ckpt.save(state, data_state(), step=step)
      writer.flush()
    eval_due = evaluate is not None and eval_every > 0 and step % eval_every == 0 and step < total_steps
    if step == sigterm_at:
      os.kill(os.getpid(), signal.SIGTERM)  # test hook: a preemption notice at a known step
    stop = preempt.requested(step)
    if eval_due or stop or step == kill_at:
      finish(pending)
      pending = None
    if eval_due:
      last_eval = run_eval(state, step)
      last_eval_step = step
    if step == kill_at:
      writer.flush()
      runner.debug_kill(step, ckpt)
    if stop:
      logging.warning("preemption requested: saving step %d and stopping", step)
      preempted = True
      break
  if pending is not None:
    finish(pending)
  if evaluate is not None and not preempted and eval_every >= 0 and last_eval_step != step:
    last_eval = run_eval(state, step)
  ckpt.save(state, data_state(), force=True, step=step)
  ckpt.close()
  preempt.restore_handler()
  writer.flush()
  return LoopResult(state=state, step=step, preempted=preempted, first_eval=first_eval, last_eval=last_eval)


def close_run(config, workdir: str, result: LoopResult, data_it, writer, model, tokenizer_dir: str | None) -> None:
  """After run_loop: closes the data iterator and the metrics writer, and exports unless the run was preempted."""
  if hasattr(data_it, "close"):
    data_it.close()
  if not result.preempted:
    export_if_asked(config, workdir, model, result.state.params, tokenizer_dir)
    mark_finished(workdir, result.step)
  writer.close()


FINISHED = "finished.json"


def mark_finished(workdir: str, step: int) -> None:
  """workdir/finished.json: the run reached its last step (what sweeps and launchers check; process 0 writes)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, FINISHED), "w") as f:
      json.dump({"step": int(step), "time": time.time()}, f)


def is_finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, FINISHED))


def export_if_asked(config, workdir: str, model, params, tokenizer_dir: str | None) -> None:
  """config.export_hf_dir: a Hugging Face folder of the final parameters, with the workdir's tokenizer."""
  if not config.get("export_hf_dir", ""):
    return
  saved_tok = sidecar.tokenizer_path(workdir, sidecar.read_marker(workdir))
  runner.export_hf(model, params, config.export_hf_dir, dtype=config.get("export_dtype", "") or None,
                   tokenizer_dir=saved_tok or tokenizer_dir)
