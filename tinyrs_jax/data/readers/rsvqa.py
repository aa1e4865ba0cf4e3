"""RSVQA-LR / -HR: questions, answers and images JSON tables per split; one VQA record per active question.
`RSVQA_TYPE_TASKS` (question type -> task) also serves GeoChat-Bench's VQA files and the original work's
evaluation JSON."""
from __future__ import annotations

import os
from typing import Iterator

from tinyrs_jax.data.readers._common import _image_path, _load_json, register_reader
from tinyrs_jax.data.records import IMAGE_PLACEHOLDER, DataError, Record, SkipCounter, validate_record


RSVQA_TYPE_TASKS = {"presence": "vqa_presence", "comp": "vqa_compare", "rural_urban": "vqa_rural_urban",
                    "count": "vqa_count", "area": "vqa_area"}
RSVQA_HINTS = {"presence": "Answer yes or no.", "comp": "Answer yes or no.", "rural_urban": "Answer rural or urban.",
               "count": "Answer with a number.", "area": "Answer with the area."}


@register_reader("rsvqa")
def read_rsvqa(path: str, *, skips: SkipCounter, split: str = "test", prefix: str | None = None,
               image_dir: str | None = None, answer_hints: bool = True,
               check_files: bool = True) -> Iterator[Record]:
  """RSVQA-LR (prefix "LR") or -HR (prefix "USGS"); split train|val|test|test_phili. Inactive entries are
  skipped silently (noted as "inactive_question")."""
  root = os.fspath(path)
  if prefix is None:
    prefix = next((p for p in ("LR", "USGS") if os.path.exists(os.path.join(root, f"{p}_split_{split}_questions.json"))),
                  "LR")
  files = {kind: os.path.join(root, f"{prefix}_split_{split}_{kind}.json") for kind in ("questions", "answers", "images")}
  tables = {}
  for kind, file in files.items():
    data = _load_json(file)
    if not isinstance(data, dict) or not isinstance(data.get(kind), list):
      raise DataError(f'expected {{"{kind}": [...]}}', source=file, field=kind, reason="bad_json")
    tables[kind] = {row["id"]: row for row in data[kind] if isinstance(row, dict) and "id" in row}
  if image_dir is None:
    candidates = [os.path.join(root, d) for d in (f"Images_{prefix}", "Images_LR", "Images", "Data", "images")]
    image_dir = next((d for d in candidates if os.path.isdir(d)), root)
  source = files["questions"]
  for line, question in enumerate(_load_json(source)["questions"], start=1):
    if not isinstance(question, dict):
      skips.skip(DataError("question is not an object", source=source, line=line, reason="bad_record"))
      continue
    if not question.get("active", True):
      skips.note("inactive_question")
      continue
    try:
      yield _rsvqa_record(question, tables, source, line, prefix, split, image_dir, answer_hints, check_files)
    except DataError as e:
      skips.skip(e)


def _rsvqa_record(q: dict, tables: dict, source: str, line: int, prefix: str, split: str, image_dir: str,
                  answer_hints: bool, check_files: bool) -> Record:
  for key in ("question", "type", "img_id", "answers_ids"):
    if key not in q:
      raise DataError(f"question lacks {key}", source=source, line=line, field=key, reason="missing_field")
  image_row = tables["images"].get(q["img_id"])
  if image_row is None:
    raise DataError(f"img_id {q['img_id']} is not in the images file", source=source, line=line, field="img_id",
                    reason="missing_field")
  if not image_row.get("active", True):
    raise DataError(f"image {q['img_id']} is inactive", source=source, line=line, field="img_id",
                    reason="inactive_image")
  answers = [tables["answers"].get(a) for a in q["answers_ids"]]
  answers = [a for a in answers if a is not None and a.get("active", True) and isinstance(a.get("answer"), str)]
  if not answers:
    raise DataError("no active answer among answers_ids", source=source, line=line, field="answers_ids",
                    reason="missing_answer")
  answer = answers[0]["answer"].strip()
  qtype = str(q["type"])
  image = _image_path(f"{q['img_id']}.tif", image_dir, source, line, check_files)
  text = q["question"].strip()
  if answer_hints and qtype in RSVQA_HINTS:
    text += " " + RSVQA_HINTS[qtype]
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + text}, {"role": "assistant", "content": answer}]
  return validate_record(Record(
      id=f"rsvqa_{prefix}_{split}_{q['id']}", image=image, messages=messages,
      task=RSVQA_TYPE_TASKS.get(qtype, "vqa"), answer=answer, source=source, line=line,
      extra={"question_type": qtype, "question_id": q["id"], "img_id": q["img_id"],
             "raw_question": q["question"].strip()}))
