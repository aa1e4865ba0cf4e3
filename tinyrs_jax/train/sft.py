"""The supervised trainer for stages 1-3 (pretrain, instruct, cot): one loop, the stage lives in the config.

    python -m tinyrs_jax.main --config=configs/pretrain.py:demo --workdir=/tmp/tinyrs/pretrain

Per step: take grad_accum batches from this process's iterator, make them global arrays on the mesh, run the
donated, ahead-of-time compiled step. Everything around the step (metrics pipelining, checkpoints, evaluation
cadence, SIGTERM, the kill hook, export) is train/loop.py's, shared with the GRPO trainer; a restart resumes
exactly.
"""
from __future__ import annotations

import os
import time

import jax
from absl import logging

from tinyrs_jax import runtime
from tinyrs_jax.train import input as input_lib
from tinyrs_jax.train import loop
from tinyrs_jax.train import placement
from tinyrs_jax.train import losses as losses_lib
from tinyrs_jax.train import metrics as metrics_lib
from tinyrs_jax.train import runner
from tinyrs_jax.train import state as state_lib


def make_loss_fn(loss_config):
  kwargs = {k: v for k, v in loss_config.items() if k != "name"}
  fn = losses_lib.get_loss(loss_config.name)
  return lambda model, batch, rng: fn(model, batch, rng, **kwargs)


def evaluate(eval_step, params, batches, mesh) -> dict[str, float]:
  total, weight, n = 0.0, 0.0, 0
  for b in batches:
    gb = placement.place_batch(b, mesh)
    loss_sum, w = eval_step(params, gb)
    total += float(jax.device_get(loss_sum))
    weight += float(jax.device_get(w))
    n += 1
  return {"eval_loss": total / max(weight, 1e-9), "eval_tokens": weight, "eval_batches": n}


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the SFT stage described by `config` in `workdir`; returns a small summary."""
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  mesh = runtime.make_mesh(config)
  pi, pc = jax.process_index(), jax.process_count()

  data = input_lib.resolve_data(config)
  source = runtime.resolve_model(config, workdir, data.tokenizer_dir)
  model = runtime.configured_model(config, source)

  grad_accum = int(config.get("grad_accum_steps", 1))
  if config.batch_size % grad_accum:
    raise ValueError(f"batch_size {config.batch_size} not divisible by grad_accum_steps {grad_accum}")
  micro = config.batch_size // grad_accum
  data_axes = mesh.shape["data"] * mesh.shape["fsdp"]
  placement.check_batch_split(micro, data_axes, pc, "microbatch (batch_size / grad_accum_steps)")
  has_eval = input_lib.has_eval(config, data)
  if has_eval:
    placement.check_batch_split(input_lib.eval_batch_size(config), data_axes, pc, "eval batch size")

  runner.write_marker(config, workdir, source)
  train_it = input_lib.make_iterator(config, data, "train", source.cfg, batch_size=micro,
                                     tokenizer_dir=source.tokenizer_dir, process_index=pi, process_count=pc)
  total_steps = input_lib.total_steps(config, data, micro * grad_accum, train_it)
  opt, shardings, ckpt, state = runner.setup_state(config, workdir, source, model, train_it, total_steps, mesh)
  start = int(jax.device_get(state.step))
  if start >= total_steps:
    return runner.finished_before(workdir, start, total_steps, ckpt, train_it, t_start)

  writer = metrics_lib.MetricsWriter(workdir)
  if start > 0:
    writer.truncate_after(start)
  loss_fn = make_loss_fn(config.loss)
  step_fn = state_lib.CompiledStep(state_lib.make_train_step(model, opt, loss_fn, grad_accum=grad_accum), mesh,
                                   shardings, donate=True, grad_accum=grad_accum, log=logging.info)
  eval_fn = state_lib.CompiledStep(state_lib.make_eval_step(model, loss_fn), mesh, shardings.params,
                                   donate=False, out_shardings=state_lib.replicated(mesh), name="eval_step",
                                   log=logging.info)
  eval_data = (input_lib.EvalData(config, data, source.cfg, tokenizer_dir=source.tokenizer_dir, process_index=pi,
                                  process_count=pc) if has_eval else None)

  from tinyrs_jax.evaluation.evaluator import TrainingEval
  answers = (TrainingEval.maybe(config, data, model, mesh, source.tokenizer_dir, workdir,
                                input_lib.eval_batch_size(config)) if has_eval else None)

  def run_eval(state, step):
    r = evaluate(eval_fn, state.params, eval_data, mesh)
    logging.info("eval step %d: eval_loss %.4f over %d tokens (%d batches)", step, r["eval_loss"], r["eval_tokens"],
                 r["eval_batches"])
    if answers is not None:  # greedy answers to the first eval.generate_examples records, both rule sets
      r.update(answers(state.params, step))
    return r

  trainable = opt.trainable
  peak = metrics_lib.peak_flops_per_device(config.get("peak_tflops", 0.0)) * jax.device_count()

  def train_step(state, step):
    parts = [input_lib.arrays(next(train_it)) for _ in range(grad_accum)]
    host_batch = parts[0] if grad_accum == 1 else placement.stack_microbatches(parts)
    host = {"tokens": float(sum(p["attention_mask"].sum() for p in parts)) * pc,
            "flops": sum(metrics_lib.batch_model_flops(source.cfg, p, train_vision=trainable["vision"],
                                                       train_merger=trainable["merger"]) for p in parts) * pc}
    gb = placement.place_batch(host_batch, mesh, grad_accum)
    state, dev_metrics = step_fn(state, gb)
    return state, dev_metrics, host

  logging.info("training %s from step %d to %d: batch %d (%d x %d microbatches), %d processes", config.get("stage"),
               start, total_steps, config.batch_size, grad_accum, micro, pc)
  result = loop.run_loop(config, workdir, state=state, start=start, total_steps=total_steps, ckpt=ckpt,
                         writer=writer, train_step=train_step, data_state=train_it.get_state,
                         evaluate=run_eval if eval_data is not None else None,
                         num_compiles=lambda: step_fn.num_compiles, peak_flops=peak)
  loop.close_run(config, workdir, result, train_it, writer, model, source.tokenizer_dir)
  summary = {"step": result.step, "preempted": result.preempted, "compiles": step_fn.num_compiles,
             "first_eval_loss": None if result.first_eval is None else result.first_eval["eval_loss"],
             "final_eval_loss": None if result.last_eval is None else result.last_eval["eval_loss"],
             "seconds": time.time() - t_start}
  logging.info("done: %s", summary)
  return summary
