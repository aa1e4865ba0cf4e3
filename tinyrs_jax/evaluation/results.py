"""The evaluation's files: DIR/results.json and DIR/results.md, the predictions files' progress, and what decides
that a benchmark's numbers are still current.

Two fingerprints per benchmark, both stored in its results.json entry:
  fingerprint  what decides the ANSWERS: the checkpoint and the step loaded, the benchmark's reader entry, the
               CONTENTS of every record read (ids, prompts, references, boxes, image paths and sizes, extras:
               `records_digest`; an edited benchmark file changes it), the generation settings and the image and
               length limits. A change means generating again.
  scoring      what decides the SCORES given the answers: `rules.SCORING_VERSION` (bumped with every change to
               the scoring code that can change a number) and the scoring settings (answer_tag, think_tags,
               box_format). A change alone means re-scoring the saved predictions: no generation.
Image files are not hashed (a benchmark's images are read only to answer); their paths and sizes are.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

from tinyrs_jax.evaluation import metrics as metrics_lib
from tinyrs_jax.evaluation import rules

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
SCORING_FIELDS = ("answer_tag", "think_tags", "box_format")  # eval fields that change scores, not answers


def write_json(path: str, obj) -> None:
  """Written whole or not at all (a temporary file renamed over it)."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, ensure_ascii=False)
  os.replace(tmp, path)


def read_results(workdir: str) -> dict:
  path = os.path.join(workdir, RESULTS_JSON)
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_results(workdir: str, results: dict) -> None:
  write_json(os.path.join(workdir, RESULTS_JSON), results)
  with open(os.path.join(workdir, RESULTS_MD), "w", encoding="utf-8") as f:
    f.write(metrics_lib.markdown_table(results))


def write_rows(path: str, rows: Sequence[dict]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
  os.replace(tmp, path)


def records_digest(records) -> str:
  """A digest of the records' contents, in order (what the benchmark's files say, as read)."""
  h = hashlib.sha1()
  for r in records:
    image = r.image
    if hasattr(image, "tobytes") and hasattr(image, "shape"):  # pixels in memory: their bytes
      image = ["array", list(image.shape), hashlib.sha1(image.tobytes()).hexdigest()]
    elif not isinstance(image, (str, type(None))):
      image = repr(image)  # a lazy reference (a dataclass: its fields)
    item = [r.id, image, r.image_size, r.task, r.messages, r.answer, [list(b) for _, b in r.boxes],
            [label for label, _ in r.boxes], r.extra]
    h.update(json.dumps(item, sort_keys=True, default=str).encode())
    h.update(b"\n")
  return h.hexdigest()[:16]


def scoring_fingerprint(eval_config) -> str:
  key = {"version": rules.SCORING_VERSION, **{k: eval_config.get(k) for k in SCORING_FIELDS}}
  return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def progress(progress_path: str) -> dict:
  if not os.path.exists(progress_path):
    return {}
  with open(progress_path, encoding="utf-8") as f:
    return json.load(f)


def complete(pred_path: str, progress_path: str, fp: str, num_records: int) -> bool:
  """Whether the predictions file holds every record's answer under fingerprint `fp` (re-scorable)."""
  p = progress(progress_path)
  return os.path.exists(pred_path) and p.get("fingerprint") == fp and int(p.get("records_done", -1)) == num_records


def resume_point(pred_path: str, progress_path: str, fp: str) -> int:
  """(Process 0) records already answered by an interrupted run with the same fingerprint (0: start over); the
  predictions file is cut back to exactly those records' rows (a line cut short by a kill is dropped)."""
  if not (os.path.exists(progress_path) and os.path.exists(pred_path)):
    return 0
  p = progress(progress_path)
  if p.get("fingerprint") != fp:
    return 0
  done = int(p["records_done"])
  rows = [r for r in metrics_lib.read_rows(pred_path, tolerant=True) if r["index"] < done]
  write_rows(pred_path, rows)
  return done
