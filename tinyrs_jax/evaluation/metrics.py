"""A benchmark's metrics from its prediction rows (the rows of predictions/<benchmark>.jsonl).

Everything in results.json is computed here from the rows alone, so the results can be recomputed from the
predictions files (`aggregate(read_rows(path))`), and a test checks they are.

Every metric is `{"strict": value, "tinyrs": value, "n_strict": count, "n_tinyrs": count}`: the value under each
rule set (evaluation/rules.py) and the number of examples it is over. Names:
  accuracy                  every example with a short reference (not grounding, not captions)
  accuracy/<task>           the same per task (classify, vqa_presence, mc, ...)
  type/<question type>      per question type (RSVQA's presence/comp/..., LHRS-Bench's 11 types, VRSBench's)
  ground/acc@0.5, ground/acc@0.7, ground/miou, ground/cum_iou (sum of intersections / sum of unions, VRSBench's
      cumulative IoU), ground/acc@0.5/{small,medium,large}, ground/parsed; with VRSBench's `unique` flag also
      ground/{acc@0.5,acc@0.7,miou,cum_iou}/{unique,non_unique}. Rows without a true box are in none of these.
  ground_multi/precision, ground_multi/recall   one-to-one matches at IoU 0.5 over all predicted / all true boxes
      (rules.py; no original rule: the same value in both columns), ground_multi/rows
  caption/bleu1..4, caption/rouge_l, caption/cider   (no rule set applies: the same value in both columns)
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from tinyrs_jax.evaluation.rules import RULE_SETS

SIZES = ("small", "medium", "large")


def _metric(strict: Sequence[float], tinyrs: Sequence[float]) -> dict:
  mean = lambda v: float(sum(v) / len(v)) if len(v) else 0.0
  return {"strict": mean(strict), "tinyrs": mean(tinyrs), "n_strict": len(strict), "n_tinyrs": len(tinyrs)}


def _same(value: float, n: int) -> dict:
  return {"strict": float(value), "tinyrs": float(value), "n_strict": n, "n_tinyrs": n}


def _correct(rows: list[dict]) -> dict:
  return _metric([float(r["correct_strict"]) for r in rows if r.get("correct_strict") is not None],
                 [float(r["correct_tinyrs"]) for r in rows if r.get("correct_tinyrs") is not None])


def _cum_iou(strict: Sequence[dict], tinyrs: Sequence[dict]) -> dict:
  ratio = lambda rows, i, u: float(sum(r[i] for r in rows) / max(sum(r[u] for r in rows), 1e-12)) if rows else 0.0
  return {"strict": ratio(strict, "inter", "union"), "tinyrs": ratio(tinyrs, "inter_tinyrs", "union_tinyrs"),
          "n_strict": len(strict), "n_tinyrs": len(tinyrs)}


def _ground_metrics(out: dict, ground: list[dict], suffix: str = "") -> None:
  parsed = [r for r in ground if r.get("iou_tinyrs") is not None]
  for t in (0.5, 0.7):
    out[f"ground/acc@{t}{suffix}"] = _metric([float(r["iou"] >= t) for r in ground],
                                             [float(r["iou_tinyrs"] >= t) for r in parsed])
  out[f"ground/miou{suffix}"] = _metric([r["iou"] for r in ground], [r["iou_tinyrs"] for r in parsed])
  if all(r.get("union") is not None for r in ground):
    out[f"ground/cum_iou{suffix}"] = _cum_iou(ground, [r for r in parsed if r.get("union_tinyrs") is not None])


UNSCORED_REASONS = {"no_true_box": "grounding records without a true box (unusable)",
                    "no_reference": "records without a reference answer or references",
                    "no_rule": "tasks no rule scores (chat, reasoning)"}


def unscored(rows: Iterable[dict]) -> dict[str, int]:
  """{reason: count} of the rows no metric reads (results.md lists them)."""
  out: dict[str, int] = {}
  for r in rows:
    task = r.get("task")
    if r.get("no_true_box"):
      reason = "no_true_box"
    elif task in ("ground", "ground_multi") or r.get("correct_strict") is not None:
      continue
    elif task == "caption":
      if r.get("references"):
        continue
      reason = "no_reference"
    elif task in ("chat", "reason"):
      reason = "no_rule"
    else:
      reason = "no_reference"
    out[reason] = out.get(reason, 0) + 1
  return out


def question_types(row: dict) -> list[str]:
  types = row.get("question_types") or []
  return [str(t) for t in (types if isinstance(types, list) else [types]) if str(t)]


def aggregate(rows: Iterable[dict], *, caption_metrics: bool = True) -> dict[str, dict]:
  """{metric name: {strict, tinyrs, n_strict, n_tinyrs}} over a benchmark's prediction rows."""
  rows = list(rows)
  out: dict[str, dict] = {}
  answered = [r for r in rows if r.get("task") not in ("ground", "caption") and r.get("correct_strict") is not None]
  if answered:
    out["accuracy"] = _correct(answered)
    for task in sorted({r["task"] for r in answered}):
      out[f"accuracy/{task}"] = _correct([r for r in answered if r["task"] == task])
    for qtype in sorted({t for r in answered for t in question_types(r)}):
      out[f"type/{qtype}"] = _correct([r for r in answered if qtype in question_types(r)])
  ground = [r for r in rows if r.get("task") == "ground" and r.get("iou") is not None]
  if ground:
    _ground_metrics(out, ground)
    for size in SIZES:
      g = [r for r in ground if r.get("size") == size]
      if g:
        out[f"ground/acc@0.5/{size}"] = _metric([float(r["iou"] >= 0.5) for r in g],
                                               [float(r["iou_tinyrs"] >= 0.5) for r in g
                                                if r.get("iou_tinyrs") is not None])
    out["ground/parsed"] = _same(sum(bool(r.get("parsed")) for r in ground) / len(ground), len(ground))
    for qtype in sorted({t for r in ground for t in question_types(r)}):
      g = [r for r in ground if qtype in question_types(r)]
      out[f"ground/acc@0.5/{qtype}"] = _metric([float(r["iou"] >= 0.5) for r in g],
                                              [float(r["iou_tinyrs"] >= 0.5) for r in g
                                               if r.get("iou_tinyrs") is not None])
    if any(r.get("unique") is not None for r in ground):
      for name, flag in (("unique", True), ("non_unique", False)):
        g = [r for r in ground if r.get("unique") is flag]
        if g:
          _ground_metrics(out, g, f"/{name}")
  multi = [r for r in rows if r.get("task") == "ground_multi" and not r.get("no_true_box") and "n_true" in r]
  if multi:
    hits = sum(r["matched"] for r in multi)
    n_pred, n_true = sum(r["n_pred"] for r in multi), sum(r["n_true"] for r in multi)
    out["ground_multi/precision"] = _same(hits / n_pred if n_pred else 0.0, n_pred)
    out["ground_multi/recall"] = _same(hits / n_true if n_true else 0.0, n_true)
    out["ground_multi/rows"] = _same(len(multi), len(multi))
  captions = [r for r in rows if r.get("task") == "caption" and r.get("references")]
  if captions and caption_metrics:
    from tinyrs_jax.evaluation import captions as captions_lib
    # the answer span (reasoning and tags removed), as the model would be read
    scores = captions_lib.caption_scores([r.get("answer_text", r.get("output")) or "" for r in captions],
                                         [r["references"] for r in captions])
    for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"):
      if k in scores:
        out[f"caption/{k}"] = _same(scores[k], len(captions))
  return out


def confusion(rows: Iterable[dict]) -> tuple[list[str], list[str], list[list[int]]]:
  """(true classes, predicted columns = the classes + "other", counts) of a benchmark's classify rows, from
  the strict (normalised) answers."""
  rows = [r for r in rows if r.get("task") == "classify" and r.get("reference") is not None]
  classes = sorted({_norm(r["reference"]) for r in rows})
  cols = classes + ["other"]
  index = {c: i for i, c in enumerate(classes)}
  counts = [[0] * len(cols) for _ in classes]
  for r in rows:
    counts[index[_norm(r["reference"])]][index.get(r.get("answer_strict") or "", len(classes))] += 1
  return classes, cols, counts


def _norm(text: Any) -> str:
  from tinyrs_jax.rewards import scoring
  return scoring.normalize_answer(text)


def read_rows(path: str, *, tolerant: bool = False) -> list[dict]:
  """A predictions file's rows; `tolerant` drops lines that do not parse (a write cut short by a kill)."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        if not tolerant:
          raise
  return rows


def markdown_table(results: dict[str, dict]) -> str:
  """results.md: one table, a row per (benchmark, metric), the strict and tinyrs values with their counts."""
  lines = ["| benchmark | metric | strict | tinyrs | n (strict / tinyrs) |", "|---|---|---:|---:|---:|"]
  for name, entry in results.items():
    for metric, v in entry.get("metrics", {}).items():
      n = f"{v['n_strict']}" if v["n_strict"] == v["n_tinyrs"] else f"{v['n_strict']} / {v['n_tinyrs']}"
      lines.append(f"| {name} | {metric} | {v['strict']:.4f} | {v['tinyrs']:.4f} | {n} |")
  for name, entry in results.items():
    for reason, n in (entry.get("unscored") or {}).items():
      lines.append(f"\n{name}: {n} {UNSCORED_REASONS.get(reason, reason)}: not scored, in no metric.")
    if entry.get("skipped_unusable"):
      lines.append(f"\n{name}: {entry['skipped_unusable']} records could not be used (unreadable image or prompt "
                   "over data.max_length): misses under strict, not counted under tinyrs.")
  notes = ("\nstrict: normalised exact match, an empty answer is wrong, an output without a box is a grounding "
           "miss. tinyrs: the original work's rules (substring match after removing spaces; grounding over "
           "parseable outputs only), for comparison with published tables; see tinyrs_jax/evaluation/rules.py.\n")
  return "\n".join(lines) + "\n" + notes


_ROW_FIELDS = ("correct_strict", "correct_tinyrs", "iou", "iou_tinyrs", "parsed")
# fields aggregate() reads where a row has them (absent otherwise): cumulative IoU, ground_multi, VRSBench's split
_OPTIONAL_FIELDS = ("inter", "union", "inter_tinyrs", "union_tinyrs", "n_pred", "n_true", "matched", "unique",
                    "no_true_box")
_BOOL_FIELDS = ("correct_strict", "correct_tinyrs", "parsed", "unique", "no_true_box")
_INT_FIELDS = ("n_pred", "n_true", "matched")
_SIZES = (None, "small", "medium", "large")


def gather_scored_rows(rows: list[dict]) -> list[dict]:
  """Every process's scored rows (the fields aggregate() reads; no question types), via one numeric all-gather."""
  import jax
  import numpy as np

  from tinyrs_jax import sharding as sharding_lib
  if jax.process_count() == 1:
    return rows
  from tinyrs_jax.data.records import TASKS
  tasks = list(TASKS)
  nan = float("nan")
  table = np.asarray([[tasks.index(r["task"]) if r.get("task") in TASKS else -1, _SIZES.index(r.get("size"))]
                      + [nan if r.get(k) is None else float(r[k]) for k in _ROW_FIELDS + _OPTIONAL_FIELDS]
                      for r in rows], np.float64).reshape(len(rows), 2 + len(_ROW_FIELDS) + len(_OPTIONAL_FIELDS))
  count = sharding_lib.gather_rows(np.asarray([len(rows)]))
  width = int(count.max())
  padded = np.full((width, table.shape[1]), nan)
  padded[:len(rows)] = table
  allrows = sharding_lib.gather_rows(padded).reshape(len(count), width, -1)
  out = []
  for p, n in enumerate(count):
    for t in allrows[p, :int(n)]:
      row = {"task": tasks[int(t[0])] if t[0] >= 0 else None, "size": _SIZES[int(t[1])]}
      for k, v in zip(_ROW_FIELDS + _OPTIONAL_FIELDS, t[2:]):
        if np.isnan(v) and k in _OPTIONAL_FIELDS:
          continue
        row[k] = None if np.isnan(v) else bool(v) if k in _BOOL_FIELDS else int(v) if k in _INT_FIELDS else float(v)
      out.append(row)
  return out


__all__ = ["aggregate", "confusion", "gather_scored_rows", "read_rows", "markdown_table", "unscored", "RULE_SETS"]
