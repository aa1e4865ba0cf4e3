"""The original work's evaluation JSON (`tinyrs_eval`; ScoreRS/VHM lineage: cls_AID.json, RSVQA_*_RSVQA.json,
VG_DOIR_RSVG_test.json, LHRS-Bench.json, ...)."""
from __future__ import annotations

import os
import re
from typing import Any, Iterator

from tinyrs_jax.data.readers._common import (_box_to_text, _image_path, _load_json, _messages_from, _size_of,
                                             _strip_placeholder, register_reader)
from tinyrs_jax.data.readers.choices import _LETTER_THEN_TEXT_RE, _LONE_LETTER_RE, LHRS_TYPE_NAMES
from tinyrs_jax.data.readers.dior_rsvg import size_group
from tinyrs_jax.data.readers.rsvqa import RSVQA_TYPE_TASKS
from tinyrs_jax.data.records import IMAGE_PLACEHOLDER, TASKS, DataError, Record, SkipCounter, check_box, validate_record


# A ground-truth pixel box as the original's scorer finds it: the first "[x1, y1, x2, y2]" of the answer.
_PIXEL_BOX_RE = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,"
                           r"\s*(-?\d+(?:\.\d+)?)\s*\]")
# Task (and RSVQA question type) by the suite's file names when the records do not say it: cls_AID.json,
# RSVQA_HR-comp_RSVQA.json, LHRS-Bench.json.
_TINYRS_FILE_TASKS = ((re.compile(r"^cls_", re.I), "classify", None),
                      *((re.compile(rf"^RSVQA_(?:LR|HR)-{t}(?:_|$)", re.I), task, t)
                        for t, task in RSVQA_TYPE_TASKS.items()),
                      (re.compile(r"^LHRS[-_]?Bench", re.I), "mc", None))
_TINYRS_KEYS = {"image", "image_path", "conversations", "size", "type", "id"}


@register_reader("tinyrs_eval")
def read_tinyrs_eval(path: str, *, skips: SkipCounter, task: str | None = None, image_dir: str | None = None,
                     check_files: bool = True, require_assistant: bool = True) -> Iterator[Record]:
  """The original work's evaluation JSON (ScoreRS/VHM lineage; cls_AID.json, RSVQA_*_RSVQA.json,
  VG_DOIR_RSVG_test.json, LHRS-Bench.json, ...). `task` None infers it per record (module docstring)."""
  path = os.fspath(path)
  if task is not None and task not in TASKS:
    raise DataError(f"unknown task {task!r}; known: {sorted(TASKS)}", source=path, field="task", reason="bad_task")
  data = _load_json(path)
  if not isinstance(data, list):
    raise DataError(f"expected a JSON list of records, found {type(data).__name__}", source=path, reason="bad_json")
  stem = os.path.splitext(os.path.basename(path))[0]
  file_task = next(((t, q) for pattern, t, q in _TINYRS_FILE_TASKS if pattern.search(stem)), (None, None))
  for line, obj in enumerate(data, start=1):
    try:
      yield _tinyrs_eval_record(obj, path, line, stem, task, file_task, image_dir, check_files, require_assistant,
                                skips)
    except DataError as e:
      skips.skip(e)


def _tinyrs_image(obj: dict, source: str, line: int, stem: str, image_dir: str | None, check_files: bool) -> str:
  """As the original's inference resolves it: image_path absolute -> image_path/image; relative -> next to the
  JSON; absent -> the folder named after the JSON (AID.json -> AID/). `image_dir` replaces the folder."""
  name = obj.get("image")
  if not isinstance(name, str) or not name.strip():
    raise DataError("missing or empty image", source=source, line=line, field="image", reason="missing_field")
  here = os.path.dirname(os.path.abspath(source))
  if image_dir is not None:
    folder = image_dir
  elif obj.get("image_path") is None:
    folder = os.path.join(here, stem)
  elif isinstance(obj["image_path"], str):
    folder = obj["image_path"] if os.path.isabs(obj["image_path"]) else os.path.join(here, obj["image_path"])
  else:
    raise DataError(f"image_path is {type(obj['image_path']).__name__}, expected a path", source=source, line=line,
                    field="image_path", reason="bad_image_field")
  return _image_path(name.strip(), folder, source, line, check_files)


def _tinyrs_size(obj: dict, source: str, line: int) -> tuple[int, int] | None:
  """`size` is [height, width] (the original's scorers unpack `h, w = size`) -> (width, height)."""
  size = obj.get("size")
  if size is None:
    return None
  if (not isinstance(size, (list, tuple)) or len(size) != 2
      or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in size)):
    raise DataError(f"size {size!r} is not [height, width]", source=source, line=line, field="size",
                    reason="bad_size")
  return int(size[1]), int(size[0])


def _tinyrs_eval_record(obj: Any, source: str, line: int, stem: str, task: str | None,
                        file_task: tuple[str | None, str | None],
                        image_dir: str | None, check_files: bool, require_assistant: bool,
                        skips: SkipCounter) -> Record:
  if not isinstance(obj, dict):
    raise DataError(f"record is {type(obj).__name__}, expected an object", source=source, line=line,
                    reason="bad_record")
  messages = _messages_from(obj, source, line)
  image = _tinyrs_image(obj, source, line, stem, image_dir, check_files)
  first_user = next((m for m in messages if m["role"] == "user"), None)
  if first_user is not None and not any(IMAGE_PLACEHOLDER in m["content"] for m in messages):
    first_user["content"] = IMAGE_PLACEHOLDER + first_user["content"]
    skips.note("added_image_placeholder")
  last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
  raw = messages[last]["content"].strip() if last is not None else None
  answer_field = f"conversations[{last}].value"
  size = _tinyrs_size(obj, source, line)
  qtype = obj.get("type")
  box_match = _PIXEL_BOX_RE.search(raw) if raw is not None else None
  if task is None:
    if box_match is not None:
      task = "ground"
    elif isinstance(qtype, str) and qtype in RSVQA_TYPE_TASKS:
      task = RSVQA_TYPE_TASKS[qtype]
    elif isinstance(qtype, list) and qtype and all(str(t) in LHRS_TYPE_NAMES for t in qtype):
      task = "mc"
    else:
      task = file_task[0] or "vqa"
  extra = {k: v for k, v in obj.items() if k not in _TINYRS_KEYS}
  extra.update({k: obj[k] for k in ("type", "size", "image_path") if k in obj})
  if first_user is not None:
    extra["raw_question"] = first_user["content"]  # the original's prompt is built from it (prompt_style tinyrs)
  if isinstance(qtype, str):
    extra["question_type"] = qtype
  elif file_task[1] is not None and task == file_task[0]:
    extra["question_type"] = file_task[1]
  if isinstance(qtype, list) and all(str(t) in LHRS_TYPE_NAMES for t in qtype):
    extra["question_types"] = [LHRS_TYPE_NAMES[str(t)] for t in qtype]
  boxes: tuple = ()
  answer = raw
  if task == "ground" and raw is not None:
    if box_match is None:
      raise DataError(f"answer {raw!r} has no [x1, y1, x2, y2] box", source=source, line=line, field=answer_field,
                      reason="bad_box")
    size = size or _size_of(image, {}, source, line)
    box = check_box([float(v) for v in box_match.groups()], *size, source=source, line=line, field=answer_field)
    label = _strip_placeholder(first_user["content"]) if first_user else ""
    boxes = ((label, box),)
    messages[last] = {"role": "assistant", "content": _box_to_text(box, *size)}  # Qwen2-VL's form, for training
    extra["size_group"] = size_group(box)
  elif task == "mc" and raw is not None:
    m = _LONE_LETTER_RE.fullmatch(raw) or _LETTER_THEN_TEXT_RE.match(raw)
    if m:
      answer = m.group(1).upper()
      if answer != raw:
        extra["raw_answer"] = raw
  return validate_record(Record(
      id=str(obj.get("id", f"{stem}:{line}")), image=image, messages=messages, task=task, answer=answer,
      boxes=boxes, source=source, line=line, image_size=size, extra=extra), require_assistant=require_assistant)
