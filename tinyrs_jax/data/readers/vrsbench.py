"""VRSBench evaluation JSON (`vrsbench`): referring (box answers), VQA and caption entries. A referring entry's
true boxes are those of its ground_truth only (a box written in the question is never taken as the answer);
`unique` (VRSBench's unique / non-unique split) is kept in extra."""
from __future__ import annotations

import os
from typing import Any, Iterator

from tinyrs_jax.data.readers._common import _image_path, _load_json, _size_of, register_reader
from tinyrs_jax.data.readers.conversations import _GEO_BOX_RE, _GEO_GROUP_RE, _GEO_PHRASE_RE, _GEO_TAG_RE, \
    convert_geochat_text
from tinyrs_jax.data.records import IMAGE_PLACEHOLDER, DataError, Record, SkipCounter, validate_record


@register_reader("vrsbench")
def read_vrsbench(path: str, *, skips: SkipCounter, image_dir: str | None = None,
                  check_files: bool = True) -> Iterator[Record]:
  """VRSBench evaluation JSON: referring (box answers), VQA and caption entries."""
  path = os.fspath(path)
  if image_dir is None:
    here = os.path.dirname(os.path.abspath(path))
    image_dir = next((d for d in (os.path.join(here, "Images_val"), os.path.join(here, "images")) if os.path.isdir(d)),
                     here)
  data = _load_json(path)
  if not isinstance(data, list):
    raise DataError("expected a JSON list of evaluation entries", source=path, reason="bad_json")
  for line, obj in enumerate(data, start=1):
    try:
      yield _vrsbench_record(obj, path, line, image_dir, check_files, skips)
    except DataError as e:
      skips.skip(e)


def _vrsbench_record(obj: Any, source: str, line: int, image_dir: str, check_files: bool,
                     skips: SkipCounter) -> Record:
  if not isinstance(obj, dict):
    raise DataError("entry is not an object", source=source, line=line, reason="bad_record")
  for key in ("image_id", "question", "ground_truth"):
    if not isinstance(obj.get(key), str):
      raise DataError(f"missing or non-string {key}", source=source, line=line, field=key, reason="missing_field")
  image = _image_path(obj["image_id"], image_dir, source, line, check_files)
  question, truth = obj["question"], obj["ground_truth"].strip()
  tag = _GEO_TAG_RE.search(question)
  question = _GEO_TAG_RE.sub("", question).strip()
  is_box = bool(_GEO_BOX_RE.fullmatch(truth)) or bool(_GEO_GROUP_RE.fullmatch(truth))
  qtype = str(obj.get("type", ""))
  if is_box:
    task = "ground"
  elif (tag and tag.group(1).lower() == "caption") or qtype.lower() == "caption" or "describe" in question.lower():
    task = "caption"
  else:
    task = "vqa"
  boxes: list = []
  size = None
  if is_box or _GEO_BOX_RE.search(question):
    size = _size_of(image, obj, source, line)
    phrase = _GEO_PHRASE_RE.findall(question)
    label = phrase[0] if phrase else question
    question, _in_question = convert_geochat_text(question, *size, notes=skips, source=source, line=line,
                                                  field="question")
    truth, found = convert_geochat_text(truth, *size, default_label=label, notes=skips, source=source, line=line,
                                        field="ground_truth")
    boxes = found  # the true boxes are the answer's; a box written in the question is context, never truth
    if is_box and len(boxes) > 1:
      task = "ground_multi"
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + question},
              {"role": "assistant", "content": truth}]
  extra = {k: obj[k] for k in ("question_id", "type", "unique", "obj_corner", "size_group") if k in obj}
  record = Record(id=str(obj.get("question_id", f"vrsbench:{line}")), image=image, messages=messages, task=task,
                  answer=None if task == "caption" else truth, boxes=tuple(boxes), source=source, line=line,
                  image_size=size, extra=extra)
  return validate_record(record)
