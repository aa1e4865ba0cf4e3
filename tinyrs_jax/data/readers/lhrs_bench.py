"""LHRS-Bench's qa.json (`lhrs_bench`): one multiple-choice record per question of every image entry."""
from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

from tinyrs_jax.data.readers._common import _image_in, _load_json, normalize_placeholder, register_reader
from tinyrs_jax.data.readers.choices import LHRS_TYPE_NAMES, answer_letter, mc_prompt, parse_choices
from tinyrs_jax.data.records import IMAGE_PLACEHOLDER, DataError, Record, SkipCounter, validate_record


LHRS_BENCH_IMAGE_DIRS = ("imgs_png", "imgs_jpg", "images", "imgs")


@register_reader("lhrs_bench")
def read_lhrs_bench(path: str, *, skips: SkipCounter, image_dir: str | None = None,
                    check_files: bool = True) -> Iterator[Record]:
  """LHRS-Bench (qa.json): one multiple-choice record per question of every image entry."""
  path = os.fspath(path)
  data = _load_json(path)
  if isinstance(data, list):
    raise DataError("a JSON list, not LHRS-Bench's {\"data\": [...], \"qtype\": {...}}; the evaluation suite's "
                    "conversation-form copy (LHRS-Bench.json) reads with format 'tinyrs_eval'", source=path,
                    reason="bad_json")
  if not isinstance(data, dict) or not isinstance(data.get("data"), list):
    raise DataError('expected {"data": [...], "qtype": {...}}', source=path, field="data", reason="bad_json")
  type_names = _lhrs_type_names(data.get("qtype"), path)
  here = os.path.dirname(os.path.abspath(path))
  if image_dir is not None:
    dirs = [image_dir]
  else:
    dirs = [os.path.join(here, n) for n in LHRS_BENCH_IMAGE_DIRS if os.path.isdir(os.path.join(here, n))] or [here]
  for line, item in enumerate(data["data"], start=1):
    if not isinstance(item, dict) or not isinstance(item.get("qa_pairs"), list):
      skips.skip(DataError("entry is not an object with a qa_pairs list", source=path, line=line, field="qa_pairs",
                           reason="missing_field"))
      continue
    for number, qa in enumerate(item["qa_pairs"], start=1):
      try:
        yield _lhrs_record(item, qa, line, number, path, dirs, type_names, check_files, skips)
      except DataError as e:
        skips.skip(e)


def _lhrs_type_names(qtype: Any, source: str) -> dict[str, str]:
  """`qtype` keys "1 identity", ... -> {"1": "identity", ...}; absent -> the standard 11 names."""
  if qtype is None:
    return dict(LHRS_TYPE_NAMES)
  if not isinstance(qtype, dict):
    raise DataError(f"qtype is {type(qtype).__name__}, expected an object", source=source, field="qtype",
                    reason="bad_json")
  names = {}
  for key, value in qtype.items():
    parts = str(key).strip().split(None, 1)
    if len(parts) == 2:
      names[parts[0]] = parts[1].strip()
    elif parts:
      names[parts[0]] = str(value).strip() if isinstance(value, str) and value.strip() else parts[0]
  return names


def _lhrs_record(item: dict, qa: Any, line: int, number: int, source: str, dirs: Sequence[str],
                 type_names: dict[str, str], check_files: bool, skips: SkipCounter) -> Record:
  field = f"qa_pairs[{number - 1}]"
  where = dict(source=source, line=line)
  if not isinstance(qa, dict):
    raise DataError("question is not an object", field=field, reason="bad_record", **where)
  question = qa.get("question")
  if not isinstance(question, str) or not question.strip():
    raise DataError("missing or empty question", field=f"{field}.question", reason="missing_field", **where)
  try:
    choices, shown = parse_choices(qa.get("choices"))
  except ValueError as e:
    raise DataError(str(e), field=f"{field}.choices", reason="bad_choices", **where) from None
  try:
    letter = answer_letter(qa.get("answer"), choices)
  except ValueError as e:
    raise DataError(str(e), field=f"{field}.answer", reason="bad_answer", **where) from None
  type_ids = qa.get("type", [])
  type_ids = [type_ids] if isinstance(type_ids, (str, int)) else type_ids
  if not isinstance(type_ids, list):
    raise DataError(f"type is {type(type_ids).__name__}, expected a list of type ids", field=f"{field}.type",
                    reason="bad_type", **where)
  unknown = [t for t in type_ids if str(t).strip() not in type_names]
  if unknown:
    raise DataError(f"type ids {unknown} are not in qtype ({sorted(type_names)})", field=f"{field}.type",
                    reason="bad_type", **where)
  image = _image_in(dirs, item.get("filename"), source, line, check_files, skips, field="filename")
  question_id = str(qa.get("question_id", qa.get("id", f"{line}-{number}")))
  messages = [{"role": "user", "content": mc_prompt(normalize_placeholder(question).replace(IMAGE_PLACEHOLDER, ""),
                                                    shown)},
              {"role": "assistant", "content": letter}]
  return validate_record(Record(
      id=f"lhrs_bench/{question_id}", image=image, messages=messages, task="mc", answer=letter, source=source,
      line=line, extra={"choices": choices, "question_types": [type_names[str(t).strip()] for t in type_ids],
                        "type_ids": [str(t).strip() for t in type_ids], "question_id": question_id,
                        "filename": item.get("filename")}))
