#!/usr/bin/env bash
# The 2B on a real GPU, in one short run (well under 10 minutes): for the day a GPU machine is lent.
#
#   bash benchmarks/gpu_check.sh [STEPS]           # on the GPU machine, from the repository root
#
# Prints, for Qwen2-VL-2B in bf16 (random weights: no checkpoint needed) at the one-GPU recipe's microbatch on
# this machine's devices:
#   - SFT: the compiled train step's predicted memory (tools/aot's numbers for this device: arguments + outputs
#     + temporaries - aliased) against what the device reports (memory_stats() peak_bytes_in_use), the step time
#     and the MFU (model FLOPs as the trainer counts them / time / the device's bf16 peak);
#   - the step's tools/aot roofline estimate (compiled HLO, loop bodies x trip counts, this chip's facts) against
#     the measured step: predicted / measured;
#   - GRPO rollout: completion tokens/s of generate() with G samples per prompt (prefill + decode, greedy-free
#     sampling at temperature 1), and its memory peak.
# Settings: one microbatch of the one-H100 recipe (8 rows per GPU: --config.grad_accum_steps=16), on an fsdp mesh
# over every GPU present; tools/aot's prediction is for exactly that program. The 8-GPU box's defaults run 16
# rows per GPU data-parallel instead (docs/fitting.md, "The real 2B recipe").
set -euo pipefail
STEPS="${1:-5}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-.95}"
python - "$STEPS" <<'PY'
import sys, time
import jax, jax.numpy as jnp, numpy as np

steps = int(sys.argv[1])
sys.path.insert(0, "configs")
import pretrain, grpo  # noqa: E402
from tinyrs_jax import sharding as sharding_lib
from tinyrs_jax.models import presets
from tinyrs_jax.sampling import generate as gen_lib
from tinyrs_jax.tools import aot
from tinyrs_jax.train import metrics as metrics_lib
from tinyrs_jax.train import optimizer as optim_lib
from tinyrs_jax.train import state as state_lib

dev = jax.devices()[0]
n = jax.device_count()
print(f"{n} x {dev.device_kind} ({dev.platform}), jax {jax.__version__}", flush=True)
peak = metrics_lib.peak_flops_per_device(0.0)

def peak_bytes():
  s = dev.memory_stats() or {}
  return s.get("peak_bytes_in_use", 0), s.get("bytes_limit", 0)

# ------------------------------------------------------------------ SFT step (the recipe's per-device microbatch)
c = pretrain.get_config()
c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, n, 1
c.grad_accum_steps = 1
c.batch_size = 8 * n  # 8 rows of 2048 tokens + 8 images of 5120 patches per GPU: the one-H100 recipe's microbatch
#                       (128 / grad_accum_steps 16; docs/fitting.md, "The real 2B recipe")
mesh = sharding_lib.make_mesh(1, n, 1)
programs, live = aot.build_programs(c, mesh)
train = next(p for p in programs if p.name == "train_step")
t0 = time.time()
compiled = train.lower().compile()
ma = compiled.memory_analysis()
pred = ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes - ma.alias_size_in_bytes
print(f"train_step compiled in {time.time() - t0:.0f}s; predicted {pred / 2**30:.2f} GiB per device "
      f"(args {ma.argument_size_in_bytes / 2**30:.2f}, temps {ma.temp_size_in_bytes / 2**30:.2f})", flush=True)
model = state_lib.make_model(presets.get_preset(c.model.preset), dtype=c.model.dtype,
                             remat_policy=c.model.remat_policy)
opt = optim_lib.make_optimizer(c.optim, model.abstract_params, 1000)
sh = state_lib.state_shardings(model, opt, mesh)
state = state_lib.init_state(model, opt, sh, 0)
shapes = aot.stage_shapes(c)
rows, L, P = c.batch_size, shapes["length"], shapes["patches"]
rng = np.random.default_rng(0)
side = int(np.sqrt(P))
host = {"input_ids": rng.integers(3, 150000, (rows, L)).astype(np.int32),
        "attention_mask": np.ones((rows, L), np.int32), "loss_mask": np.ones((rows, L), np.int32),
        "pixel_values": rng.normal(size=(rows, P, 1176)).astype(np.float32),
        "image_grid_thw": np.tile(np.asarray([[1, side, P // side]], np.int32), (rows, 1))}
host["input_ids"][:, 10:10 + P // 4] = model.cfg.image_token_id  # one image's tokens per row
bsh = state_lib.batch_shardings(mesh, host)
batch = {k: jax.device_put(v, bsh[k]) for k, v in host.items()}
state, m = compiled(state, batch)
jax.block_until_ready(m)
t0 = time.time()
for _ in range(steps):
  state, m = compiled(state, batch)
jax.block_until_ready(m)
dt = (time.time() - t0) / steps
flops = metrics_lib.batch_model_flops(model.cfg, host)
got, limit = peak_bytes()
print(f"SFT step: {dt:.3f} s for {rows} x {L} tokens + {rows} images of {P} patches; MFU {flops / dt / (peak * n):.1%}; "
      f"loss {float(m['loss']):.3f}", flush=True)
print(f"memory: predicted {pred / 2**30:.2f} GiB, device peak {got / 2**30:.2f} GiB (limit {limit / 2**30:.2f})",
      flush=True)
# tools/aot's roofline estimate of this compiled step (cost.py: loop bodies x trip counts) on this device's chip facts
from tinyrs_jax.tools.aot import cost as cost_lib
chip = aot.CHIPS["h200" if "H200" in dev.device_kind else "h100"]
c_step = cost_lib.program_cost(compiled.as_text()).fixed
est = cost_lib.roofline_s(c_step, chip.peak_tflops * 1e12, chip.hbm_bandwidth, chip.interconnect)
print(f"estimate: {est:.3f} s (roofline lower bound; FLOPs alone {c_step.flops / (chip.peak_tflops * 1e12):.3f} s; "
      f"{c_step.flops / 1e12:.1f} TFLOP, {c_step.bytes / 1e9:.1f} GB per device), measured {dt:.3f} s: "
      f"predicted / measured {est / dt:.2f}", flush=True)
del state, batch, compiled

# ------------------------------------------------------------------ GRPO rollout tokens/s
g = grpo.get_config()
G, new = int(g.grpo.num_generations), 256
params = jax.jit(model.build, out_shardings=model.param_shardings(mesh))(jax.random.PRNGKey(1))
policy = model.merge(params)
prompts = 8 * n
plen = 1024
ids = rng.integers(3, 150000, (prompts, plen)).astype(np.int32)
ids[:, 10:10 + 1024 // 4] = model.cfg.image_token_id
side = 32
prompt = {"input_ids": ids, "attention_mask": np.ones_like(ids),
          "pixel_values": rng.normal(size=(prompts, 1024, 1176)).astype(np.float32),
          "image_grid_thw": np.tile(np.asarray([[1, side, 1024 // side]], np.int32), (prompts, 1))}
kw = dict(max_new_tokens=new, temperature=1.0, num_samples=G, eos_token_ids=[-1], length_buckets=(plen,), mesh=mesh)
gen_lib.generate(policy, prompt, seed=0, **kw)  # compile
t0 = time.time()
out = gen_lib.generate(policy, prompt, seed=1, **kw)
dt = time.time() - t0
got, _ = peak_bytes()
print(f"GRPO rollout: {prompts} prompts x G={G} x {new} new tokens (prompt {plen}): {out.lengths.sum() / dt:.0f} "
      f"completion tokens/s ({dt:.1f} s); device peak {got / 2**30:.2f} GiB", flush=True)
PY
