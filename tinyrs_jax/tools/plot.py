"""Training curves of a workdir as a PNG: `python -m tinyrs_jax.tools.plot --workdir=DIR [--out=FILE]`.

Reads DIR/metrics.jsonl (written by the trainers) and draws train loss and eval loss against the step, and the
learning rate, gradient norm and throughput when they were logged; for a GRPO run, the training rewards, the
held-out rewards and per-task accuracy, KL, completion length and gradient norm. Writes DIR/curves.png.
"""
from __future__ import annotations

import json
import os

from absl import app, flags

FLAGS = flags.DEFINE_string("workdir", None, "a run folder holding metrics.jsonl")
_OUT = flags.DEFINE_string("out", "", "output PNG (default: <workdir>/curves.png)")


def read(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist (not a training workdir?)")
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
  pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
  return [p[0] for p in pts], [p[1] for p in pts]


def plot(workdir: str, out: str | None = None) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = read(workdir)
  keys = sorted({k for r in rows for k in r})
  lr_keys = [k for k in keys if k.startswith("lr/")]
  if "reward" in keys:  # a GRPO run: rewards and held-out rewards say more than its loss (~0 by construction)
    panels = [("reward (train)", ["reward"] + [k for k in keys if k.startswith("rewards/") and k.endswith("/mean")]),
              ("held-out (greedy)", [k for k in keys if k.startswith("eval/rewards/")]),
              ("held-out per task", [k for k in keys if k.startswith("eval/accuracy/")]),
              ("kl", ["kl"]), ("completion length", ["completions/mean_length"]), ("grad norm", ["grad_norm"])]
  else:
    panels = [("loss", ["loss", "eval_loss"]), ("learning rate", lr_keys), ("grad norm", ["grad_norm"]),
              ("tokens / s", ["tokens_per_s"])]
  panels = [(t, [k for k in ks if series(rows, k)[0]]) for t, ks in panels]
  panels = [(t, ks) for t, ks in panels if ks]
  if not panels:
    raise ValueError(f"{workdir}/metrics.jsonl has no step/loss lines yet")
  fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), sharex=True, squeeze=False)
  for ax, (title, keys) in zip(axes[:, 0], panels):
    for k in keys:
      x, y = series(rows, k)
      ax.plot(x, y, marker="o" if k.startswith("eval") else None, markersize=4, label=k)
    ax.set_ylabel(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
  axes[-1, 0].set_xlabel("step")
  fig.suptitle(os.path.basename(os.path.abspath(workdir)))
  fig.tight_layout()
  out = out or os.path.join(workdir, "curves.png")
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.value:
    raise app.UsageError("--workdir is required")
  print(plot(FLAGS.value, _OUT.value or None))


if __name__ == "__main__":
  app.run(main)
