"""One table of what each training stage gained: the evaluation results of several checkpoints side by side.

    python -m tinyrs_jax.tools.stage_table --run=runs/demo [--stages=start,pretrain,instruct,cot,grpo]

Reads RUN/eval/<stage>/results.json (written by configs/eval.py runs, e.g. launch/demo.sh's) and writes
RUN/eval.md: a row per stage, a column per task (strict rule set: accuracy per task, grounding mean IoU and
Acc@0.5, caption CIDEr), and a last row with what always giving the most common reference answer scores, so a
gain that is only an answer prior shows as one.
"""
from __future__ import annotations

import collections
import json
import os
import sys

from absl import app, flags

_RUN = flags.DEFINE_string("run", None, "the run folder holding eval/<stage>/results.json", required=True)
_STAGES = flags.DEFINE_list("stages", ["start", "pretrain", "instruct", "cot", "grpo"], "rows, in order")
_OUT = flags.DEFINE_string("out", "", "the table's file (default RUN/eval.md)")

COLUMNS = (  # (header, benchmark, metric)
    ("caption CIDEr", "synthetic_caption", "caption/cider"),
    ("classify", "synthetic", "accuracy/classify"),
    ("presence", "synthetic", "accuracy/vqa_presence"),
    ("count", "synthetic", "accuracy/vqa_count"),
    ("compare", "synthetic", "accuracy/vqa_compare"),
    ("ground mIoU", "synthetic", "ground/miou"),
    ("ground Acc@0.5", "synthetic", "ground/acc@0.5"),
    ("box written", "synthetic", "ground/parsed"),
)


def majority_baseline(predictions_path: str) -> dict[str, float]:
  """Per task, the accuracy of always answering the task's most common reference (from a predictions file)."""
  by_task = collections.defaultdict(list)
  with open(predictions_path, encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      if r.get("correct_strict") is not None and r.get("task") not in ("ground", "caption"):
        by_task[r["task"]].append(str(r.get("reference")).strip().lower())
  return {t: collections.Counter(v).most_common(1)[0][1] / len(v) for t, v in by_task.items()}


def table(run: str, stages: list[str]) -> str:
  rows, found = [], []
  for stage in stages:
    path = os.path.join(run, "eval", stage, "results.json")
    if not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      results = json.load(f)
    found.append(stage)
    cells = []
    for _, bench, metric in COLUMNS:
      v = results.get(bench, {}).get("metrics", {}).get(metric)
      cells.append("–" if v is None else f"{v['strict']:.3f}")
    rows.append(f"| {stage} | " + " | ".join(cells) + " |")
  if not rows:
    raise FileNotFoundError(f"no {run}/eval/<stage>/results.json for stages {stages}")
  head = "| stage | " + " | ".join(c[0] for c in COLUMNS) + " |"
  sep = "|---|" + "---:|" * len(COLUMNS)
  base = os.path.join(run, "eval", found[-1], "predictions", "synthetic.jsonl")
  split = "validation"
  if os.path.exists(base):
    with open(base, encoding="utf-8") as f:
      first = json.loads(f.readline() or "{}")
    parts = str(first.get("id", "")).split("-")  # the synthetic data's ids: <stage>-<split>-<scene>-<task>
    split = {"val": "validation", "test": "test", "train": "training"}.get(parts[1] if len(parts) > 1 else "", split)
    maj = majority_baseline(base)
    task_of = {"classify": "classify", "presence": "vqa_presence", "count": "vqa_count", "compare": "vqa_compare"}
    cells = [f"{maj[task_of[h]]:.3f}" if task_of.get(h) in maj else "–" for h, _, _ in COLUMNS]
    rows.append("| *most common answer* | " + " | ".join(cells) + " |")
  n = ""
  with open(os.path.join(run, "eval", found[-1], "results.json"), encoding="utf-8") as f:
    last = json.load(f)
  if "synthetic" in last:
    n = f" ({last['synthetic']['examples']} held-out questions"
    if "synthetic_caption" in last:
      n += f", {last['synthetic_caption']['examples']} captions"
    n += ")"
  note = (f"\nStrict rule set, greedy answers on the synthetic {split} split{n}; each stage's final checkpoint "
          "(start: the random initialisation). Per-benchmark details, both rule sets: "
          f"{run}/eval/<stage>/results.md.\n")
  return "\n".join([head, sep] + rows) + "\n" + note


def main(argv):
  del argv
  text = table(_RUN.value, _STAGES.value)
  out = _OUT.value or os.path.join(_RUN.value, "eval.md")
  with open(out, "w", encoding="utf-8") as f:
    f.write(text)
  sys.stdout.write(text)


if __name__ == "__main__":
  app.run(main)
