"""The supervised trainer for stages 1-3 (pretrain, instruct, cot): one loop, the stage lives in the config.

    python -m tinyrs_jax.main --config=configs/pretrain.py:demo --workdir=/tmp/tinyrs/pretrain

Per step: take grad_accum batches from this process's iterator, make them global arrays on the mesh, run the
donated, ahead-of-time compiled step, then (for the previous step, so the host never waits on the device
in between) write metrics and the progress line. Checkpoints every N steps and at the end (async),
evaluation every M steps and at the start, a SIGTERM saves and stops, a restart resumes exactly.
"""
from __future__ import annotations

import os
import signal
import time

import jax
from absl import logging

from tinyrs_jax.checkpoint import orbax_io
from tinyrs_jax.train import input as input_lib
from tinyrs_jax.train import losses as losses_lib
from tinyrs_jax.train import metrics as metrics_lib
from tinyrs_jax.train import optimizer as optim_lib
from tinyrs_jax.train import runner
from tinyrs_jax.train import state as state_lib


def make_loss_fn(loss_config):
  kwargs = {k: v for k, v in loss_config.items() if k != "name"}
  fn = losses_lib.get_loss(loss_config.name)
  return lambda model, batch, rng: fn(model, batch, rng, **kwargs)


def evaluate(eval_step, params, batches, mesh) -> dict[str, float]:
  total, weight, n = 0.0, 0.0, 0
  for b in batches:
    gb = input_lib.to_global(b, state_lib.batch_shardings(mesh, b))
    loss_sum, w = eval_step(params, gb)
    total += float(jax.device_get(loss_sum))
    weight += float(jax.device_get(w))
    n += 1
  return {"eval_loss": total / max(weight, 1e-9), "eval_tokens": weight, "eval_batches": n}


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the SFT stage described by `config` in `workdir`; returns a small summary."""
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  mesh = runner.make_mesh(config)
  pi, pc = jax.process_index(), jax.process_count()

  data = input_lib.resolve_data(config)
  source = runner.resolve_model(config, workdir, data.tokenizer_dir)
  model = runner.make_model(config, source)

  grad_accum = int(config.get("grad_accum_steps", 1))
  if config.batch_size % grad_accum:
    raise ValueError(f"batch_size {config.batch_size} not divisible by grad_accum_steps {grad_accum}")
  micro = config.batch_size // grad_accum
  data_axes = mesh.shape["data"] * mesh.shape["fsdp"]
  input_lib.check_batch_split(micro, data_axes, pc, "microbatch (batch_size / grad_accum_steps)")
  has_eval = input_lib.has_eval(config, data)
  if has_eval:
    input_lib.check_batch_split(input_lib.eval_batch_size(config), data_axes, pc, "eval batch size")

  if pi == 0 and source.init != "resume":
    tok = None
    if source.tokenizer_dir:  # copied into the workdir (it moves with it) with the pixel limits trained with
      image_cfg = input_lib.image_config(config, source.tokenizer_dir)
      tok = orbax_io.save_tokenizer(workdir, source.tokenizer_dir, image_cfg)
    orbax_io.write_marker(workdir, source.cfg, tok,
                          extra={"stage": config.get("stage", ""), "init": source.init, "init_path": source.init_path})

  train_it = input_lib.make_iterator(config, data, "train", source.cfg, batch_size=micro,
                                     tokenizer_dir=source.tokenizer_dir, process_index=pi, process_count=pc)
  total_steps = input_lib.total_steps(config, data, micro * grad_accum, train_it)
  opt = optim_lib.make_optimizer(config.optim, model.abstract_params, total_steps)
  shardings = state_lib.state_shardings(model, opt, mesh)
  ckpt = runner.Checkpointer(workdir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep,
                             async_save=config.checkpoint.get("async_save", True))
  state, data_state = runner.initial_state(config, source, model, opt, shardings, ckpt, int(config.seed))
  if data_state is not None:
    train_it.set_state(data_state)
  start = int(jax.device_get(state.step))
  if start >= total_steps:
    logging.info("%s already finished (step %d of %d): nothing to do", workdir, start, total_steps)
    ckpt.close()
    if hasattr(train_it, "close"):
      train_it.close()
    return {"step": start, "preempted": False, "compiles": 0, "finished_before": True,
            "seconds": time.time() - t_start}

  writer = metrics_lib.MetricsWriter(workdir)
  if start > 0:
    writer.truncate_after(start)
  loss_fn = make_loss_fn(config.loss)
  step_fn = state_lib.CompiledStep(state_lib.make_train_step(model, opt, loss_fn, grad_accum=grad_accum), mesh,
                                   shardings, donate=True, grad_accum=grad_accum, log=logging.info)
  eval_fn = state_lib.CompiledStep(state_lib.make_eval_step(model, loss_fn), mesh, shardings.params,
                                   donate=False, out_shardings=state_lib.replicated(mesh), name="eval_step",
                                   log=logging.info)
  eval_every = int(config.eval.get("every_steps", 0))
  eval_data = (input_lib.EvalData(config, data, source.cfg, tokenizer_dir=source.tokenizer_dir, process_index=pi,
                                  process_count=pc) if has_eval else None)

  def run_eval(step):
    t0 = time.time()
    r = evaluate(eval_fn, state.params, eval_data, mesh)
    writer.write(step, r)
    writer.flush()
    logging.info("eval step %d: eval_loss %.4f over %d tokens (%d batches, %.1fs)", step, r["eval_loss"],
                 r["eval_tokens"], r["eval_batches"], time.time() - t0)
    return r

  first_eval = last_eval = None
  if start == 0 and config.eval.get("at_start", True) and eval_every >= 0 and eval_data is not None:
    first_eval = last_eval = run_eval(0)

  trainable = {g: any(m for l, m in zip(jax.tree.leaves(optim_lib.group_labels(model.abstract_params)),
                                        jax.tree.leaves(opt.mask)) if l == g) for g in optim_lib.GROUPS}
  peak = metrics_lib.peak_flops_per_device(config.get("peak_tflops", 0.0)) * jax.device_count()
  preempt = runner.Preemption(ckpt, check_every=config.checkpoint.get("preemption_check_every", 10))
  timer = metrics_lib.StepTimer()
  log_every = max(int(config.get("log_every_steps", 1)), 1)
  pending = None  # (step, device metrics, host stats) of the step in flight
  preempted = False

  def finish(p):
    step, dev_metrics, host = p
    m = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
    dt = timer.tick()
    if dt is not None:
      m["step_time_s"] = dt
      m["tokens_per_s"] = host["tokens"] / dt
      m["mfu"] = host["flops"] / dt / peak if peak > 0 else 0.0
    m["tokens"] = host["tokens"]
    m["compiles"] = step_fn.num_compiles
    writer.write(step, m)
    if step % log_every == 0 or step == total_steps:
      eta = None if dt is None else dt * (total_steps - step)
      logging.info(metrics_lib.progress_line(step, total_steps, m, eta))
      writer.flush()

  logging.info("training %s from step %d to %d: batch %d (%d x %d microbatches), %d processes", config.get("stage"),
               start, total_steps, config.batch_size, grad_accum, micro, pc)
  kill_at = int(config.get("debug_kill_at_step", -1))
  last_eval_step = 0 if first_eval is not None else -1
  step = start
  while step < total_steps:
    parts = [input_lib.arrays(next(train_it)) for _ in range(grad_accum)]
    host_batch = parts[0] if grad_accum == 1 else input_lib.stack_microbatches(parts)
    host = {"tokens": float(sum(p["attention_mask"].sum() for p in parts)) * pc,
            "flops": sum(metrics_lib.batch_model_flops(source.cfg, p, train_vision=trainable["vision"],
                                                       train_merger=trainable["merger"]) for p in parts) * pc}
    gb = input_lib.to_global(host_batch, state_lib.batch_shardings(mesh, host_batch, grad_accum))
    state, dev_metrics = step_fn(state, gb)
    step += 1
    if pending is not None:
      finish(pending)  # the previous step's metrics, while this one runs
    pending = (step, dev_metrics, host)
    if ckpt.due(step) and step < total_steps:
      ckpt.save(state, train_it.get_state())
      writer.flush()
    eval_due = eval_every > 0 and step % eval_every == 0 and step < total_steps
    if step == int(config.get("debug_sigterm_at_step", -1)):
      os.kill(os.getpid(), signal.SIGTERM)  # test hook: a preemption notice at a known step
    stop = preempt.requested(step)
    if eval_due or stop or step == kill_at:
      finish(pending)
      pending = None
    if eval_due:
      last_eval = run_eval(step)
      last_eval_step = step
      timer.reset()
    if step == kill_at:
      writer.flush()
      runner.debug_kill(step, ckpt)
    if stop:
      logging.warning("preemption requested: saving step %d and stopping", step)
      preempted = True
      break
  if pending is not None:
    finish(pending)
  if not preempted and eval_every >= 0 and last_eval_step != step and eval_data is not None:
    last_eval = run_eval(step)
  ckpt.save(state, train_it.get_state(), force=True)
  ckpt.close()
  if hasattr(train_it, "close"):
    train_it.close()
  preempt.restore_handler()
  if not preempted and config.get("export_hf_dir", ""):
    saved_tok = orbax_io.tokenizer_path(workdir, orbax_io.read_marker(workdir))
    runner.export_hf(model, state.params, config.export_hf_dir, dtype=config.get("export_dtype", "") or None,
                     tokenizer_dir=saved_tok or source.tokenizer_dir)
  writer.flush()
  writer.close()
  summary = {"step": step, "preempted": preempted, "compiles": step_fn.num_compiles,
             "first_eval_loss": None if first_eval is None else first_eval["eval_loss"],
             "final_eval_loss": None if last_eval is None else last_eval["eval_loss"],
             "seconds": time.time() - t_start}
  logging.info("done: %s", summary)
  return summary

