"""The demo's measured frontier: validation score per task against the three SFT stages' wall time, one point per
tuning try (docs/demo_frontier.csv, rows copied from docs/demo_tuning.md), with each task's most-common-answer
score and the issue's goal as lines.

    python benchmarks/demo_frontier.py [--csv=docs/demo_frontier.csv] [--out=docs/demo_frontier.png]
"""
from __future__ import annotations

import argparse
import csv

TASKS = ("classify", "presence", "count", "compare", "ground_acc50")
MAJORITY = {"classify": 0.173, "presence": 0.704, "count": 0.667, "compare": 0.593}  # validation split
GOALS = {"classify": 0.90, "presence": 0.85, "count": 0.77, "compare": 0.85, "ground_acc50": 0.50}  # count: majority + 0.10


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--csv", default="docs/demo_frontier.csv")
  ap.add_argument("--out", default="docs/demo_frontier.png")
  args = ap.parse_args()
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  with open(args.csv, newline="") as f:
    rows = list(csv.DictReader(f))
  fig, axes = plt.subplots(1, len(TASKS), figsize=(3.2 * len(TASKS), 3.2), sharey=True)
  for ax, task in zip(axes, TASKS):
    for model, marker in (("demo_8m", "o"), ("demo_wide", "s")):
      pts = [(float(r["sft_seconds"]) / 60, float(r[task]), r["try"]) for r in rows if r["model"] == model]
      ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=model)
      for x, y, name in pts:
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 2), textcoords="offset points")
    if task in MAJORITY:
      ax.axhline(MAJORITY[task], color="grey", ls=":", label="most common answer")
    ax.axhline(GOALS[task], color="red", ls="--", label="goal")
    ax.set_title(task.replace("_acc50", " Acc@0.5"))
    ax.set_xlabel("SFT wall time (min, 2 cores)")
    ax.set_ylim(-0.02, 1.02)
  axes[0].set_ylabel("validation score after cot")
  axes[0].legend(fontsize=7, loc="lower left")
  fig.tight_layout()
  fig.savefig(args.out, dpi=110)
  print(f"wrote {args.out} ({len(rows)} tries)")


if __name__ == "__main__":
  main()
