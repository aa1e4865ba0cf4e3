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

The GRPO trainer (stage 4), one job per file:
  grpo_trainer  the run and one GRPO step (GRPOStep: rollout, rewards, batch, updates; TrainStep for the loop)
  grpo          advantages and the policy loss, as pure functions
  grpo_rewards  the configured rewards, scoring (RewardScorer, RewardFailure), check_verifiable, reward metrics
  grpo_eval     the held-out evaluation (HeldOutEval)
  grpo_policy   the starting policy (ensure_demo_policy) and the pinned reference (pin_init, load_reference)
  grpo_monitor  warnings when a run goes wrong
Generation and decoding, shared with the evaluation run: sampling/answers.py (Sampler).
"""
