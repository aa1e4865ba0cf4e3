#!/usr/bin/env bash
# The main job on the embedded default: the TinyRS stages on synthetic aerial scenes with the demo model,
# each stage starting from the one before, then the training curves as PNG. Usage: bash launch/demo.sh [RUNDIR]
# Reruns resume each stage from its workdir; a finished stage is skipped by its own trainer.
set -euo pipefail
run=${1:-runs/demo}
prev=""
for stage in pretrain instruct cot; do
  init=()
  [[ -n "$prev" ]] && init=(--config.init.workdir="$prev")
  python -m tinyrs_jax.main --config="configs/$stage.py:demo" --workdir="$run/$stage" "${init[@]}"
  python -m tinyrs_jax.tools.plot --workdir="$run/$stage"
  prev="$run/$stage"
done
python - "$run" <<'PY'
import json, os, sys
run = sys.argv[1]
print(f"\n{'stage':10s} {'first eval_loss':>16s} {'last eval_loss':>15s} {'ratio':>7s}")
failed = []
for stage in ("pretrain", "instruct", "cot"):
  rows = [json.loads(l) for l in open(os.path.join(run, stage, "metrics.jsonl"))]
  ev = [r["eval_loss"] for r in rows if "eval_loss" in r]
  print(f"{stage:10s} {ev[0]:16.4f} {ev[-1]:15.4f} {ev[-1] / ev[0]:7.3f}")
  if not ev[-1] <= 0.9 * ev[0]:
    failed.append(stage)
print(f"curves: {run}/<stage>/curves.png")
if failed:
  sys.exit(f"eval loss did not fall to 0.9x its first value in: {failed}")
PY
