"""tools/aot: the real 2B recipes compiled ahead of time for a TPU v5e-16 (libtpu, no TPU), every program each
stage runs, with the flags the README gives; a configuration that cannot fit is reported with exit status 1.

libtpu comes with the test extra (jax[tpu]); under CI=true its absence fails the run (tests/conftest.py).
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("libtpu")

from tinyrs_jax.tools import aot  # noqa: E402  (parsing and levers only: no libtpu in this process)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The README's v5e-16 recipe flags (measured with this tool; see "Will it fit?").
SFT_FLAGS = ["--config.mesh.fsdp=16", "--config.grad_accum_steps=2"]


def aot_cli(*args):
  """The tool in its own process, as users run it: libtpu sets TPU_* variables in the process that loads it,
  which every later subprocess of a test run would inherit (and load libtpu again, 3 GB)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, "-m", "tinyrs_jax.tools.aot", *args], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=1200)
  return p


def run(tmp_path, stage, *flags):
  out = tmp_path / f"{stage}.json"
  p = aot_cli(f"--config=configs/{stage}.py", "--target=v5e-16", "--no_levers", f"--json={out}", *flags)
  return p.returncode, json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["pretrain"])
def test_sft_stages_fit_a_v5e_16(tmp_path, stage):
  """The three SFT stages share their shapes and compile to the same programs: pretrain stands for them (each
  compile of the 2B takes minutes on 2 cores)."""
  code, report = run(tmp_path, stage, *SFT_FLAGS)
  assert code == 0 and report["fits"], report
  progs = {p["name"]: p for p in report["programs"]}
  assert set(progs) == {"train_step", "eval_step"}
  step = progs["train_step"]
  # the compiled memory, not the text of the lowering: fp32 params + Adam of 2.2B over 16 chips is 2.06 GiB of
  # arguments; full remat keeps the per-chip total well under the 15.75 GiB a v5e offers
  assert 1.5 * aot.GiB < step["arguments"] < 3 * aot.GiB
  assert step["total"] <= step["capacity"] == int(15.75 * aot.GiB)
  assert step["aliased"] > 0  # the state is donated
  assert step["model_flops_per_chip"] > 1e14


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
  assert order[0] == {"mesh.fsdp": 16, "mesh.tensor": 1, "mesh.data": -1}  # remat is already full
  assert order[1]["grad_accum_steps"] == 2 and "data.max_pixels" in order[-1]
