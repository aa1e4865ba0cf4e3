"""benchmarks/demo_seeds.py as users run it, in a short form: two seeds of the GRPO demo config at CI sizes (a random
policy, 1 step); the table and results.json restate each run's metrics.jsonl; a rerun skips finished seeds. The
full run (seeds 0-4 from the cached SFT policy, ~15 min on 2 cores) is opt-in: docs/demo_seeds.md."""
import json
import os
import subprocess
import sys

import pytest

from test_grpo_e2e import GRPO, env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = [a for a in GRPO if not a.startswith(("--config=", "--config.total_steps", "--config.grpo.num_iterations",
                                              "--config.grad_accum_steps", "--config.grpo.beta",
                                              "--config.grpo.max_new_tokens", "--config.batch_size",
                                              "--config.eval.", "--config.checkpoint"))] + [
    "--config.total_steps=1", "--config.eval.every_steps=1", "--config.checkpoint.every_steps=1",
    "--config.grpo.beta=0.0", "--config.grpo.max_new_tokens=8", "--config.batch_size=2",
    "--config.eval.num_prompts=4", "--config.eval.batch_size=4"]


def run(root, out):
  cmd = [sys.executable, "benchmarks/demo_seeds.py", f"--workdir={root}", "--seeds=0,1", f"--out={out}", "--", *SHORT]
  p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  return p


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
  root = tmp_path_factory.mktemp("seeds")
  out = str(root / "table.md")
  p = run(str(root / "runs"), out)
  return str(root / "runs"), out, p


@pytest.mark.slow
def test_table_restates_each_seeds_metrics(seeds):
  root, out, p = seeds
  with open(os.path.join(root, "results.json")) as f:
    results = json.load(f)["seeds"]
  assert sorted(results) == ["0", "1"]
  for s, r in results.items():
    with open(os.path.join(root, f"seed{s}", "metrics.jsonl")) as f:
      ev = [row for row in map(json.loads, f) if "eval/reward" in row]
    assert r["steps"] == [0, 1] and ev[0]["step"] == 0 and ev[-1]["step"] == 1
    assert r["accuracy_gain"] == pytest.approx(ev[-1]["eval/rewards/accuracy"] - ev[0]["eval/rewards/accuracy"])
    assert r["format_change"] == pytest.approx(ev[-1]["eval/rewards/format"] - ev[0]["eval/rewards/format"])
    assert r["meets_goal"] == (r["accuracy_gain"] >= 0.05 and r["format_change"] >= -0.02)
    assert r["wall_s"] > 0
  table = open(out).read()
  assert table.startswith("# The GRPO demo, seed by seed")
  for s in ("0", "1"):
    a = results[s]["first"]["eval/rewards/accuracy"], results[s]["last"]["eval/rewards/accuracy"]
    assert f"| {s} | {a[0]:.3f} → {a[1]:.3f} | {results[s]['accuracy_gain']:+.3f} |" in table
  assert "benchmarks/demo_seeds.py --workdir=" in table  # the command that made it


@pytest.mark.slow
def test_rerun_skips_finished_seeds(seeds):
  root, out, _ = seeds
  before = open(out).read()
  p = run(root, out)
  assert "seed 0: " not in p.stdout and "seed 1: " not in p.stdout  # no run started
  assert open(out).read() == before
