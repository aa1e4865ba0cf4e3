"""The main job's GRPO stage as a user runs it: `python -m tinyrs_jax.main --config=configs/grpo.py:demo`, alone
(it builds, or reuses from the cache, its starting policy from the three demo SFT stages), for seeds 0, 1 and 2:
the held-out greedy accuracy reward should rise by at least 0.03 and the format reward not fall by more than 0.02.
A demo that worked for one seed only would be tuned to it.

Opt-in (TINYRS_DEMO_SEEDS=1): about 15 minutes on 2 cores (the SFT chain, then three 20-step GRPO runs of about
3 minutes), more than CI's budget leaves. Measured with the same config and starting policy (docs/ablations.md, the
ablation's accuracy=1.0+loss_type=grpo runs): accuracy reward +0.047 and +0.102 for seeds 0 and 1, format -0.008
and +0.000; seed 2 not measured since the demo was rebalanced (20 GRPO steps, instruct 250 and cot 200 steps).
"""
import json
import os

import pytest

from test_grpo_e2e import main

pytestmark = pytest.mark.skipif(os.environ.get("TINYRS_DEMO_SEEDS", "") != "1",
                                reason="opt-in: TINYRS_DEMO_SEEDS=1 runs the GRPO demo for seeds 0, 1, 2 (~15 min)")


def held_out(workdir) -> tuple[dict, dict]:
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  ev = [r for r in rows if "eval/reward" in r]
  return ev[0], ev[-1]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demo_raises_held_out_accuracy(tmp_path, seed):
  wd = str(tmp_path / f"grpo_seed{seed}")
  p = main(wd, "--config=configs/grpo.py:demo", f"--config.seed={seed}", timeout=1800)
  first, last = held_out(wd)
  assert first["step"] == 0 and last["step"] > 0
  assert first["eval/num_prompts"] >= 128
  gain = last["eval/rewards/accuracy"] - first["eval/rewards/accuracy"]
  drop = first["eval/rewards/format"] - last["eval/rewards/format"]
  summary = {k: (round(first[k], 3), round(last[k], 3)) for k in first if k.startswith("eval/")}
  assert gain >= 0.03, summary
  assert drop <= 0.02, summary
  assert "demo starting policy" in p.stderr  # it said where its starting policy came from
