"""The grounding reward-design ablation (docs/ablations.md): three ways to reward a box, on the GRPO demo.

    python -m tinyrs_jax.tools.ablate --config=configs/grpo.py:demo --workdir=runs/ablate_ground \
      --sweep_file=configs/sweeps/grounding_rewards.py --seeds=0,1,2

  iou         accuracy alone: a grounding answer earns its continuous IoU with the true box (the demo's default)
  threshold   plus iou_threshold: 1 more when IoU >= 0.5 (what Acc@0.5 counts)
  distance    plus box_distance: 1 - centre distance / half the image diagonal, dense even where IoU is 0
Format (weight 1) and accuracy (weight 1) stay in every arm; only the grounding terms differ.
"""


def get_sweep():
  return [
      {"rewards.iou_threshold": 0.0},
      {"rewards.iou_threshold": 1.0},
      {"rewards.box_distance": 1.0},
  ]
