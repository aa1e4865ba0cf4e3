"""Training: pieces every trainer shares, and the SFT trainer (stages 1-3).

What a second algorithm (GRPO) reuses unchanged:
  optimizer.make_optimizer(config.optim, model.abstract_params, total_steps) -> Optimizer
      per-group lr (vision / merger / llm), freezing (frozen params get no gradient, no state, stay bit-identical),
      clipping, warmup + cosine
  state.make_model(cfg, dtype=, param_dtype=, remat_policy=) -> Model (graphdef, abstract params, logical names)
  state.TrainState(step, params, opt_state, rng); state.state_shardings(model, opt, mesh);
  state.init_state / state.state_from_params (created under jit with out_shardings)
  state.make_train_step(model, opt, loss_fn, grad_accum=k) -> pure step(state, batch) -> (state, metrics) for any
      loss_fn(model, batch, rng) -> losses.LossOutput(loss_sum, weight, metric_sums); extra batch arrays
      (advantages, old log-probs, ...) ride along with a leading batch axis
  state.CompiledStep(step, mesh, shardings, donate=True) — jit + donation, compiled once per batch shape
  losses.register_loss(name); losses.chunked_logprobs(hidden, head, targets, mask) — per-token log-probs at the
      selected positions without batch x length x vocab logits (differentiable)
  runner: make_mesh, resolve_model, make_model, initial_state (resume / earlier workdir / HF / random),
      Checkpointer (orbax, every N, keep K, async), Preemption (SIGTERM), debug_kill, export_hf
  input: the config's data block -> iterators (resolve_data, make_iterator, EvalData, prompts for GRPO)
  placement: host rows -> global arrays on the mesh (place_batch, check_batch_split, stack_microbatches)
  random_batches: random_batch / RandomBatches (tests, benchmarks, AOT, data.source=random)
  metrics.MetricsWriter (metrics.jsonl + TensorBoard), metrics.batch_model_flops / peak_flops_per_device (MFU)
  distributed.initialize(config.distributed) (TPU, SLURM, explicit coordinator)
"""
