"""The main job's GRPO stage as a user runs it: `python -m tinyrs_jax.main --config=configs/grpo.py:demo`, alone
(it builds, or reuses from the cache, its starting policy from the three demo SFT stages), for seeds 0, 1 and 2:
the held-out greedy accuracy reward should rise by at least 0.03 and the format reward not fall by more than 0.02.
A demo that worked for one seed only would be tuned to it.

Opt-in (TINYRS_DEMO_SEEDS=1): about 17 minutes on 2 cores (the SFT chain, about 9 minutes, then three 20-step
GRPO runs of about 2.5 minutes), more than CI's budget leaves. On the synthetic data's version 1 the same config
gained +0.047 and +0.102 for seeds 0 and 1 (docs/ablations.md). On version 3 it does NOT pass: with the current
SFT configs (instruct 1000, cot 600 steps) the cot policy starts at 0.635 and seeds 0-4 gain +0.008, +0.017,
+0.022, -0.039, +0.018 (docs/demo_seeds.md, `python benchmarks/demo_seeds.py`, which runs seeds 0-4 and writes
that table); with the earlier ones (250, 200) they lost 0.029 on average.
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
