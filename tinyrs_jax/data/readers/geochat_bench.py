"""GeoChat-Bench's JSONL files (`geochat_bench`): scene classification, RSVQA-based VQA, referring, region
captioning and grounded description, the kind from the file name."""
from __future__ import annotations

import os
import re
from typing import Any, Iterator

from tinyrs_jax.data.readers._common import (IMAGE_EXTENSIONS, _box_to_text, _existing_dir, _image_in,
                                             _iter_json_objects, _load_json, _replace, _size_of, _strip_placeholder,
                                             register_reader)
from tinyrs_jax.data.readers.conversations import _GEO_BOX_RE, convert_geochat_text
from tinyrs_jax.data.readers.rsvqa import RSVQA_TYPE_TASKS
from tinyrs_jax.data.records import (BOX_TOLERANCE_PX, IMAGE_PLACEHOLDER, TASKS, DataError, Record, SkipCounter,
                                     check_box, validate_record)


# File stem (lower case) -> kind, and where each kind's images usually are, relative to the JSONL's folder.
GEOCHAT_BENCH_KINDS = {"aid": "scene", "ucmerced": "scene", "lrben": "vqa", "hrben": "vqa", "referring": "referring",
                       "region_captioning": "region_captioning", "grounding_description": "grounding_description"}
GEOCHAT_BENCH_IMAGE_DIRS = {
    "aid": ("AID", "aid", "images"), "ucmerced": (os.path.join("UCMerced_LandUse", "Images"), "Images", "images"),
    "lrben": ("Images_LR", "images"), "hrben": ("Data", "images"),
    "referring": ("final_images_llava", "images"), "region_captioning": ("final_images_llava", "images"),
    "grounding_description": ("final_images_llava", "images")}
# The RSVQA answer file GeoChat's VQA question ids index (the JSONL files carry no answers).
GEOCHAT_BENCH_ANSWERS = {"lrben": "LR_split_test_answers.json", "hrben": "USGS_split_test_phili_answers.json"}
GEOCHAT_CATEGORY_ALIASES = {"comparison": "comp", "compare": "comp", "ruralurban": "rural_urban",
                            "rural_or_urban": "rural_urban", "counting": "count"}
GEOCHAT_REFER_PROMPT = "Give me the location of <|object_ref_start|>{phrase}<|object_ref_end|>"
GEOCHAT_IDENTIFY_PROMPT = "What is the object present at {box}"
GEOCHAT_GROUNDED_DESCRIPTION_PROMPT = "Describe the image in detail, with the box of each object you mention."


@register_reader("geochat_bench")
def read_geochat_bench(path: str, *, skips: SkipCounter, kind: str | None = None, task: str | None = None,
                       image_dir: str | None = None, data_dir: str | None = None, answers_file: str | None = None,
                       require_answer: bool = True, check_files: bool = True) -> Iterator[Record]:
  """One GeoChat-Bench JSONL file; its kind from the file name (aid, UCmerced, lrben, hrben, referring,
  region_captioning, grounding_description) unless `kind` says it (scene, vqa, referring, region_captioning,
  grounding_description). VQA answers come from the RSVQA answers file (`answers_file`, or found in `data_dir`,
  the JSONL's folder or next to the images). `task` overrides every record's task."""
  path = os.fspath(path)
  stem = os.path.splitext(os.path.basename(path))[0].lower()
  kinds = set(GEOCHAT_BENCH_KINDS.values())
  kind = kind or GEOCHAT_BENCH_KINDS.get(stem)
  if kind is not None and kind not in kinds:
    raise DataError(f"kind {kind!r} is not one of {sorted(kinds)}", source=path, reason="bad_option")
  if task is not None and task not in TASKS:
    raise DataError(f"unknown task {task!r}; known: {sorted(TASKS)}", source=path, field="task", reason="bad_task")
  here = os.path.dirname(os.path.abspath(path))
  image_dir = image_dir or _existing_dir(here, GEOCHAT_BENCH_IMAGE_DIRS.get(stem, ("images",))) or here
  answers = None
  for line, obj in _iter_json_objects(path, skips):
    try:
      if not isinstance(obj, dict):
        raise DataError(f"record is {type(obj).__name__}, expected an object", source=path, line=line,
                        reason="bad_record")
      this_kind = kind or _geochat_bench_kind(obj, path, line)
      if this_kind == "vqa" and answers is None:
        answers = _geochat_vqa_answers(stem, answers_file, data_dir, here, image_dir, path)
      record = _GEOCHAT_BENCH_BUILDERS[this_kind](obj, path, line, image_dir, check_files, skips,
                                                  answers=answers, require_answer=require_answer)
      if task is not None:
        record = _replace(record, task=task)
      yield record
    except DataError as e:
      skips.skip(e)


def _geochat_bench_kind(obj: dict, source: str, line: int) -> str:
  if "text" in obj and "category" in obj:
    return "vqa"
  if "text" in obj and "ground_truth" in obj:
    return "scene"
  if "description" in obj:
    return "grounding_description"
  if "question" in obj and isinstance(obj.get("ground_truth"), list):
    return "referring"
  if isinstance(obj.get("question"), str) and _GEO_BOX_RE.search(obj["question"]):
    return "region_captioning"
  raise DataError("cannot tell the record's kind from its fields; pass kind=", source=source, line=line,
                  reason="unknown_kind")


def _geochat_vqa_answers(stem: str, answers_file: str | None, data_dir: str | None, here: str, image_dir: str,
                         source: str) -> dict:
  """{question id: answer} from an RSVQA answers file, or {} when none is found (records then need inline
  answers)."""
  if answers_file is None:
    names = [GEOCHAT_BENCH_ANSWERS[stem]] if stem in GEOCHAT_BENCH_ANSWERS else list(GEOCHAT_BENCH_ANSWERS.values())
    folders = [d for d in (data_dir, here, os.path.dirname(os.path.normpath(image_dir)), image_dir) if d]
    answers_file = next((os.path.join(d, n) for d in folders for n in names if os.path.exists(os.path.join(d, n))),
                        None)
    if answers_file is None:
      return {}
  data = _load_json(answers_file)
  if not isinstance(data, dict) or not isinstance(data.get("answers"), list):
    raise DataError('expected {"answers": [...]}', source=answers_file, field="answers", reason="bad_json")
  table: dict = {}
  for row in data["answers"]:
    if isinstance(row, dict) and row.get("active", True) and isinstance(row.get("answer"), str):
      table.setdefault(row.get("question_id", row.get("id")), row["answer"].strip())
  return table


def _require_str(obj: dict, key: str, source: str, line: int) -> str:
  value = obj.get(key)
  if not isinstance(value, str) or not value.strip():
    raise DataError(f"missing or empty {key}", source=source, line=line, field=key, reason="missing_field")
  return value


def _norm_class(name: str) -> str:
  return re.sub(r"[\s_\-]+", "", str(name)).lower()


def _geochat_scene(obj, source, line, image_dir, check_files, skips, **_) -> Record:
  text = _strip_placeholder(_require_str(obj, "text", source, line))
  truth = _require_str(obj, "ground_truth", source, line).strip()
  question_id = str(obj.get("question_id", f"{line}"))
  image = _image_in([image_dir], _require_str(obj, "image", source, line), source, line, check_files, skips)
  listed = re.search(r"classes:[ \t]*([^\n]*)", text, re.IGNORECASE)
  listed = listed.group(1) if listed else ""
  classes = [c.strip().rstrip(".").strip() for c in listed.split(",") if c.strip().rstrip(".").strip()]
  # The official scorer's class is the question id's folder ("Airport/airport_1"); ground_truth has known
  # glitches (AID's "MediumResidentialgt").
  key = question_id.split("/", 1)[0] if "/" in question_id else truth
  candidates = [key, truth] + ([truth[:-2]] if truth.lower().endswith("gt") else [])
  answer = next((c for cand in candidates for c in classes if _norm_class(c) == _norm_class(cand)), key)
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + text}, {"role": "assistant", "content": answer}]
  return validate_record(Record(
      id=f"{os.path.splitext(os.path.basename(source))[0]}/{question_id}", image=image, messages=messages,
      task="classify", answer=answer, source=source, line=line,
      extra={"question_id": obj.get("question_id"), "class_key": key, "ground_truth": truth, "classes": classes}))


def _geochat_vqa(obj, source, line, image_dir, check_files, skips, *, answers, require_answer, **_) -> Record:
  text = _strip_placeholder(_require_str(obj, "text", source, line))
  category = str(obj.get("category", obj.get("type", ""))).strip()
  qtype = re.sub(r"[\s/]+", "_", category.lower())
  qtype = GEOCHAT_CATEGORY_ALIASES.get(qtype.replace("_", ""), GEOCHAT_CATEGORY_ALIASES.get(qtype, qtype))
  question_id = obj.get("question_id")
  image = _image_in([image_dir], _require_str(obj, "image", source, line), source, line, check_files, skips)
  answer = next((obj[k] for k in ("ground_truth", "answer", "gt") if isinstance(obj.get(k), str)), None)
  if answer is None and answers:
    answer = answers.get(question_id)
    if answer is None and isinstance(question_id, str) and question_id.strip().isdigit():
      answer = answers.get(int(question_id))
  if answer is None and require_answer:
    raise DataError(f"no answer for question_id {question_id!r}: GeoChat-Bench's VQA files carry none; pass "
                    "answers_file= (RSVQA's LR_split_test_answers.json / USGS_split_test_phili_answers.json) or "
                    "data_dir= (the folder holding it)", source=source, line=line, field="question_id",
                    reason="missing_answer")
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + text}]
  if answer is not None:
    answer = str(answer).strip()
    messages.append({"role": "assistant", "content": answer})
  return validate_record(Record(
      id=f"{os.path.splitext(os.path.basename(source))[0]}/{question_id if question_id is not None else line}",
      image=image, messages=messages, task=RSVQA_TYPE_TASKS.get(qtype, "vqa"), answer=answer, source=source,
      line=line, extra={"question_id": question_id, "question_type": qtype, "category": category}),
      require_assistant=answer is not None)


def _geochat_image_id(obj: dict, source: str, line: int) -> str:
  image_id = str(obj.get("image_id") or obj.get("image") or "").strip()
  if not image_id:
    raise DataError("missing image_id", source=source, line=line, field="image_id", reason="missing_field")
  return image_id if os.path.splitext(image_id)[1].lower() in IMAGE_EXTENSIONS else image_id + ".png"


def _polygon_boxes(value: Any, size: tuple[int, int], source: str, line: int, field: str,
                   skips: SkipCounter) -> list[tuple[float, float, float, float]]:
  """Ground-truth polygons in pixels ([[x, y] x 4], 8 numbers, or an axis-aligned [x1, y1, x2, y2]; one or a list
  of them) -> their axis-aligned boxes, clipped to the image (noted "clipped_box"); a rotated polygon's box is its
  hull (noted "polygon_to_box")."""
  def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)

  def is_point(v):
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(is_number(c) for c in v)

  if isinstance(value, (list, tuple)) and value and (all(is_number(v) for v in value)
                                                     or all(is_point(v) for v in value)):
    value = [value]
  if not isinstance(value, (list, tuple)) or not value:
    raise DataError(f"ground truth {value!r} is not a list of polygons", source=source, line=line, field=field,
                    reason="bad_box")
  width, height = size
  boxes = []
  for i, poly in enumerate(value):
    if isinstance(poly, (list, tuple)) and all(is_point(p) for p in poly) and len(poly) >= 3:
      xs, ys = [float(p[0]) for p in poly], [float(p[1]) for p in poly]
      rotated = len({round(x, 3) for x in xs}) > 2 or len({round(y, 3) for y in ys}) > 2
    elif isinstance(poly, (list, tuple)) and len(poly) in (4, 8) and all(is_number(v) for v in poly):
      xs, ys = [float(v) for v in poly[0::2]], [float(v) for v in poly[1::2]]
      rotated = len(poly) == 8 and (len({round(x, 3) for x in xs}) > 2 or len({round(y, 3) for y in ys}) > 2)
    else:
      raise DataError(f"polygon {i} {poly!r} is not [[x, y], ...], 8 numbers or [x1, y1, x2, y2]", source=source,
                      line=line, field=f"{field}[{i}]", reason="bad_box")
    box = (min(xs), min(ys), max(xs), max(ys))
    clipped = (max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height)))
    if clipped != box and (box[0] < -BOX_TOLERANCE_PX or box[1] < -BOX_TOLERANCE_PX
                           or box[2] > width + BOX_TOLERANCE_PX or box[3] > height + BOX_TOLERANCE_PX):
      skips.note("clipped_box")
    if rotated:
      skips.note("polygon_to_box")
    boxes.append(check_box(clipped, width, height, source=source, line=line, field=f"{field}[{i}]"))
  return boxes


def _geochat_referring(obj, source, line, image_dir, check_files, skips, **_) -> Record:
  phrase = " ".join(_require_str(obj, "question", source, line).split())
  image = _image_in([image_dir], _geochat_image_id(obj, source, line), source, line, check_files, skips,
                    field="image_id")
  size = _size_of(image, obj, source, line)
  truth = obj.get("ground_truth")
  if isinstance(truth, str):
    text, found = convert_geochat_text(truth, *size, default_label=phrase, notes=skips, source=source, line=line,
                                       field="ground_truth")
    boxes = [b for _, b in found]
    if not boxes:
      raise DataError(f"no box in ground_truth {truth!r}", source=source, line=line, field="ground_truth",
                      reason="bad_box")
  else:
    boxes = _polygon_boxes(truth, size, source, line, "ground_truth", skips)
  answer = "".join(_box_to_text(b, *size, label=phrase if i == 0 else None) for i, b in enumerate(boxes))
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + GEOCHAT_REFER_PROMPT.format(phrase=phrase)},
              {"role": "assistant", "content": answer}]
  extra = {k: obj[k] for k in ("question_id", "type", "dataset", "obj_ids", "size_group") if k in obj}
  return validate_record(Record(
      id=f"referring/{obj.get('question_id', line)}", image=image, messages=messages,
      task="ground" if len(boxes) == 1 else "ground_multi", answer=answer,
      boxes=tuple((phrase, b) for b in boxes), source=source, line=line, image_size=size, extra=extra))


def _geochat_region_caption(obj, source, line, image_dir, check_files, skips, **_) -> Record:
  region = obj.get("question")
  caption = " ".join(_require_str(obj, "ground_truth", source, line).split())
  image = _image_in([image_dir], _geochat_image_id(obj, source, line), source, line, check_files, skips,
                    field="image_id")
  size = _size_of(image, obj, source, line)
  if isinstance(region, str) and _GEO_BOX_RE.search(region):
    text, found = convert_geochat_text(region.strip(), *size, default_label=caption, notes=skips, source=source,
                                       line=line, field="question")
    boxes = [b for _, b in found]
  else:
    boxes = _polygon_boxes(region, size, source, line, "question", skips)
    text = "".join(_box_to_text(b, *size) for b in boxes)
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + GEOCHAT_IDENTIFY_PROMPT.format(box=text)},
              {"role": "assistant", "content": caption}]
  extra = {k: obj[k] for k in ("question_id", "type", "dataset", "obj_ids", "size_group") if k in obj}
  return validate_record(Record(
      id=f"region_captioning/{obj.get('question_id', line)}", image=image, messages=messages, task="identify",
      answer=caption, boxes=tuple((caption, b) for b in boxes), source=source, line=line, image_size=size,
      extra=extra))


def _geochat_grounding_description(obj, source, line, image_dir, check_files, skips, **_) -> Record:
  description = _require_str(obj, "description", source, line).strip()
  image = _image_in([image_dir], _geochat_image_id(obj, source, line), source, line, check_files, skips,
                    field="image_id")
  size = _size_of(image, obj, source, line)
  text, found = convert_geochat_text(description, *size, notes=skips, source=source, line=line,
                                     field="description")
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + GEOCHAT_GROUNDED_DESCRIPTION_PROMPT},
              {"role": "assistant", "content": text.strip()}]
  return validate_record(Record(
      id=f"grounding_description/{obj.get('question_id', line)}", image=image, messages=messages,
      task="ground_multi", answer=None, boxes=tuple(found), source=source, line=line, image_size=size,
      extra={k: obj[k] for k in ("question_id", "image_id") if k in obj}))


_GEOCHAT_BENCH_BUILDERS = {"scene": _geochat_scene, "vqa": _geochat_vqa, "referring": _geochat_referring,
                           "region_captioning": _geochat_region_caption,
                           "grounding_description": _geochat_grounding_description}
