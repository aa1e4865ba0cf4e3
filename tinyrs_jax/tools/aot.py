"""Will it fit? Ahead-of-time compiles of every program a stage runs, for a TPU topology or GPUs, on this CPU.

    pip install -e ".[tpu]"      # libtpu: compiles for TPU topologies without a TPU
    python -m tinyrs_jax.tools.aot --config=configs/pretrain.py --target=v5e-16 [--config.field=value ...]
    python -m tinyrs_jax.tools.aot --config=configs/grpo.py --target=v5p-8 --json=/tmp/grpo_v5p.json
    pip install -e ".[gpu]"      # jax[cuda12]: the same for GPUs (compile-only devices, no driver needed)
    python -m tinyrs_jax.tools.aot --config=configs/cot.py --target=h100x8

For the stage's real shapes (its batch and microbatch, the largest length bucket its max_length allows, the
patches its data.max_pixels give an image, G and max_new_tokens for GRPO) it lowers and compiles, on the target's
mesh (config.mesh), exactly the programs the trainer runs:
  SFT stages   train_step (state.make_train_step, donated state) and eval_step;
  GRPO         rollout_prefill / rollout_decode (sampling/generate.py's jitted parts, G samples per prompt),
               ref_logps (the scoring pass, grpo_trainer.make_score_fn, when beta > 0; old_logps too when
               num_iterations > 1), update (the train step with the registered "grpo" loss on the batch
               grpo_trainer.train_step builds), eval_prefill / eval_decode (greedy held-out generation);
  evaluation   generate_prefill / generate_decode (configs/eval.py: eval.batch_size prompts, greedy, bf16
               parameters only; data.max_pixels 0, "the checkpoint's own", is taken as the stages' 1280*28*28),
               and option_logprobs with eval.mc_mode=loglik (4 options of up to 16 tokens per prompt).
Per chip it prints arguments, outputs, temporaries, aliased bytes and "other live": long-lived buffers the
program does not take but which stay in device memory while it runs (the optimizer state during a rollout, the
frozen reference model). total = arguments + outputs + temporaries - aliased + other live, against the chip's
capacity; FLOPs per step from the compiled program (cost_analysis; XLA counts a loop body once, so scanned
layers are under-counted) and from the model's own count, and the MFU a step of --step_time seconds would
reach. TPU: libtpu refuses a program above the chip's memory (RESOURCE_EXHAUSTED); that is reported as not
fitting, with the bytes it asked for. GPU: a compile never fails for size; the total is compared with the
share of the device's memory JAX preallocates: 75 % unless XLA_PYTHON_CLIENT_MEM_FRACTION (read here too) says
otherwise.

Exit status 0 when every program fits, 1 when one does not. When something does not fit, the standard levers
are tried in order, each kept once tried: remat_policy=full, fsdp over all chips (of a slice), more
microbatches (grad_accum_steps; for evaluation, fewer prompts per batch: eval.batch_size), a smaller image budget
(data.max_pixels); the first configuration that fits is printed as the --config. flags to add.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time
from typing import Any, Callable

# Set for the compile only (see _libtpu_env) rather than at import, so importing this module changes nothing.
# (libtpu itself sets TPU_* variables in the process that loads it, which its later subprocesses inherit and
# then load libtpu too: run the tool in a process of its own, as the CLI does and tests/test_aot.py does.)
LIBTPU_ENV = {"TPU_SKIP_MDS_QUERY": "1",  # no metadata server to ask: this is not a TPU VM
              "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}  # compile-only: several processes may load libtpu


class _libtpu_env:
  """Sets LIBTPU_ENV (where unset) for the block and restores os.environ after it."""

  def __enter__(self):
    self.saved = {k: os.environ.get(k) for k in LIBTPU_ENV}
    for k, v in LIBTPU_ENV.items():
      os.environ.setdefault(k, v)

  def __exit__(self, *exc):
    for k, v in self.saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v

GiB = 1024 ** 3

# ------------------------------------------------------------------------------------------------ targets


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  platform: str  # "tpu" or "cuda"
  topology: str  # TPU: "v5e:4x4"; GPU: "partitions x hosts x devices per host", e.g. "1x1x8"
  chip: str  # key of CHIPS
  num_slices: int = 1
  mem_fraction: float = 0.0  # GPU: the share of device memory JAX takes; 0: XLA_PYTHON_CLIENT_MEM_FRACTION or .75
  headroom: float = -1.0  # share of the capacity kept free for what no program accounts for; < 0: the default

  @property
  def spec(self) -> "Chip":
    return CHIPS[self.chip]

  @property
  def capacity(self) -> int:
    """Bytes a program may use per device: TPU, what libtpu reports; GPU, the share JAX preallocates."""
    if self.platform != "cuda":
      return self.spec.capacity
    return int(self.spec.capacity * (self.mem_fraction or gpu_mem_fraction()))

  @property
  def limit(self) -> int:
    """What a program's total may reach to count as fitting: the capacity less the headroom. By default 5 % on
    GPUs, which also hold NCCL's buffers, the allocator's fragmentation and autotuning scratch outside the
    compiled program, and none on TPUs, whose compiler allocates statically against the chip's exact HBM."""
    headroom = self.headroom if self.headroom >= 0 else (GPU_HEADROOM if self.platform == "cuda" else 0.0)
    return int(self.capacity * (1.0 - headroom))

  @property
  def num_chips(self) -> int:
    return math.prod(int(x) for x in self.topology.split(":")[-1].split("x")) // self.spec.per_chip_devices_div \
        * self.num_slices


@dataclasses.dataclass(frozen=True)
class Chip:
  kind: str
  capacity: int  # bytes a program may use per device
  peak_tflops: float  # bf16 dense
  chip_config: str = "default"  # TPU: "megacore" for v4 / v5p
  per_chip_devices_div: int = 1
  gpu_spec: str = ""  # GPU: GpuTargetConfigProto text


def _gpu_spec(name: str, sms: int, bandwidth: float, l2: int, clock: float, memory: int) -> str:
  """A minimal GpuTargetConfigProto (text) for a Hopper GPU; runtime and cuDNN versions set so the GEMM
  rewriter uses cuBLASLt as on a real machine."""
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: {sms}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(bandwidth)}
  l2_cache_size: {l2}
  clock_rate_ghz: {clock}
  device_memory_size: {memory}
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 patch: 0 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{name}"
"""


H100_BYTES = 84_942_979_072  # XLA's GPU specs, H100 SXM
H200_BYTES = 151_397_597_184

# Capacities of TPU chips: what libtpu reports as available when it refuses a bigger program (measured here).
CHIPS = {
    "v4": Chip("TPU v4", int(30.75 * GiB), 275.0, "megacore"),
    "v5e": Chip("TPU v5 lite", int(15.75 * GiB), 197.0),
    "v5p": Chip("TPU v5", int(95.74 * GiB), 459.0, "megacore"),
    "v6e": Chip("TPU v6 lite", int(31.25 * GiB), 918.0),
    "h100": Chip("NVIDIA H100 80GB HBM3", H100_BYTES, 989.0,
                 gpu_spec=_gpu_spec("NVIDIA H100 80GB HBM3", 132, 3.35e12, 52428800, 1.98, H100_BYTES)),
    "h200": Chip("NVIDIA H200", H200_BYTES, 989.0,
                 gpu_spec=_gpu_spec("NVIDIA H200", 132, 4.8e12, 52428800, 1.98, H200_BYTES)),
}

TARGETS = {
    "v4-8": Target("v4-8", "tpu", "v4:2x2x1", "v4"),
    "v5e-8": Target("v5e-8", "tpu", "v5e:2x4", "v5e"),
    "v5e-16": Target("v5e-16", "tpu", "v5e:4x4", "v5e"),
    "v5p-8": Target("v5p-8", "tpu", "v5:2x2x1", "v5p"),
    "v6e-8": Target("v6e-8", "tpu", "v6e:2x4", "v6e"),
    "h100x1": Target("h100x1", "cuda", "1x1x1", "h100"),
    "h100x8": Target("h100x8", "cuda", "1x1x8", "h100"),
    "h200x1": Target("h200x1", "cuda", "1x1x1", "h200"),
    "h200x8": Target("h200x8", "cuda", "1x1x8", "h200"),
}
_TOPOLOGY_CHIP = {"v4": "v4", "v5e": "v5e", "v5litepod": "v5e", "v5": "v5p", "v5p": "v5p", "v6e": "v6e"}


def parse_target(name: str) -> Target:
  """A named target (TARGETS), `<named>x<slices>` (multi-slice, e.g. v5e-16x2), `h100x16` (GPUs: 8 per host),
  or a raw TPU topology `v5e:4x8` (optionally `v5e:4x8/2` for 2 slices)."""
  if name in TARGETS:
    t = TARGETS[name]
    return t
  m = re.fullmatch(r"(v[\w-]+-\d+)x(\d+)", name)
  if m and m.group(1) in TARGETS and TARGETS[m.group(1)].platform == "tpu":
    return dataclasses.replace(TARGETS[m.group(1)], name=name, num_slices=int(m.group(2)))
  m = re.fullmatch(r"(h100|h200)x(\d+)", name)
  if m:
    return _gpu_target(name, m.group(1), int(m.group(2)))
  m = re.fullmatch(r"(v\w+):([\dx]+)(?:/(\d+))?", name)
  if m and m.group(1) in _TOPOLOGY_CHIP:
    return Target(name, "tpu", f"{m.group(1)}:{m.group(2)}", _TOPOLOGY_CHIP[m.group(1)], int(m.group(3) or 1))
  raise ValueError(f"unknown target {name!r}; named: {sorted(TARGETS)}, or <tpu target>x<slices> (v5e-16x2), "
                   "h100x<n> / h200x<n>, or a raw TPU topology such as v5e:4x8 (v5e:4x8/2 for two slices)")


def gpu_mem_fraction() -> float:
  """What JAX will preallocate on a GPU: XLA_PYTHON_CLIENT_MEM_FRACTION, else its default 75 %."""
  return float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "") or 0.75)


def _gpu_target(name: str, chip: str, n: int) -> Target:
  hosts, per_host = (1, n) if n <= 8 else (n // 8, 8)
  if hosts * per_host != n:
    raise ValueError(f"{name}: more than 8 GPUs come as whole hosts of 8")
  return Target(name, "cuda", f"1x{hosts}x{per_host}", chip)


GPU_HEADROOM = 0.05

_DEVICES: dict = {}


def target_devices(target: Target) -> list:
  """Compile-only devices of the target (needs libtpu for TPU, jax[cuda12] for GPU), made once per process:
  programs traced for one mesh must meet the same device objects when the levers rebuild it."""
  key = (target.platform, target.topology, target.chip, target.num_slices)
  if key not in _DEVICES:
    _DEVICES[key] = _make_devices(target)
  return _DEVICES[key]


def _make_devices(target: Target) -> list:
  import jax
  from jax.experimental import topologies
  if target.platform == "tpu":
    try:
      import libtpu  # noqa: F401
    except ImportError as e:
      raise RuntimeError("TPU targets need libtpu: pip install -e \".[tpu]\" (jax[tpu] at this jax version)") from e
    kw = dict(platform="tpu", topology_name=target.topology, chip_config_name=target.spec.chip_config)
    dims = [int(x) for x in target.topology.split(":")[1].split("x")] + [1]
    if dims[0] < 2 or dims[1] < 2:  # fewer chips than a host holds (e.g. v5e:1x1): a host of that size
      kw["chips_per_host_bounds"] = (min(dims[0], 2), min(dims[1], 2), 1)
    if target.num_slices > 1:
      kw["num_slices"] = target.num_slices
    topo = topologies.get_topology_desc(**kw)
  else:
    try:
      topo = topologies.get_topology_desc(platform="cuda", target_config=target.spec.gpu_spec,
                                          topology=target.topology)
    except Exception as e:
      raise RuntimeError(f"GPU targets need the CUDA plugin (pip install -e \".[gpu]\") and jax_platforms=cpu "
                         f"on a machine without a GPU: {type(e).__name__}: {e}") from e
  devices = list(topo.devices)
  if target.num_slices > 1:  # slices outermost, so the data axis (over slices) crosses DCN
    devices.sort(key=lambda d: (getattr(d, "slice_index", 0), d.id))
  del jax
  return devices


# ------------------------------------------------------------------------------------------------ programs


@dataclasses.dataclass
class Program:
  name: str
  lower: Callable[[], Any]  # () -> jax.stages.Lowered
  live_args: tuple[str, ...] = ()  # which long-lived buffers (of the stage's live set) are its arguments
  model_flops: float = 0.0  # per step, all devices


@dataclasses.dataclass
class Result:
  name: str
  fits: bool
  arguments: int = 0
  outputs: int = 0
  temporaries: int = 0
  aliased: int = 0
  other_live: int = 0
  total: int = 0
  capacity: int = 0
  limit: int = 0  # the capacity less the headroom: the verdict's bound
  flops_compiled: float = 0.0
  model_flops_per_chip: float = 0.0
  mfu: float = 0.0
  compile_s: float = 0.0
  error: str = ""


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs / arrays with shardings (the largest shard)."""
  import jax
  import numpy as np
  total = 0
  for x in jax.tree.leaves(tree):
    shape = tuple(x.shape)
    sh = getattr(x, "sharding", None)
    if sh is not None and shape:
      shape = sh.shard_shape(shape)
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def _load_config_module(path: str):
  import importlib.util
  name, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location(f"_aot_config_{os.path.basename(name)[:-3]}", name)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg or None)


RECIPE_PIXELS = (512 * 28 * 28, 1280 * 28 * 28)  # configs/common.py: what the stages train at
MC_OPTIONS, MC_OPTION_TOKENS = 4, 16  # evaluation with mc_mode=loglik: the options compiled per prompt


def image_pixels(config) -> tuple[int, int]:
  """(min_pixels, max_pixels) of the stage; evaluation's 0 ("the checkpoint's own") is what our stages train at
  and write into their checkpoints (set data.max_pixels to evaluate at another budget)."""
  lo, hi = int(config.data.min_pixels), int(config.data.max_pixels)
  return lo or min(RECIPE_PIXELS[0], hi or RECIPE_PIXELS[1]), hi or RECIPE_PIXELS[1]


def _image_cfg(config):
  from tinyrs_jax.data.image_processor import ImageProcessorConfig
  lo, hi = image_pixels(config)
  return ImageProcessorConfig(min_pixels=lo, max_pixels=hi)


class _ImagesOnly:
  """What pipeline.usable_buckets needs of a Processor (its image config): the AOT tool has no tokenizer."""

  def __init__(self, image_cfg):
    self.image_cfg = image_cfg


def stage_shapes(config) -> dict:
  """The largest shapes the stage's data can produce: length bucket, patches per image slot."""
  from tinyrs_jax.data import pipeline
  from tinyrs_jax.models import batch as batch_lib
  d = config.data
  lb = tuple(d.length_buckets) or batch_lib.DEFAULT_LENGTH_BUCKETS
  pb = tuple(d.patch_buckets) or batch_lib.DEFAULT_PATCH_BUCKETS
  lengths, patches = pipeline.usable_buckets(_ImagesOnly(_image_cfg(config)), max_length=int(d.max_length),
                                             length_buckets=lb, patch_buckets=pb)
  return {"length": lengths[-1], "patches": patches[-1], "images_per_row": 1}


def build_programs(config, mesh) -> tuple[list[Program], dict]:
  """(programs of the stage, long-lived buffers {name: abstract tree}) on `mesh` (compile-only devices)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from tinyrs_jax import sharding as sharding_lib
  from tinyrs_jax.models import batch as batch_lib
  from tinyrs_jax.models import presets
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
    b, bsh = placed(batch, accum_axis)
    jitted = jax.jit(fn, in_shardings=(state_sh, bsh), out_shardings=out_shardings,
                     donate_argnums=(0,) if donate else ())

    def lower():
      with sharding_lib.use_mesh(mesh):
        return jitted.lower(state_abs, b)
    return lower

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
    loss_cfg = config.loss
    kwargs = {k: v for k, v in loss_cfg.items() if k != "name"}
    loss = losses_lib.get_loss(loss_cfg.name)
    loss_fn = lambda mdl, b, r: loss(mdl, b, r, **kwargs)  # noqa: E731
    one = {"input_ids": sds((micro, length), jnp.int32), "attention_mask": sds((micro, length), jnp.int32),
           "loss_mask": sds((micro, length), jnp.int32), "pixel_values": sds((micro * m, patches, patch_dim),
                                                                            jnp.float32),
           "image_grid_thw": sds((micro * m, 3), jnp.int32)}
    step = state_lib.make_train_step(model, opt, loss_fn, grad_accum=accum)
    programs.append(Program("train_step", lower_step(step, abstract, sh, stack(one), donate=True),
                            live_args=("train_state",),
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
  unroll = False  # TPU / GPU: decode scans the stacked layers (no weight copy)

  def rollout(name, params, live_arg, rows, *, samples, max_new, mode):
    """prefill + decode_loop of sampling/generate.py for `rows` prompts x `samples`, `max_new` new tokens."""
    graphdef, state = nnx.split(model.merge(params))
    buffer = batch_lib.round_up_to_bucket(max_new, gen_lib.NEW_TOKEN_BUCKETS)
    prompt = {"input_ids": sds((rows, length), jnp.int32), "attention_mask": sds((rows, length), jnp.int32),
              "pixel_values": sds((rows * m, patches, patch_dim), jnp.float32),
              "image_grid_thw": sds((rows * m, 3), jnp.int32)}
    b, _ = placed(prompt, False)
    args = (state, b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"], with_rep(key),
            with_rep(f32), with_rep(i32), with_rep(f32))
    static = dict(cache_size=length + buffer, num_samples=samples, mode=mode)

    def lower_prefill():
      with sharding_lib.use_mesh(mesh):
        return gen_lib.prefill.lower(graphdef, *args, **static)

    n = rows * samples
    row_sh = sharding_lib.named_sharding(mesh, ("batch",), (n,))

    def lower_decode():
      with sharding_lib.use_mesh(mesh):
        out = jax.eval_shape(lambda *a: gen_lib.prefill(graphdef, *a, **static), *args)
        cache_sh = _cache_shardings(out[0], mesh)
        cache = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), out[0], cache_sh)
        tok = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=row_sh)
        lp = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=row_sh)
        return gen_lib.decode_loop.lower(graphdef, state, cache, tok, lp, tok, with_rep(i32), with_rep(i32),
                                         with_rep(key), with_rep(f32), with_rep(i32), with_rep(f32),
                                         jax.ShapeDtypeStruct((2,), jnp.int32, sharding=rep), with_rep(i32),
                                         buffer=buffer, mode=mode, unroll_layers=unroll)

    # rollout FLOPs: prefill of the prompts, then one token per sample per step (forward only: 1/3 of training)
    fwd = host_flops(rows, length, rows * m, supervised=False) / 3.0
    per_token = metrics_lib.text_flops_per_token(cfg) + 2.0 * cfg.text.hidden_size * cfg.text.vocab_size
    return [Program(f"{name}_prefill", lower_prefill, live_args=(live_arg,), model_flops=fwd),
            Program(f"{name}_decode", lower_decode, live_args=(live_arg,), model_flops=per_token * n * max_new)]

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
    progs = rollout("generate", params, "params", rows, samples=1, max_new=int(e.max_new_tokens), mode="greedy")
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
  sample_mode = "sample" if int(g.top_k) == 0 and float(g.top_p) >= 1.0 else "sample_filtered"
  programs += rollout("rollout", abstract.params, "train_state.params", prompts, samples=group, max_new=max_new,
                      mode=sample_mode)
  pm = prompts // accum
  n_micro = pm * group
  grpo_batch = {"prompt_ids": sds((pm, length), jnp.int32), "prompt_mask": sds((pm, length), jnp.int32),
                "pixel_values": sds((pm * m, patches, patch_dim), jnp.float32),
                "image_grid_thw": sds((pm * m, 3), jnp.int32), "completion_ids": sds((n_micro, max_new), jnp.int32),
                "completion_mask": sds((n_micro, max_new), jnp.int32)}
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
  loss_kwargs = grpo_trainer.grpo_loss_kwargs(config)
  loss = losses_lib.get_loss(config.loss.name)
  step = state_lib.make_train_step(model, opt, lambda mdl, b, r: loss(mdl, b, r, **loss_kwargs), grad_accum=accum)
  programs.append(Program("update", lower_step(step, abstract, sh, stack(update), donate=True),
                          live_args=("train_state",), model_flops=3.0 * score_flops))
  eval_rows = int(config.eval.get("batch_size", 0) or config.batch_size)
  input_lib.check_batch_split(eval_rows, data_axes, 1, "eval batch size")
  programs += rollout("eval", abstract.params, "train_state.params", eval_rows, samples=1, max_new=max_new,
                      mode="greedy")
  return programs, live


def _cache_shardings(cache, mesh):
  """The shardings prefill gives its cache (generate.py's _constrain_cache), for decode's arguments."""
  from tinyrs_jax import sharding as sharding_lib
  names = ("layers", "batch", "length", "act_kv_heads", None)
  return type(cache)(sharding_lib.named_sharding(mesh, names, cache.k.shape),
                     sharding_lib.named_sharding(mesh, names, cache.v.shape),
                     sharding_lib.named_sharding(mesh, ("batch", "length"), cache.key_mask.shape))


# ------------------------------------------------------------------------------------------------ compiling

_COMPILED: dict = {}  # (target, lowered text hash) -> memory numbers, or the compiler's refusal
_EXHAUSTED = re.compile(r"RESOURCE_EXHAUSTED|Ran out of memory|exceeds the memory", re.IGNORECASE)


def _bytes_in(msg: str) -> str:
  found = re.findall(r"([\d.]+)\s*([KMGT])i?B?\b", msg)
  return ", ".join(f"{v}{u}" for v, u in found[:4])


def compile_program(p: Program, target: Target, live_bytes: dict[str, int], step_time: float,
                    log: Callable[[str], None] = print) -> Result:
  cap = target.capacity
  other = sum(v for k, v in live_bytes.items()
              if not any(k == a or k.startswith(a + ".") for a in p.live_args))
  # a program that takes the params only still lives beside the optimizer state
  t0 = time.time()
  lowered = p.lower()
  key = (target.name, hashlib.sha1(lowered.as_text().encode()).hexdigest())
  if key not in _COMPILED:  # stages with the same shapes (pretrain, instruct, cot) compile once per process
    try:
      compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001
      msg = str(e)
      if not _EXHAUSTED.search(msg):
        raise
      first = next((line for line in msg.splitlines() if _EXHAUSTED.search(line)), msg.splitlines()[0])
      _COMPILED[key] = f"does not fit (compiler: {first.strip()[:300]})"
    else:
      ma = compiled.memory_analysis()
      try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        flops = float(ca.get("flops", 0.0))
      except Exception:  # noqa: BLE001  (GPU compile-only devices give none)
        flops = 0.0
      _COMPILED[key] = (int(ma.argument_size_in_bytes), int(ma.output_size_in_bytes), int(ma.temp_size_in_bytes),
                        int(ma.alias_size_in_bytes), flops)
  if isinstance(_COMPILED[key], str):
    return Result(p.name, False, capacity=cap, limit=target.limit, other_live=other, compile_s=time.time() - t0,
                  error=_COMPILED[key])
  dt = time.time() - t0
  args, outs, temps, alias, flops = _COMPILED[key]
  total = args + outs + temps - alias + other
  n = target.num_chips
  model_per_chip = p.model_flops / n
  peak = target.spec.peak_tflops * 1e12
  mfu = model_per_chip / (step_time * peak) if step_time > 0 and peak > 0 else 0.0
  return Result(p.name, total <= target.limit, args, outs, temps, alias, other, total, cap, target.limit, flops,
                model_per_chip, mfu, dt)


def live_set_bytes(live: dict) -> dict[str, int]:
  out = {}
  for name, tree in live.items():
    if name == "train_state":
      out["train_state.params"] = per_device_bytes(tree.params)
      out["train_state.opt_state"] = per_device_bytes((tree.opt_state, tree.step, tree.rng))
    else:
      out[name] = per_device_bytes(tree)
  return out


def make_target_mesh(config, devices):
  from tinyrs_jax import sharding as sharding_lib
  m = config.mesh
  return sharding_lib.make_mesh(int(m.data), int(m.fsdp), int(m.tensor), devices=devices)


def run(config, target: Target, *, step_time: float = 1.0, log: Callable[[str], None] = print,
        only: tuple[str, ...] = ()) -> list[Result]:
  devices = target_devices(target)
  mesh = make_target_mesh(config, devices)
  programs, live = build_programs(config, mesh)
  live_bytes = live_set_bytes(live)
  results = []
  for p in programs:
    if only and p.name not in only:
      continue
    r = compile_program(p, target, live_bytes, step_time, log)
    results.append(r)
    log(f"  compiled {p.name} in {r.compile_s:.0f}s: {'fits' if r.fits else 'DOES NOT FIT'}"
        f" ({_fmt(r.total) if r.total else r.error})")
  return results


# ------------------------------------------------------------------------------------------------ levers

def levers(config, target: Target):
  """Cumulative configurations to try, in order: (description flags, config)."""
  c = copy.deepcopy(config)
  flags: dict[str, Any] = {}
  chips_per_slice = target.num_chips // target.num_slices
  if c.model.get("remat_policy", "none") != "full":
    c.model.remat_policy = "full"
    flags["model.remat_policy"] = "full"
    yield dict(flags), copy.deepcopy(c)
  if int(c.mesh.fsdp) != chips_per_slice or int(c.mesh.tensor) != 1:
    for axis, size in (("fsdp", chips_per_slice), ("tensor", 1), ("data", -1)):
      if int(c.mesh[axis]) != size:  # only what changes becomes a flag
        c.mesh[axis] = size
        flags[f"mesh.{axis}"] = size
    yield dict(flags), copy.deepcopy(c)
  data_axes = target.num_chips  # fsdp x data over all chips now
  if c.trainer == "eval":  # no gradients: fewer prompts per generation batch instead of microbatches
    rows = int(c.eval.batch_size)
    while rows % 2 == 0 and (rows // 2) % data_axes == 0:
      rows //= 2
      c.eval.batch_size = rows
      flags["eval.batch_size"] = rows
      yield dict(flags), copy.deepcopy(c)
  accum = int(c.get("grad_accum_steps", 1))
  while c.trainer != "eval":
    accum *= 2
    if c.batch_size % accum or (c.batch_size // accum) % data_axes:
      break
    c.grad_accum_steps = accum
    flags["grad_accum_steps"] = accum
    yield dict(flags), copy.deepcopy(c)
  for blocks in (1024, 768, 512, 256):
    px = blocks * 28 * 28
    lo, hi = image_pixels(c)  # evaluation's 0 is the stages' budget, not "no limit"
    if px >= hi:
      continue
    c.data.max_pixels = px
    if lo > px:
      c.data.min_pixels = px
      flags["data.min_pixels"] = f"{blocks}*28*28"
    flags["data.max_pixels"] = f"{blocks}*28*28"
    yield dict(flags), copy.deepcopy(c)


# ------------------------------------------------------------------------------------------------ report

def _fmt(n: float) -> str:
  return f"{n / GiB:.2f}G"


def table(results: list[Result], target: Target, step_time: float) -> str:
  head = (f"{'program':<16} {'arguments':>10} {'outputs':>9} {'temps':>9} {'aliased':>9} {'other live':>10} "
          f"{'total':>9} {'capacity':>9} {'GFLOP/chip':>11} {'t@peak':>7} {'MFU@' + format(step_time, 'g') + 's':>9}  verdict")
  lines = [head]
  peak = target.spec.peak_tflops * 1e12
  for r in results:
    if r.error:
      lines.append(f"{r.name:<16} {'':>10} {'':>9} {'':>9} {'':>9} {_fmt(r.other_live):>10} {'>cap':>9} "
                   f"{_fmt(r.capacity):>9} {'':>11} {'':>7} {'':>9}  {r.error}")
      continue
    lines.append(f"{r.name:<16} {_fmt(r.arguments):>10} {_fmt(r.outputs):>9} {_fmt(r.temporaries):>9} "
                 f"{_fmt(r.aliased):>9} {_fmt(r.other_live):>10} {_fmt(r.total):>9} {_fmt(r.capacity):>9} "
                 f"{r.model_flops_per_chip / 1e9:>11.0f} {r.model_flops_per_chip / peak:>6.2f}s {r.mfu:>9.1%}  "
                 f"{'fits' if r.fits else 'DOES NOT FIT'}")
  if target.limit < target.capacity:
    lines.append(f"(fits: total <= {_fmt(target.limit)}, the capacity less {1 - target.limit / target.capacity:.0%} "
                 "headroom; --headroom changes it)")
  if target.platform == "cuda":
    lines.append(f"(GPU: capacity is the {target.capacity / target.spec.capacity:.0%} of {_fmt(target.spec.capacity)} JAX preallocates "
                 "(XLA_PYTHON_CLIENT_MEM_FRACTION, default .75); run the job with the same setting)")
  return "\n".join(lines)


def batch_line(config) -> str:
  if config.trainer == "eval":
    return f"eval batch {config.eval.batch_size} prompts, {config.eval.max_new_tokens} new tokens"
  line = f"batch {config.batch_size} / grad_accum {config.get('grad_accum_steps', 1)}"
  if config.trainer == "grpo":
    line += f", G {config.grpo.num_generations}, {config.grpo.max_new_tokens} new tokens"
  return line


def as_flags(flags: dict) -> str:
  return " ".join(f"--config.{k}={v}" for k, v in flags.items())


def main(argv=None) -> int:
  # libtpu is kept out of the environment (tools/libtpu_aside.py): TPU_LIBRARY_PATH is set for this call only.
  from tinyrs_jax.tools import libtpu_aside
  with libtpu_aside.activated(), _libtpu_env():
    return _main(argv)


def _main(argv=None) -> int:
  import argparse
  p = argparse.ArgumentParser(prog="python -m tinyrs_jax.tools.aot", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="configs/<stage>.py[:variant]")
  p.add_argument("--target", required=True, help=f"{', '.join(TARGETS)}, <tpu target>x<slices>, or a topology")
  p.add_argument("--step_time", type=float, default=10.0, help="assumed seconds per step, for the MFU column "
                 "(the t@peak column is the step time at 100 %% MFU)")
  p.add_argument("--json", default="", help="write the results here")
  p.add_argument("--no_levers", action="store_true", help="do not search for a configuration that fits")
  p.add_argument("--only", default="", help="comma-separated program names to compile (default: all)")
  p.add_argument("--headroom", type=float, default=-1.0,
                 help=f"share of the capacity to keep free (default: {GPU_HEADROOM} on GPUs, 0 on TPUs)")
  args, rest = p.parse_known_args(argv)
  config = _load_config_module(args.config)
  overrides = {}
  for a in rest:
    m = re.fullmatch(r"--config\.([\w.]+)=(.*)", a)
    if not m:
      p.error(f"unrecognised argument {a!r} (overrides are --config.field=value)")
    overrides[m.group(1)] = m.group(2)
  _apply_overrides(config, overrides)
  target = parse_target(args.target)
  if args.headroom >= 0:
    target = dataclasses.replace(target, headroom=args.headroom)

  import jax
  jax.config.update("jax_platforms", "cpu")
  only = tuple(x for x in args.only.split(",") if x)
  print(f"{args.config} on {target.name} ({target.num_chips} x {target.spec.kind}, {_fmt(target.capacity)} "
        f"each, a program fits under {_fmt(target.limit)}), mesh data={config.mesh.data} fsdp={config.mesh.fsdp} tensor={config.mesh.tensor}, "
        f"{batch_line(config)}, remat {config.model.remat_policy}, "
        f"max_pixels {image_pixels(config)[1]}", flush=True)
  print(f"  shapes: {stage_shapes(config)}", flush=True)
  results = run(config, target, step_time=args.step_time, only=only)
  print(table(results, target, args.step_time))
  ok = all(r.fits for r in results)
  report = {"config": args.config, "target": target.name, "overrides": overrides, "fits": ok,
            "programs": [dataclasses.asdict(r) for r in results], "suggestion": None}
  print(f"verdict: {'everything fits' if ok else 'DOES NOT FIT'}", flush=True)
  if not ok and not args.no_levers:
    for flags, c in levers(config, target):
      print(f"trying {as_flags(flags)}", flush=True)
      try:
        rs = run(c, target, step_time=args.step_time, only=only, log=lambda s: print(s, flush=True))
      except ValueError as e:  # e.g. a batch the new mesh does not divide
        print(f"  skipped: {e}")
        continue
      if all(r.fits for r in rs):
        print(table(rs, target, args.step_time))
        print(f"fits with: {as_flags(flags)}")
        report["suggestion"] = {"flags": flags, "programs": [dataclasses.asdict(r) for r in rs]}
        break
    else:
      print("no configuration from the standard levers fits: a bigger target, or freeze part of the model "
            "(--config.optim.freeze=vision)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
  return 0 if ok else 1


def _apply_overrides(config, overrides: dict[str, str]) -> None:
  """--config.a.b=value, parsed like ml_collections' flags: the value takes the field's type."""
  import ast
  for path, raw in overrides.items():
    *parents, leaf = path.split(".")
    node = config
    for k in parents:
      node = node[k]
    if leaf not in node:
      raise KeyError(f"--config.{path}: no such field")
    old = node[leaf]
    if isinstance(old, bool):
      value = raw.lower() in ("1", "true", "yes")
    elif isinstance(old, int) and not isinstance(old, bool):
      value = math.prod(int(x) for x in raw.split("*"))  # 1280*28*28 as in the configs
    elif isinstance(old, float):
      value = float(raw)
    elif isinstance(old, tuple):
      value = tuple(ast.literal_eval(raw))
    else:
      value = raw
    with config.unlocked() if hasattr(config, "unlocked") else _null():
      node[leaf] = value


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


if __name__ == "__main__":
  sys.exit(main())
