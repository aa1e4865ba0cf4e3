"""tools/aot: the recipes compiled ahead of time for a TPU v5e-16 (libtpu, no TPU), every program each stage runs,
with the flags docs/fitting.md gives: GRPO at the real 2B, SFT and evaluation at the demo model's size with the
same wiring; a configuration that cannot fit is reported with exit status 1.

libtpu is not in the test extra (it would load in every JAX process): the module's first test installs it aside
under $TINYRS_CACHE (tinyrs_jax/tools/libtpu_aside.py), where only the tool looks; if that fails, under CI=true the
run fails (tests/conftest.py).
"""
import json
import os
import subprocess
import sys

import pytest

from tinyrs_jax.tools import aot  # noqa: E402  (parsing and levers only: no libtpu in this process)
from tinyrs_jax.tools import libtpu_aside  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def libtpu():
  """libtpu for the tool's processes: found (TPU_LIBRARY_PATH, an installed package, the aside copy) or installed
  aside on first use (about 700 MB; seconds from a local index)."""
  path = libtpu_aside.find()
  if path is None:
    try:
      path = libtpu_aside.install()
    except Exception as e:  # the reason names the module: under CI=true this skip fails the run
      pytest.skip(f"could not import 'libtpu': installing it aside failed: {e}")
  return path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The v5e-16 recipe flags (measured with this tool; docs/fitting.md).
SFT_FLAGS = ["--config.mesh.fsdp=16", "--config.grad_accum_steps=2"]
GRPO_FLAGS = ["--config.mesh.fsdp=16"]
GPU_ACCUM = 16  # the one-GPU recipe: --config.grad_accum_steps=16 (microbatch 8)
# Only GRPO compiles the 2B (it runs the most programs: rollout, scoring, update, held-out generation). SFT and
# evaluation compile the same programs with the same wiring (the recipe's mesh, microbatches, remat, dtypes,
# donation, bf16 evaluation parameters) at the demo model's size and small images, in seconds instead of minutes.
TINY = ["--config.model.preset=demo_8m", "--config.data.max_length=256", "--config.data.min_pixels=3136",
        "--config.data.max_pixels=12544"]
TINY_SFT_FLAGS = SFT_FLAGS + TINY + ["--config.batch_size=64"]
TINY_LOGLIK_FLAGS = TINY + ["--config.eval.mc_mode=loglik", "--config.eval.batch_size=16",
                            "--config.eval.max_new_tokens=32"]


def aot_cli(*args):
  """The tool in its own process, as users run it: libtpu sets TPU_* variables in the process that loads it,
  which every later subprocess of a test run would inherit (and load libtpu again, 3 GB)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)  # GPU capacity: JAX's default 75 %
  p = subprocess.run([sys.executable, "-m", "tinyrs_jax.tools.aot", *args], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=1200)
  return p


def run(tmp_path, stage, *flags):
  out = tmp_path / f"{stage}.json"
  p = aot_cli(f"--config=configs/{stage}.py", "--target=v5e-16", "--no_levers", f"--json={out}", *flags)
  return p.returncode, json.loads(out.read_text())


N_PARAMS = 2_208_985_600  # the 2B preset


@pytest.fixture(scope="module")
def v5e_16(tmp_path_factory):
  """Each stage compiled once for a v5e-16: stage -> (exit code, report). grpo is the real 2B recipe (one to
  several minutes on 2 cores); pretrain (standing for the three SFT stages: instruct and cot compile to the same
  programs) and evaluation with mc_mode=loglik (generation + option scoring) are the demo model at the recipe's
  wiring."""
  out = tmp_path_factory.mktemp("aot")
  flags = {"pretrain": TINY_SFT_FLAGS, "grpo": GRPO_FLAGS, "eval_loglik": TINY_LOGLIK_FLAGS}
  done = {}

  def report(stage):
    if stage not in done:
      (out / stage).mkdir()
      done[stage] = run(out / stage, stage.split("_")[0], *flags[stage])
    return done[stage]
  return report


def n_params(preset):
  import math

  from tinyrs_jax.models import presets
  from tinyrs_jax.train import state as state_lib
  model = state_lib.make_model(presets.get_preset(preset))
  import jax
  return sum(math.prod(x.shape) for x in jax.tree.leaves(model.abstract_params))


def fitting_programs(v5e_16, stage, names):
  """The stage's programs by name, after checking that the tool exits 0, says everything fits, and compiled
  exactly `names`."""
  code, report = v5e_16(stage)
  assert code == 0 and report["fits"], report
  progs = {p["name"]: p for p in report["programs"]}
  assert set(progs) == set(names)
  return progs


@pytest.mark.slow
def test_sft_stages_fit_a_v5e_16(v5e_16):
  """The SFT recipe's wiring (fsdp 16, 2 microbatches, full remat, donated fp32 state + AdamW) at the demo
  model's size."""
  step = fitting_programs(v5e_16, "pretrain", ["train_step", "eval_step"])["train_step"]
  # fp32 params + 2 Adam moments, sharded over the 16 chips
  state = 3 * 4 * n_params("demo_8m") / 16
  assert state <= step["arguments"] < 1.5 * state + 2 ** 22, (step["arguments"], state)
  assert step["total"] <= step["capacity"] == int(15.75 * aot.GiB)
  assert step["aliased"] > 0  # the state is donated
  assert step["flops"] > 0 and step["bytes_accessed"] > 0  # the compiled cost, trip counts included


@pytest.mark.slow
def test_grpo_fits_a_v5e_16(v5e_16):
  """Every program of a 2B GRPO step (rollout, reference scoring, update) and its held-out greedy evaluation; the
  step and run estimate beside the verdict."""
  progs = fitting_programs(v5e_16, "grpo", ["rollout_prefill", "rollout_decode", "ref_logps", "update",
                                            "eval_prefill", "eval_decode"])
  est = v5e_16("grpo")[1]["estimate"]
  assert est["lower_bound"] and est["steps"] == 1000 and est["num_chips"] == 16
  assert 0 < est["step_s"] <= est["step_s_at_max"]
  assert est["chip_hours"] == pytest.approx(est["run_s"] * 16 / 3600)
  # the compiled update's FLOPs with all 28 scanned layers counted reach the model's own count (more: full remat
  # recomputes the forward); XLA's cost_analysis, one layer, does not come close
  u = progs["update"]
  assert u["flops"] >= 0.9 * u["model_flops_per_chip"] > 2 * u["flops_compiled"], u
  for p in progs.values():
    assert 0 < p["total"] <= p["capacity"], p
  # a rollout runs beside what it does not take: the Adam moments (2 x fp32) and the bf16 reference, per chip
  other = progs["rollout_prefill"]["other_live"]
  assert abs(other - (2 * 4 + 2) * N_PARAMS / 16) < 0.02 * aot.GiB, other / aot.GiB
  assert progs["rollout_decode"]["aliased"] > 0  # the KV cache is donated through decode
  assert progs["update"]["aliased"] > 0  # and the train state through the update
  # the reference model is scored in bf16: its arguments are a quarter of the fp32 update's params + moments
  assert progs["ref_logps"]["arguments"] < 0.3 * progs["update"]["arguments"]


@pytest.mark.slow
def test_evaluation_fits_a_v5e_16(v5e_16):
  """configs/eval.py's programs (greedy generation; with mc_mode=loglik also the options' scoring pass), with
  bf16 parameters only (no optimizer state), at the demo model's size."""
  progs = fitting_programs(v5e_16, "eval_loglik", ["generate_prefill", "generate_decode", "option_logprobs"])
  assert all(p["other_live"] == 0 for p in progs.values())  # nothing but the program's own arguments
  assert progs["generate_decode"]["aliased"] > 0 and progs["option_logprobs"]["aliased"] == 0
  # bf16 params only (data-parallel by default: each chip holds them whole), no fp32 copy
  n = n_params("demo_8m")
  for name in ("generate_prefill", "option_logprobs"):
    assert 2 * n <= progs[name]["arguments"] < 3 * n + 2 ** 22, name
  assert progs["generate_decode"]["per_token_flops"] > 0  # the decode loop is priced per new token


def test_full_fine_tuning_on_one_v5e_chip_does_not_fit(tmp_path):
  """fp32 weights + AdamW moments of the 2B (35 GB) on one 16 GB chip: refused, exit status 1."""
  p = aot_cli("--config=configs/pretrain.py", "--target=v5e:1x1", "--no_levers", "--only=train_step",
              "--config.batch_size=1", f"--json={tmp_path / 'one.json'}")
  report = json.loads((tmp_path / "one.json").read_text())
  assert p.returncode == 1 and not report["fits"]
  (prog,) = report["programs"]
  assert "RESOURCE_EXHAUSTED" in prog["error"] or prog["total"] > prog["capacity"]
  assert "DOES NOT FIT" in p.stdout


def test_targets_and_levers():
  assert aot.parse_target("v5e-16").num_chips == 16
  assert aot.parse_target("v5e-16x2").num_slices == 2 and aot.parse_target("v5e-16x2").num_chips == 32
  assert aot.parse_target("v5p-8").num_chips == 4  # megacore: 4 chips
  assert aot.parse_target("h200x8").platform == "cuda" and aot.parse_target("h100x16").topology == "1x2x8"
  assert aot.parse_target("v6e:4x4").chip == "v6e"
  with pytest.raises(ValueError, match="unknown target"):
    aot.parse_target("a100x8")
  c = aot._load_config_module("configs/pretrain.py")
  order = [flags for flags, _ in aot.levers(c, aot.parse_target("v5e-16"))]
  assert order[0] == {"mesh.fsdp": 16}  # remat is already full; tensor 1 and data -1 are the defaults
  assert order[1]["grad_accum_steps"] == 2 and "data.max_pixels" in order[-1]
  # evaluation has no gradients: fewer prompts per batch instead of microbatches
  e = aot._load_config_module("configs/eval.py")
  order = [flags for flags, _ in aot.levers(e, aot.parse_target("v5e-16"))]
  assert [o.get("eval.batch_size") for o in order[:3]] == [None, 32, 16]
  assert all("grad_accum_steps" not in o for o in order)
  # then smaller images, below the budget its 0 ("the checkpoint's own") stands for: 1280*28*28
  assert [o.get("data.max_pixels") for o in order[3:]] == [1024 * 28 * 28, 768 * 28 * 28, 512 * 28 * 28, 256 * 28 * 28]


def test_lever_suggestions_are_what_the_trainer_accepts():
  """Every lever's flags, as the tool prints them, load through the trainer's own config parsing
  (tinyrs_jax.main.load_config) to the values the tool compiled (the image budget was once printed as
  `1024*28*28`, which the trainer refuses)."""
  from tinyrs_jax import main as trainer_main
  for stage in ("pretrain", "grpo", "eval"):
    c = aot._load_config_module(f"configs/{stage}.py")
    for flags, tried in aot.levers(c, aot.parse_target("v5e-16")):
      loaded, rest = trainer_main.load_config([f"--config=configs/{stage}.py", *aot.as_flags(flags).split()])
      assert rest == []
      for k in flags:
        assert aot_get(loaded, k) == aot_get(tried, k), (stage, k)
  with pytest.raises(Exception, match="invalid literal"):
    trainer_main.load_config(["--config=configs/pretrain.py", "--config.data.max_pixels=1024*28*28"])


def aot_get(config, dotted):
  for k in dotted.split("."):
    config = config[k]
  return config


def test_gpu_capacity_is_what_jax_preallocates(monkeypatch):
  """A GPU compile never fails for size: the verdict compares with the share of memory JAX takes."""
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
  assert aot.parse_target("h100x8").capacity == int(0.75 * aot.H100_BYTES)
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", ".9")
  assert aot.parse_target("h200x1").capacity == int(0.9 * aot.H200_BYTES)
  assert aot.parse_target("v5e-16").capacity == int(15.75 * aot.GiB)  # TPU: what libtpu reports
  # the verdict keeps 5 % of a GPU free for what no program accounts for; none on a TPU (exact static allocation)
  h200 = aot.parse_target("h200x1")
  assert h200.limit == int(h200.capacity * 0.95) and aot.parse_target("v5e-16").limit == int(15.75 * aot.GiB)
  import dataclasses
  assert dataclasses.replace(h200, headroom=0.0).limit == h200.capacity


def test_one_gpu_recipe(tmp_path):
  """The README's one-GPU flags fit an H100 and the defaults do not, with those flags as the suggestion. Needs the
  optional gpu extra (jax[cuda12], 5.5 GB: not in the test extra); GPU compiles take seconds."""
  import importlib.util
  if importlib.util.find_spec("jax_cuda12_plugin") is None:
    pytest.skip("GPU targets: the optional gpu extra (pip install -e \".[gpu]\") is not installed")
  out = tmp_path / "h100.json"
  p = aot_cli("--config=configs/pretrain.py", "--target=h100x1", "--only=train_step", f"--json={out}")
  report = json.loads(out.read_text())
  assert p.returncode == 1 and not report["fits"]
  assert report["suggestion"]["flags"] == {"grad_accum_steps": GPU_ACCUM}, report["suggestion"]
  (prog,) = report["suggestion"]["programs"]
  assert prog["total"] <= prog["limit"] == int(int(0.75 * aot.H100_BYTES) * 0.95)


def test_fit_tables_markdown(tmp_path, monkeypatch):
  """benchmarks/fit_tables.py's summary: defaults that fit, the levers' flags (less what the config already
  says), and a stage nothing fits."""
  from benchmarks import fit_tables
  prog = dict(name="train_step", fits=True, arguments=aot.GiB, outputs=0, temporaries=2 * aot.GiB, aliased=0,
              other_live=0, total=3 * aot.GiB, capacity=int(0.75 * aot.H100_BYTES), flops_compiled=0.0,
              model_flops_per_chip=989e12, mfu=0.0, compile_s=1.0, error="")
  big = dict(prog, fits=False, total=90 * aot.GiB)
  reports = {
      "pretrain_h100x1": dict(config="configs/pretrain.py", fits=False, programs=[big], suggestion=dict(
          flags={"mesh.fsdp": 1, "grad_accum_steps": 16}, programs=[prog])),
      "pretrain_h100x8": dict(config="configs/pretrain.py", fits=True, programs=[prog], suggestion=None),
      "grpo_h100x1": dict(config="configs/grpo.py", fits=False, programs=[dict(big, error="x", total=0)],
                          suggestion=None)}
  reports["pretrain_h100x8"]["estimate"] = dict(step_s=2.5, step_s_at_max=2.5, completion_tokens=0, num_chips=8)
  for name, r in reports.items():
    (tmp_path / f"{name}.json").write_text(json.dumps(r))
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", ".92")  # capacities come from the reports, not from here
  md = fit_tables.markdown(str(tmp_path), ["pretrain", "grpo"], ["h100x1", "h100x8"])
  rows = {}
  for line in md.splitlines():  # the first table's rows (the estimate table repeats the targets)
    if line.startswith("| h100"):
      rows.setdefault(line.split(" | ")[0].strip("| "), line)
  assert "`--config.grad_accum_steps=16` (3.00 of 59.33)" in rows["h100x1"]  # mesh.fsdp=1 is the default
  assert "nothing from the standard levers fits" in rows["h100x1"]
  assert "| defaults (3.00 of 59.33) | not run |" in rows["h100x8"]
  assert "| train_step | 1.00 | 0.00 | 2.00 | 0.00 | 0.00 | **3.00** | 989 | 1.00 s |" in md
  assert "the defaults do not fit: train_step (90.00 GiB)" in md
  assert "nothing from the standard levers fits; the defaults do not fit: train_step (refused by the compiler)" in md
  # the estimate: 2.5 s a step, 1,000 steps = 0.694 h on 8 chips = 5.56 chip-hours; a report without one says so
  assert "| h100x8 | 2.5 s; 0.694 h, 5.56 chip-h per 1,000 | not run |" in md
  assert "| h100x1 | not estimated | not estimated |" in md


def test_exit_status_2_when_the_tool_fails(capsys):
  """0 fits, 1 does not fit, 2 the tool itself failed (here: an unknown target, a value the trainer's parser
  refuses): a failure is never read as a verdict."""
  from tinyrs_jax.tools.aot import cli
  assert cli.main(["--config=configs/pretrain.py", "--target=a100x8"]) == cli.FAILED == 2
  assert cli.main(["--config=configs/pretrain.py", "--target=v5e-16", "--config.data.max_pixels=1024*28*28"]) == 2
  assert "verdict is unknown" in capsys.readouterr().err
