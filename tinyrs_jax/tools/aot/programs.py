"""The programs a stage runs, built through the trainers' own constructors, lowered for a target's mesh."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@dataclasses.dataclass
class Program:
  name: str
  lower: Callable[[], Any]  # () -> jax.stages.Lowered
  live_args: tuple[str, ...] = ()  # which long-lived buffers (of the stage's live set) are its arguments
  model_flops: float = 0.0  # per step, all devices
  # "new_tokens": the program's data-dependent loop (decode, which stops at EOS) runs once per new token; the
  # cost is kept per iteration so the estimator can price any completion length
  loop: str = ""
  rows: int = 0  # sequences the program processes (prompts x samples for a rollout)


def recipe_pixels() -> tuple[int, int]:
  """(min_pixels, max_pixels) the SFT stages train at: configs/common.py's data fields, read from the file."""
  import importlib.util
  path = os.path.join(ROOT, "configs", "common.py")
  spec = importlib.util.spec_from_file_location("_aot_configs_common", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  d = mod.base("aot").data
  return int(d.min_pixels), int(d.max_pixels)


MC_OPTIONS, MC_OPTION_TOKENS = 4, 16  # evaluation with mc_mode=loglik: the options compiled per prompt


def image_pixels(config) -> tuple[int, int]:
  """(min_pixels, max_pixels) of the stage; evaluation's 0 ("the checkpoint's own") is what our stages train at
  and write into their checkpoints (set data.max_pixels to evaluate at another budget)."""
  lo, hi = int(config.data.min_pixels), int(config.data.max_pixels)
  if lo and hi:
    return lo, hi
  recipe = recipe_pixels()
  return lo or min(recipe[0], hi or recipe[1]), hi or recipe[1]


def _image_cfg(config):
  from tinyrs_jax.data.image_processor import ImageProcessorConfig
  lo, hi = image_pixels(config)
  return ImageProcessorConfig(min_pixels=lo, max_pixels=hi)


class _ImagesOnly:
  """What pipeline.usable_buckets needs of a Processor (its image config): the AOT tool has no tokenizer."""

  def __init__(self, image_cfg):
    self.image_cfg = image_cfg


def stage_shapes(config) -> dict:
  """The largest row the stage's data can produce, from the pipeline's own max_batch_shapes with the settings the
  trainers give it (input.pipeline_kwargs): length bucket, patches per image slot, image slots per row."""
  from tinyrs_jax.data import pipeline
  from tinyrs_jax.train import input as input_lib
  kw = input_lib.pipeline_kwargs(config)
  shapes = pipeline.max_batch_shapes(_ImagesOnly(_image_cfg(config)), batch_size=1, mode="prompt",
                                     **{k: kw[k] for k in ("max_length", "length_buckets", "patch_buckets",
                                                          "max_images_per_row")})
  slots, patches, _ = shapes["pixel_values"].shape
  return {"length": shapes["input_ids"].shape[1], "patches": patches, "images_per_row": slots}


def build_programs(config, mesh) -> tuple[list[Program], dict]:
  """(programs of the stage, long-lived buffers {name: abstract tree}) on `mesh` (compile-only devices)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from tinyrs_jax import sharding as sharding_lib
  from tinyrs_jax.models import presets
  from tinyrs_jax.sampling import completions
  from tinyrs_jax.sampling import generate as gen_lib
  from tinyrs_jax.train import input as input_lib
  from tinyrs_jax.train import losses as losses_lib
  from tinyrs_jax.train import metrics as metrics_lib
  from tinyrs_jax.train import optimizer as optim_lib
  from tinyrs_jax.train import state as state_lib

  cfg = presets.get_preset(config.model.preset)
  model = state_lib.make_model(cfg, dtype=config.model.dtype, param_dtype=config.model.get("param_dtype", "float32"),
                               remat_policy=config.model.get("remat_policy", "none"))
  if config.trainer not in ("sft", "grpo", "eval"):
    raise ValueError(f"tools/aot knows the trainers sft, grpo and eval, not {config.trainer!r}")
  opt = optim_lib.make_optimizer(config.optim, model.abstract_params, 1000)
  sh = state_lib.state_shardings(model, opt, mesh)
  abstract = state_lib.abstract_state(model, opt, sh)
  shapes = stage_shapes(config)
  length, patches, m = shapes["length"], shapes["patches"], shapes["images_per_row"]
  accum = int(config.get("grad_accum_steps", 1))
  if config.batch_size % accum:
    raise ValueError(f"batch_size {config.batch_size} not divisible by grad_accum_steps {accum}")
  micro = config.batch_size // accum
  data_axes = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.trainer != "eval":  # evaluation has no training batch; eval.batch_size is checked below
    input_lib.check_batch_split(micro, data_axes, 1, "microbatch (batch_size / grad_accum_steps)")
  patch_dim = cfg.vision.patch_dim
  trainable = opt.trainable

  def sds(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(shape), dtype)

  def placed(batch, accum_axis):
    bsh = state_lib.batch_shardings(mesh, batch, accum if accum_axis else 1)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh[k]) for k, v in batch.items()}, bsh

  def stack(batch):
    return {k: sds((accum,) + v.shape, v.dtype) for k, v in batch.items()} if accum > 1 else batch

  def lower_step(fn, state_abs, state_sh, batch, *, donate, out_shardings=None, accum_axis=True):
    """The trainers' own compile path (state.CompiledStep: their jit, shardings and donation)."""
    step = state_lib.CompiledStep(fn, mesh, state_sh, donate=donate, grad_accum=accum if accum_axis else 1,
                                  out_shardings=out_shardings)
    return lambda: step.lower(state_abs, batch)

  def host_flops(rows, length_, slots, supervised=True):
    b = {"attention_mask": np.ones((rows, length_), np.int32),
         "image_grid_thw": np.tile(np.asarray([[1, int(math.isqrt(patches)), patches // int(math.isqrt(patches))]]),
                                   (slots, 1))}
    if not supervised:
      b["loss_mask"] = np.zeros((rows, length_), np.int32)
    return metrics_lib.batch_model_flops(cfg, b, train_vision=trainable["vision"], train_merger=trainable["merger"])

  live = {"train_state": abstract}
  programs: list[Program] = []
  if config.trainer == "sft":
    from tinyrs_jax.train import sft
    loss_fn = sft.make_loss_fn(config.loss)
    one = {"input_ids": sds((micro, length), jnp.int32), "attention_mask": sds((micro, length), jnp.int32),
           "loss_mask": sds((micro, length), jnp.int32), "pixel_values": sds((micro * m, patches, patch_dim),
                                                                            jnp.float32),
           "image_grid_thw": sds((micro * m, 3), jnp.int32)}
    step = state_lib.make_train_step(model, opt, loss_fn, grad_accum=accum)
    programs.append(Program("train_step", lower_step(step, abstract, sh, stack(one), donate=True),
                            live_args=("train_state",), rows=config.batch_size,
                            model_flops=accum * host_flops(micro, length, micro * m)))
    eval_rows = input_lib.eval_batch_size(config)
    input_lib.check_batch_split(eval_rows, data_axes, 1, "eval batch size")
    ev = {k: sds((eval_rows,) + v.shape[1:], v.dtype) for k, v in one.items()}
    ev["pixel_values"] = sds((eval_rows * m, patches, patch_dim), jnp.float32)
    ev["image_grid_thw"] = sds((eval_rows * m, 3), jnp.int32)
    programs.append(Program("eval_step", lower_step(state_lib.make_eval_step(model, loss_fn), abstract.params,
                                                    sh.params, ev, donate=False,
                                                    out_shardings=state_lib.replicated(mesh), accum_axis=False),
                            live_args=("train_state.params",),
                            model_flops=host_flops(eval_rows, length, eval_rows * m) / 3.0))
    return programs, live

  # ------------------------------------------------------------------------- generation (GRPO, evaluation)
  compute_dtype = jnp.bfloat16 if str(config.model.dtype) in ("bfloat16", "bf16") else jnp.float32
  key = jax.eval_shape(lambda: jax.random.key(0))
  f32, i32 = jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32)
  rep = state_lib.replicated(mesh)
  with_rep = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep)  # noqa: E731
  # decode's stop tokens: the trainers' set is the tokenizer's eos ids and the config's (completions.eos_ids); without
  # a tokenizer the config names them (completions.config_eos_ids), so the array has the run's shape
  eos = jax.eval_shape(lambda: jnp.asarray(gen_lib.eos_array(completions.config_eos_ids(cfg))))

  def rollout(name, params, live_arg, rows, *, samples, max_new, temperature, top_k=0, top_p=1.0):
    """prefill + decode loop of sampling/generate.py for `rows` prompts x `samples`, `max_new` new tokens, with
    the static settings generate() derives (gen_lib.plan) and the trainers' stop-token count."""
    graphdef, state = nnx.split(model.merge(params))
    plan = gen_lib.plan(cfg, length, max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                        num_samples=samples, mesh=mesh)
    prompt = {"input_ids": sds((rows, length), jnp.int32), "attention_mask": sds((rows, length), jnp.int32),
              "pixel_values": sds((rows * m, patches, patch_dim), jnp.float32),
              "image_grid_thw": sds((rows * m, 3), jnp.int32)}
    b, _ = placed(prompt, False)
    args = (state, b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"], with_rep(key),
            with_rep(f32), with_rep(i32), with_rep(f32))

    def lower_prefill():
      with sharding_lib.use_mesh(mesh):
        return gen_lib.prefill.lower(graphdef, *args, **plan.prefill_static())

    n = rows * samples
    row_sh = sharding_lib.named_sharding(mesh, ("batch",), (n,))

    def lower_decode():
      with sharding_lib.use_mesh(mesh):
        out = jax.eval_shape(lambda *a: gen_lib.prefill(graphdef, *a, **plan.prefill_static()), *args)
        cache = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), out[0],
                             gen_lib.cache_shardings(out[0], mesh))
        tok = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=row_sh)
        lp = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=row_sh)
        return plan.decode_fn.lower(graphdef, state, cache, tok, lp, tok, with_rep(i32), with_rep(i32),
                                    with_rep(key), with_rep(f32), with_rep(i32), with_rep(f32), with_rep(eos),
                                    with_rep(i32), **plan.decode_static())

    # rollout FLOPs: prefill of the prompts, then one token per sample per step (forward only: 1/3 of training)
    fwd = host_flops(rows, length, rows * m, supervised=False) / 3.0
    per_token = metrics_lib.text_flops_per_token(cfg) + 2.0 * cfg.text.hidden_size * cfg.text.vocab_size
    return [Program(f"{name}_prefill", lower_prefill, live_args=(live_arg,), model_flops=fwd, rows=n),
            Program(f"{name}_decode", lower_decode, live_args=(live_arg,), model_flops=per_token * n * max_new,
                    loop="new_tokens", rows=n)]

  def option_scoring(params, rows):
    """evaluator.option_scores' pass: every prompt with its MC_OPTIONS options of up to MC_OPTION_TOKENS tokens
    (a benchmark's own count and width set the real shape; these are LHRS-Bench's A-D with room to spare)."""
    k, width = MC_OPTIONS, MC_OPTION_TOKENS
    batch = {"prompt_ids": sds((rows, length), jnp.int32), "prompt_mask": sds((rows, length), jnp.int32),
             "pixel_values": sds((rows * m, patches, patch_dim), jnp.float32),
             "image_grid_thw": sds((rows * m, 3), jnp.int32), "completion_ids": sds((rows * k, width), jnp.int32),
             "completion_mask": sds((rows * k, width), jnp.int32)}
    chunk = int(config.loss.get("chunk_size", 256))
    fn = lambda p, b: losses_lib.completion_logprobs(model.merge(p), b, temperature=1.0,  # noqa: E731
                                                     chunk_size=chunk)
    lower = lower_step(fn, params, jax.tree.map(lambda x: x.sharding, params), batch, donate=False,
                       out_shardings=sharding_lib.named_sharding(mesh, ("batch", None)), accum_axis=False)
    return Program("option_logprobs", lower, live_args=("params",),
                   model_flops=host_flops(rows * k, length + width, rows * m, supervised=False) / 3.0)

  if config.trainer == "eval":  # the evaluator: parameters only, cast once to the compute dtype, greedy answers
    e = config.eval
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, compute_dtype, sharding=s),
                          model.abstract_params, sh.params)
    rows = int(e.batch_size)
    input_lib.check_batch_split(rows, data_axes, 1, "eval.batch_size")
    progs = rollout("generate", params, "params", rows, samples=1, max_new=int(e.max_new_tokens), temperature=0.0)
    if e.get("mc_mode", "generate") == "loglik":  # multiple choice scored by each option's log-probability
      progs.append(option_scoring(params, rows))
    return progs, {"params": params}

  # ---------------------------------------------------------------------------------------------- GRPO
  from tinyrs_jax.train import grpo_trainer
  g = config.grpo
  group, max_new = int(g.num_generations), int(g.max_new_tokens)
  prompts = config.batch_size
  input_lib.check_batch_split(prompts, data_axes, 1, "batch_size (prompts per step)")
  beta = float(g.beta)
  mu = int(g.num_iterations)
  if beta != 0:  # the frozen reference policy, held in the compute dtype, sharded like the params
    live["ref_params"] = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, compute_dtype, sharding=s),
                                      model.abstract_params, sh.params)
  programs += rollout("rollout", abstract.params, "train_state.params", prompts, samples=group, max_new=max_new,
                      temperature=float(g.temperature), top_k=int(g.top_k), top_p=float(g.top_p))
  pm = prompts // accum
  n_micro = pm * group
  shapes_of = {"prompt_ids": (pm, length), "prompt_mask": (pm, length), "pixel_values": (pm * m, patches, patch_dim),
               "image_grid_thw": (pm * m, 3), "completion_ids": (n_micro, max_new),
               "completion_mask": (n_micro, max_new)}
  grpo_batch = {k: sds(shapes_of[k], jnp.float32 if k == "pixel_values" else jnp.int32)
                for k in grpo_trainer.SCORE_KEYS}  # what the trainer scores
  score_fn = grpo_trainer.make_score_fn(model, temperature=float(g.temperature), chunk_size=int(config.loss.chunk_size),
                                        grad_accum=accum)
  logp_sh = sharding_lib.named_sharding(mesh, ((None,) if accum > 1 else ()) + ("batch", None))
  score_flops = host_flops(n_micro, length + max_new, n_micro * m, supervised=False) / 3.0 * accum
  if beta != 0:
    ref_abs = live["ref_params"]
    programs.append(Program("ref_logps", lower_step(score_fn, ref_abs, jax.tree.map(lambda x: x.sharding, ref_abs),
                                                    stack(grpo_batch), donate=False, out_shardings=logp_sh),
                            live_args=("ref_params",), model_flops=score_flops))
  if mu > 1:
    programs.append(Program("old_logps", lower_step(score_fn, abstract.params, sh.params, stack(grpo_batch),
                                                    donate=False, out_shardings=logp_sh),
                            live_args=("train_state",), model_flops=score_flops))
  update = dict(grpo_batch, sampler_logps=sds((n_micro, max_new), jnp.float32), advantages=sds((n_micro,), jnp.float32))
  if beta != 0:
    update["ref_logps"] = sds((n_micro, max_new), jnp.float32)
  if mu > 1:
    update["old_logps"] = sds((n_micro, max_new), jnp.float32)
  step = grpo_trainer.make_update_step(config, model, opt)
  programs.append(Program("update", lower_step(step, abstract, sh, stack(update), donate=True),
                          live_args=("train_state",), model_flops=3.0 * score_flops, rows=prompts * group))
  eval_rows = int(config.eval.get("batch_size", 0) or config.batch_size)
  input_lib.check_batch_split(eval_rows, data_axes, 1, "eval batch size")
  programs += rollout("eval", abstract.params, "train_state.params", eval_rows, samples=1, max_new=max_new,
                      temperature=0.0)
  return programs, live

