"""tools/ablate as users run it (subprocesses): a 2-variant x 2-seed GRPO sweep at a few steps (one variant fails on
purpose), with a user reward module; the table recomputed from each run's metrics.jsonl; a run killed after its first step,
resumed by --launch=print's command run by hand, to the same workdir and numbers.

One sweep (the module fixture) serves every test; the swept variant is dapo, not the default loss, so the override
is seen reaching the run. Each GRPO run is a subprocess of a few seconds' work after its start-up and compiles."""
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from test_grpo_e2e import GRPO, env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# GRPO's e2e settings, 2 steps, checkpoints every step (so a kill after step 1 resumes from there)
SWEEP_ARGS = [a for a in GRPO if not a.startswith(("--config=", "--config.total_steps", "--config.checkpoint"))] + [
    "--config.total_steps=2", "--config.checkpoint.every_steps=1", "--config.eval.every_steps=1"]
CONFIG = "configs/grpo.py:demo"


def ablate(root, *args, check=True):
  cmd = [sys.executable, "-m", "tinyrs_jax.tools.ablate", f"--config={CONFIG}", f"--workdir={root}", *args,
         *SWEEP_ARGS]
  p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
  if check and p.returncode != 0:
    raise AssertionError(f"{shlex.join(cmd)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
  return p


def metrics_rows(wd):
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def recompute(wd) -> dict:
  """The per-run numbers, restated from metrics.jsonl."""
  rows = metrics_rows(wd)
  train = [r for r in rows if "reward" in r]
  last_eval = [r for r in rows if "eval/reward" in r][-1]
  return {"eval/reward": last_eval["eval/reward"], "eval/rewards/vowels": last_eval["eval/rewards/vowels"],
          "eval/strict/accuracy": last_eval["eval/strict/accuracy"], "final_kl": train[-1]["kl"],
          "mean_completion_length": np.mean([r["completions/mean_length"] for r in train]),
          "truncated_share": np.mean([r["completions/clipped_ratio"] for r in train]),
          "train_time_s": sum(r["step_time_s"] for r in train)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("ablate"))
  p = ablate(root, "--sweep=grpo.loss_type=dapo,bogus", "--seeds=0,1")
  with open(os.path.join(root, "results.json")) as f:
    return root, json.load(f), p


@pytest.mark.slow
def test_table_equals_numbers_recomputed_from_each_run(sweep):
  root, results, _ = sweep
  assert list(results) == ["loss_type=dapo", "loss_type=bogus"]
  for variant in ("loss_type=dapo",):
    e = results[variant]
    assert sorted(e["seeds"]) == ["0", "1"] and not e["failed"]
    per_seed = [recompute(os.path.join(root, variant, f"seed{s}")) for s in ("0", "1")]
    for key in per_seed[0]:
      vals = [p[key] for p in per_seed]
      assert e["metrics"][key]["mean"] == pytest.approx(np.mean(vals), abs=1e-9), key
      assert e["metrics"][key]["std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-9), key
    assert "eval/rewards/vowels" in e["metrics"]  # the user's reward module was picked up
    with open(os.path.join(root, variant, "seed1", "ablation.json")) as f:
      recorded = json.load(f)
    assert recorded["overrides"] == {"grpo.loss_type": variant.split("=")[1]} and recorded["seed"] == "1"
  md = open(os.path.join(root, "results.md")).read()
  assert "| loss_type=dapo | 2/2 |" in md and "| loss_type=bogus | 0/2 |" in md
  assert os.path.getsize(os.path.join(root, "curves.png")) > 5000


@pytest.mark.slow
def test_failing_variant_is_reported_not_dropped(sweep):
  root, results, p = sweep
  failed = results["loss_type=bogus"]["failed"]
  assert sorted(failed) == ["0", "1"] and all("bogus" in err for err in failed.values()), failed
  assert "loss_type=bogus seed 0:" in open(os.path.join(root, "results.md")).read()


@pytest.mark.slow
def test_rerun_skips_finished_runs(sweep):
  root, results, _ = sweep
  p = ablate(root, "--sweep=grpo.loss_type=dapo", "--seeds=0,1")
  assert "python -m tinyrs_jax.main" not in p.stdout  # nothing ran again
  with open(os.path.join(root, "results.json")) as f:
    again = json.load(f)
  assert again["loss_type=dapo"]["metrics"] == results["loss_type=dapo"]["metrics"]


@pytest.mark.slow
def test_killed_run_resumed_by_the_printed_command_to_the_same_numbers(sweep, tmp_path):
  """A run killed after its first step is reported as stopped; --launch=print's command for it, run by hand,
  resumes it in the same workdir from its checkpoint; --launch=report then gives the uninterrupted sweep's numbers."""
  root, results, _ = sweep
  killed = str(tmp_path / "killed")
  p = ablate(killed, "--sweep=grpo.loss_type=dapo", "--seeds=1", "--config.debug_kill_at_step=1", check=False)
  assert p.returncode != 0 and "stopped by a signal" in p.stderr
  p = ablate(killed, "--sweep=grpo.loss_type=dapo", "--seeds=1", "--launch=print")
  lines = [l for l in p.stdout.splitlines() if l.startswith("python -m tinyrs_jax.main")]
  assert len(lines) == 1 and open(os.path.join(killed, "commands.sh")).read().count("tinyrs_jax.main") == 1
  cmd = shlex.split(lines[0])
  assert f"--workdir={os.path.join(killed, 'loss_type=dapo', 'seed1')}" in cmd
  assert "--config.grpo.loss_type=dapo" in cmd  # the override reaches the run
  subprocess.run([sys.executable] + cmd[1:], cwd=ROOT, env=env(), check=True, capture_output=True, timeout=900)
  ablate(killed, "--sweep=grpo.loss_type=dapo", "--seeds=1", "--launch=report")
  with open(os.path.join(killed, "results.json")) as f:
    got = json.load(f)["loss_type=dapo"]["seeds"]["1"]
  for key, v in results["loss_type=dapo"]["seeds"]["1"].items():
    if key not in ("train_time_s", "wall_time_s"):
      assert got[key] == pytest.approx(v, abs=1e-6), key


@pytest.mark.slow
def test_unknown_swept_field_fails_before_running(tmp_path):
  p = ablate(str(tmp_path / "x"), "--sweep=grpo.loss_typo=a,b", check=False)
  assert p.returncode != 0 and "grpo.loss_typo" in p.stderr and not os.path.exists(tmp_path / "x" / "loss_typo=a")


def test_grounding_reward_sweep_file_prints_its_three_arms(tmp_path):
  """The checked-in grounding reward-design sweep (docs/ablations.md) names fields and rewards the trainer knows:
  its --launch=print commands come out, one per arm, each with its own grounding term."""
  root = tmp_path / "g"
  p = ablate(str(root), "--sweep_file=configs/sweeps/grounding_rewards.py", "--seeds=0", "--launch=print")
  commands = (root / "commands.sh").read_text()
  for override in ("--config.rewards.iou_threshold=0.0", "--config.rewards.iou_threshold=1.0",
                   "--config.rewards.box_distance=1.0"):
    assert commands.count(override) == 1, (override, p.stdout)
