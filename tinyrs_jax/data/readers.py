"""Readers for the remote-sensing formats users bring, by name: `read_records(format, path, ...)`.

Every reader yields `records.Record`s and reports bad input through a `SkipCounter` (strict: raise; lenient,
the default: skip, count by reason). A problem with one record skips that record; a problem that makes the
whole file unreadable (missing annotation file, JSON list that does not parse, bad DIOR-RSVG XML or split file)
raises DataError in both modes, because nothing after it could be trusted.

Formats (the registry `READERS`):
  llava         LLaVA-style conversations: a JSON list or JSONL (one object a line), chosen by the first
                non-blank character ('[' = list). Fields: id, image (one path, relative to `image_root`, default
                the annotation file's folder), conversations [{from: human|gpt|system, value}] (or OpenAI-style
                messages [{role, content}]); optional task, answer, boxes [{label, box: [x1, y1, x2, y2]}] in
                pixels, width, height. Other fields go to Record.extra. Our synthetic data is this format.
  geochat       GeoChat-Instruct (and VRSBench training) JSON: llava records whose text carries GeoChat boxes
                `{<x1><y1><x2><y2>|<θ>}` (0-100 grid), several joined by `<delim>`, referred phrases
                `<p>…</p>`, and task tags `[refer]`, `[grounding]`, `[identify]` (also `[vqa]`, `[caption]`).
  vrsbench      VRSBench evaluation JSON (a list of {image_id, question, ground_truth, type, unique, obj_corner,
                size_group, question_id}); boxes in `ground_truth`/`question` use the GeoChat syntax, 0-100.
  dior_rsvg     DIOR-RSVG root: Annotations/*.xml (VOC, one per image; each <object> has <name>, <bndbox>
                xmin/ymin/xmax/ymax pixels and <description>), JPEGImages/, and {train,val,test}.txt whose
                lines are indices into the list of all objects, enumerated over the XML files in file-name order
                and, within a file, in document order (26,991 / 3,829 / 7,500 triplets in the release).
  rsvqa         RSVQA-LR / -HR: {LR|USGS}_split_{train|val|test|test_phili}_{questions|answers|images}.json, each
                a dict with one list ("questions", "answers", "images"); images are `{id}.tif`.
  image_folder  root/ClassName/*.jpg (AID, UC Merced, NWPU-RESISC45, WHU-RS19, SIRI-WHU style).
  tfds          a prepared TensorFlow Datasets classification set (eurosat/rgb, resisc45, uc_merced, …) read
                through `tfds.data_source`, lazily: listing reads labels only; Record.image is a `TfdsImage`
                (an `images.LazyImage`) that reads and decodes its example when the pipeline loads it.
  lhrs_bench    LHRS-Bench's qa.json: {"data": [{filename, qa_pairs: [{question, choices, answer, type: [ids]}]}],
                "qtype": {"1 identity": …, …}}; images in imgs_png/ or imgs_jpg/ beside it (`image_dir` overrides).
                One task "mc" record per question: answer = the option letter (a stored letter or option text is
                mapped to it); extra: choices (texts without letters), question_types (names from qtype),
                type_ids, question_id ("<entry>-<question>", 1-based, unless the file has one), filename.
  geochat_bench GeoChat-Bench JSONL, the kind from the file name: aid / UCmerced {question_id "Class/name",
                image, text (lists "Classes: …"), ground_truth} -> classify (the class is the question id's
                folder, as the official scorer takes it, shown as spelled in the class list); lrben / hrben
                {question_id, image, text, category} -> vqa_* by category (answers come from RSVQA's answers file,
                `answers_file` or found in `data_dir`; extra question_type); referring {question_id, image_id
                (+.png), question (the phrase), ground_truth (pixel polygons [[x, y] x 4] per object), type,
                dataset, obj_ids, size_group} -> ground (ground_multi for several objects), boxes = the polygons'
                axis-aligned hulls clipped to the image (noted "polygon_to_box", "clipped_box");
                region_captioning {…, question = a GeoChat box on the 0-100 grid, ground_truth = caption} ->
                identify; grounding_description {image_id, description} -> ground_multi.
  tinyrs_eval   the original work's evaluation JSON (ScoreRS/VHM lineage): a list of {image, image_path?,
                conversations [question, answer], size? ([height, width]), type?}; images in image_path
                (absolute, or relative to the JSON's folder) or, without it, in the folder named after the JSON
                (AID.json -> AID/); `image_dir` overrides. Task: `task`, else inferred: an answer holding a
                "[x1, y1, x2, y2]" pixel box -> ground (Record.boxes from it; the answer text stays raw), an RSVQA
                `type` -> that task, a list of LHRS-Bench type ids -> mc, the suite's file names (cls_* ->
                classify, RSVQA_HR-comp_RSVQA.json -> vqa_compare, …), else vqa.

Conventions, decided once:
  - The image placeholder. `<image>` followed by a newline becomes `<image>` alone, so the chat template's
    `<|vision_end|>` is directly followed by the text, as in Hugging Face's Qwen2-VL processor when an image
    content item is followed by a text item. Any other whitespace is kept. A record with an image but no
    placeholder gets one at the start of its first user turn (noted "added_image_placeholder").
  - Boxes. Record.boxes are pixels of the image; in message text every box becomes Qwen2-VL's own form
    `<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>` on the 0-1000 grid
    (`boxes.box_to_text`). A box that overhangs the image by more than 1 px is an error ("box_outside_image").
  - GeoChat/VRSBench angles. Qwen2-VL has no oriented boxes: the axis-aligned box is kept exactly as given
    and the angle is dropped; a nonzero angle is counted (SkipCounter note "dropped_box_angle").
  - GeoChat task tags are removed from the text (Qwen2-VL does not know them) and become Record.task:
    [refer] -> ground, [grounding] -> ground_multi, [identify] -> identify. `<p>x</p>` becomes
    `<|object_ref_start|>x<|object_ref_end|>`.
  - Multiple choice (task "mc"): the prompt is the question, then "Choices: A. … B. …" (LHRS-Bench's layout), then
    an instruction to answer with the option letter; Record.answer is the letter.
  - Grounding size buckets (extra size_group, the evaluation's S/M/L): small if the pixel box's area <= 32²,
    medium if <= 96², else large.
  - Class names are shown humanized (underscores and CamelCase split, lower case: "BaseballField" ->
    "baseball field"); `class_names=` overrides them. The answer is the shown name.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import xml.etree.ElementTree as ET
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from tinyrs_jax.data import images as images_lib
from tinyrs_jax.data.records import (BOX_TOLERANCE_PX, IMAGE_PLACEHOLDER, TASKS, DataError, Record, SkipCounter,
                                     check_box, validate_record)

READERS: dict[str, Callable[..., Iterator[Record]]] = {}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def register_reader(name: str):
  def wrap(fn):
    READERS[name] = fn
    return fn
  return wrap


def reader_names() -> list[str]:
  return sorted(READERS)


def read_records(format: str, path: str, *, skips: SkipCounter | None = None, verify_images: bool = False,
                 **options) -> Iterator[Record]:
  """Records of `path` in `format`. `verify_images` fully decodes every image (slow; catches corrupt files)."""
  if format not in READERS:
    raise KeyError(f"unknown data format {format!r}; known: {reader_names()}")
  skips = skips if skips is not None else SkipCounter(strict=False, name=os.path.basename(str(path)))
  for record in READERS[format](path, skips=skips, **options):
    if verify_images and record.image is not None:
      try:
        images_lib.load_image(record.image, name=record.image if isinstance(record.image, str) else record.id)
      except DataError as e:
        skips.skip(DataError(e.detail, source=f"{record.source} (image {e.source})", line=record.line,
                             field="image", reason=e.reason))
        continue
    yield record


def load_records(format: str, path: str, **kw) -> list[Record]:
  return list(read_records(format, path, **kw))


# ------------------------------------------------------------------------------------------------ helpers

def _box_to_text(box, width: int, height: int, label: str | None = None) -> str:
  from tinyrs_jax.data import boxes  # lazy: a sibling module
  return boxes.box_to_text(box, width, height, label=label)


def normalize_placeholder(text: str) -> str:
  """`<image>` + the newline after it -> `<image>` (see the module docstring)."""
  return re.sub(re.escape(IMAGE_PLACEHOLDER) + r"\r?\n", IMAGE_PLACEHOLDER, text)


def humanize_class_name(name: str) -> str:
  """'BaseballField' / 'baseball_field' / 'Baseball-Field' -> 'baseball field'."""
  name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name.strip())
  return re.sub(r"[\s_\-]+", " ", name).strip().lower()


def classification_prompt(class_names: Sequence[str]) -> str:
  return (f"{IMAGE_PLACEHOLDER}Classify this remote sensing image into one of the following classes: "
          f"{', '.join(class_names)}. Answer with the class name only.")


def _load_json(path: str) -> Any:
  if not os.path.exists(path):
    raise DataError("file does not exist", source=path, reason="missing_file")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(f"not valid JSON ({e.msg}, column {e.colno})", source=path, line=e.lineno,
                    reason="bad_json") from None


def _iter_json_objects(path: str, skips: SkipCounter) -> Iterator[tuple[int, Any]]:
  """(line or 1-based index, object) from a JSON list or a JSONL file; bad JSONL lines are skipped."""
  if not os.path.exists(path):
    raise DataError("file does not exist", source=path, reason="missing_file")
  with open(path, encoding="utf-8") as f:
    head = f.read(4096).lstrip()
  if head.startswith("["):
    data = _load_json(path)
    if not isinstance(data, list):
      raise DataError(f"expected a JSON list of records, found {type(data).__name__}", source=path,
                      reason="bad_json")
    yield from enumerate(data, start=1)
    return
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        yield line_no, json.loads(line)
      except json.JSONDecodeError as e:
        skips.skip(DataError(f"malformed JSON line ({e.msg}, column {e.colno})", source=path, line=line_no,
                             reason="bad_json"))


_ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
               "model": "assistant", "system": "system"}


def _messages_from(obj: dict, source: str, line: int) -> list[dict[str, str]]:
  turns = obj.get("conversations", obj.get("messages"))
  field = "messages" if "messages" in obj and "conversations" not in obj else "conversations"
  if not isinstance(turns, list) or not turns:
    raise DataError("missing or empty conversation list", source=source, line=line, field=field,
                    reason="no_messages")
  messages = []
  for i, turn in enumerate(turns):
    if not isinstance(turn, dict):
      raise DataError(f"turn {i} is not an object", source=source, line=line, field=f"{field}[{i}]",
                      reason="bad_message")
    who = turn.get("from", turn.get("role"))
    text = turn.get("value", turn.get("content"))
    if who not in _ROLE_NAMES:
      raise DataError(f"turn {i} speaker {who!r} is not one of {sorted(_ROLE_NAMES)}", source=source, line=line,
                      field=f"{field}[{i}].from", reason="bad_role")
    if not isinstance(text, str):
      raise DataError(f"turn {i} text is not a string", source=source, line=line, field=f"{field}[{i}].value",
                      reason="bad_message")
    messages.append({"role": _ROLE_NAMES[who], "content": normalize_placeholder(text)})
  return messages


def _image_path(value: Any, base_dir: str, source: str, line: int, check_files: bool) -> str | None:
  if value is None or value == "":
    return None
  if isinstance(value, list):
    if len(value) != 1:
      raise DataError(f"{len(value)} images; records carry one image", source=source, line=line, field="image",
                      reason="multi_image")
    value = value[0]
  if not isinstance(value, str):
    raise DataError(f"image is {type(value).__name__}, expected a path", source=source, line=line, field="image",
                    reason="bad_image_field")
  path = value if os.path.isabs(value) else os.path.normpath(os.path.join(base_dir, value))
  if check_files and not os.path.exists(path):
    raise DataError(f"image file {path} does not exist", source=source, line=line, field="image",
                    reason="missing_image")
  return path


def _size_of(image: str | None, obj: dict, source: str, line: int) -> tuple[int, int]:
  if isinstance(obj.get("width"), int) and isinstance(obj.get("height"), int):
    return obj["width"], obj["height"]
  if image is None:
    raise DataError("boxes need an image (or width and height)", source=source, line=line, field="image",
                    reason="missing_image")
  try:
    return images_lib.image_size(image)
  except DataError as e:
    raise DataError(f"image {image}: {e.detail}", source=source, line=line, field="image",
                    reason=e.reason) from None


def _pixel_boxes(value: Any, size: tuple[int, int], source: str, line: int) -> tuple:
  if not isinstance(value, list):
    raise DataError("boxes must be a list", source=source, line=line, field="boxes", reason="bad_box")
  out = []
  for i, item in enumerate(value):
    if isinstance(item, dict):
      label, box = item.get("label", ""), item.get("box")
    elif isinstance(item, (list, tuple)) and len(item) == 2:
      label, box = item
    else:
      raise DataError(f"box {i} is neither {{label, box}} nor [label, box]", source=source, line=line,
                      field=f"boxes[{i}]", reason="bad_box")
    out.append((str(label), check_box(box, *size, source=source, line=line, field=f"boxes[{i}]")))
  return tuple(out)


def _infer_task(obj: dict, messages: list[dict[str, str]], default: str, source: str, line: int) -> str:
  task = obj.get("task")
  if task is None:
    if any("<think>" in m["content"] for m in messages if m["role"] == "assistant"):
      return "reason"
    return default
  if task not in TASKS:
    raise DataError(f"unknown task {task!r}; known: {sorted(TASKS)}", source=source, line=line, field="task",
                    reason="bad_task")
  return task


_LLAVA_KEYS = {"id", "image", "conversations", "messages", "task", "answer", "boxes", "width", "height"}


def _llava_record(obj: Any, *, source: str, line: int, base_dir: str, check_files: bool, require_assistant: bool,
                  default_task: str, text_hook=None, skips: SkipCounter | None = None) -> Record:
  if not isinstance(obj, dict):
    raise DataError(f"record is {type(obj).__name__}, expected an object", source=source, line=line,
                    reason="bad_record")
  messages = _messages_from(obj, source, line)
  image = _image_path(obj.get("image"), base_dir, source, line, check_files)
  first_user = next((m for m in messages if m["role"] == "user"), None)
  if image is not None and first_user and not any(IMAGE_PLACEHOLDER in m["content"] for m in messages):
    # Some sets omit the placeholder; the image then opens the first user turn (counted, not an error).
    first_user["content"] = IMAGE_PLACEHOLDER + first_user["content"]
    if skips is not None:
      skips.note("added_image_placeholder")
  task = _infer_task(obj, messages, default_task, source, line)
  size = (obj["width"], obj["height"]) if isinstance(obj.get("width"), int) and isinstance(
      obj.get("height"), int) else None
  boxes: tuple = ()
  extra = {k: v for k, v in obj.items() if k not in _LLAVA_KEYS}
  if text_hook is not None:  # GeoChat: rewrite box text, which needs the image size
    messages, task, boxes, size = text_hook(messages, task, image, obj, extra)
  if obj.get("boxes"):
    size = size or _size_of(image, obj, source, line)
    boxes = boxes + _pixel_boxes(obj["boxes"], size, source, line)
  answer = obj.get("answer")
  if answer is not None and not isinstance(answer, str):
    if isinstance(answer, (int, float, bool)):
      answer = str(answer).lower() if isinstance(answer, bool) else str(answer)
    else:
      raise DataError("answer must be a string", source=source, line=line, field="answer", reason="bad_answer")
  record = Record(id=str(obj.get("id", f"{os.path.basename(source)}:{line}")), image=image, messages=messages,
                  task=task, answer=answer, boxes=boxes, source=source, line=line, image_size=size, extra=extra)
  return validate_record(record, require_assistant=require_assistant)


@register_reader("llava")
def read_llava(path: str, *, skips: SkipCounter, image_root: str | None = None, check_files: bool = True,
               require_assistant: bool = True, default_task: str = "chat") -> Iterator[Record]:
  """LLaVA-style JSON list or JSONL. `require_assistant=False` accepts prompt-only records (RL prompts)."""
  path = os.fspath(path)
  base_dir = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
  for line, obj in _iter_json_objects(path, skips):
    try:
      yield _llava_record(obj, source=path, line=line, base_dir=base_dir, check_files=check_files,
                          require_assistant=require_assistant, default_task=default_task, skips=skips)
    except DataError as e:
      skips.skip(e)


# ------------------------------------------------------------------------------------------------ GeoChat

_GEO_BOX = r"\{<(-?\d+(?:\.\d+)?)><(-?\d+(?:\.\d+)?)><(-?\d+(?:\.\d+)?)><(-?\d+(?:\.\d+)?)>(?:\|<(-?\d+(?:\.\d+)?)>)?\}"
_GEO_BOX_RE = re.compile(_GEO_BOX)
_GEO_GROUP_RE = re.compile(rf"(?:<p>(?P<label>.*?)</p>\s*)?(?P<group>{_GEO_BOX}(?:\s*<delim>\s*{_GEO_BOX})*)")
_GEO_PHRASE_RE = re.compile(r"<p>(.*?)</p>")
_GEO_TAG_RE = re.compile(r"\[(refer|grounding|identify|vqa|caption)\]\s*", re.IGNORECASE)
GEOCHAT_TAG_TASKS = {"refer": "ground", "grounding": "ground_multi", "identify": "identify", "vqa": "vqa",
                     "caption": "caption"}
GEOCHAT_GRID = 100.0


def convert_geochat_text(text: str, width: int, height: int, *, default_label: str = "",
                         notes: SkipCounter | None = None, source: str = "", line: int | None = None,
                         field: str = "messages") -> tuple[str, list[tuple[str, tuple]]]:
  """GeoChat box syntax (0-100) -> Qwen box text (0-1000); returns (text, [(label, pixel box)])."""
  found: list[tuple[str, tuple]] = []

  def group(m: re.Match) -> str:
    label = m.group("label")
    pieces = []
    for i, b in enumerate(_GEO_BOX_RE.finditer(m.group("group"))):
      x1, y1, x2, y2 = (float(v) * s / GEOCHAT_GRID for v, s in zip(b.groups()[:4], (width, height) * 2))
      if b.group(5) is not None and float(b.group(5)) != 0 and notes is not None:
        notes.note("dropped_box_angle")
      box = check_box((x1, y1, x2, y2), width, height, source=source, line=line, field=field)
      found.append((label if label is not None else default_label, box))
      pieces.append(_box_to_text(box, width, height, label=label if i == 0 else None))
    return "".join(pieces)

  text = _GEO_GROUP_RE.sub(group, text)
  text = _GEO_PHRASE_RE.sub(lambda m: f"<|object_ref_start|>{m.group(1)}<|object_ref_end|>", text)
  return text, found


def _geochat_hook(source: str, line: int, skips: SkipCounter):
  def hook(messages, task, image, obj, extra):
    tag = None
    for m in messages:
      if m["role"] == "user":
        t = _GEO_TAG_RE.search(m["content"])
        if t:
          tag = tag or t.group(1).lower()
          m["content"] = _GEO_TAG_RE.sub("", m["content"])
    if tag and "task" not in obj:
      task = GEOCHAT_TAG_TASKS[tag]
      extra["geochat_tag"] = tag
    needs_size = any(_GEO_BOX_RE.search(m["content"]) for m in messages)
    size = _size_of(image, obj, source, line) if needs_size or obj.get("boxes") else None
    phrase = next((p for m in messages if m["role"] == "user" for p in _GEO_PHRASE_RE.findall(m["content"])), "")
    boxes = []
    for i, m in enumerate(messages):
      if size is not None:
        m["content"], found = convert_geochat_text(m["content"], *size, default_label=phrase, notes=skips,
                                                   source=source, line=line, field=f"conversations[{i}]")
        boxes += found
      else:
        m["content"] = _GEO_PHRASE_RE.sub(lambda p: f"<|object_ref_start|>{p.group(1)}<|object_ref_end|>",
                                          m["content"])
      m["content"] = m["content"].strip() if m["role"] == "assistant" else m["content"]
    return messages, task, tuple(boxes), size
  return hook


def _short_answer(messages, task: str) -> str | None:
  if task in ("caption", "ground_multi", "chat", "reason"):
    return None
  last = [m["content"] for m in messages if m["role"] == "assistant"]
  return last[-1].strip() if last else None


@register_reader("geochat")
def read_geochat(path: str, *, skips: SkipCounter, image_root: str | None = None, check_files: bool = True,
                 require_assistant: bool = True) -> Iterator[Record]:
  """GeoChat-Instruct style JSON/JSONL (also VRSBench's training file)."""
  path = os.fspath(path)
  base_dir = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
  for line, obj in _iter_json_objects(path, skips):
    try:
      record = _llava_record(obj, source=path, line=line, base_dir=base_dir, check_files=check_files,
                             require_assistant=require_assistant, default_task="chat",
                             text_hook=_geochat_hook(path, line, skips), skips=skips)
      if record.answer is None and "answer" not in obj:
        record = _replace(record, answer=_short_answer(record.messages, record.task))
      yield record
    except DataError as e:
      skips.skip(e)


def _replace(record: Record, **kw) -> Record:
  return dataclasses.replace(record, **kw)


# ----------------------------------------------------------------------------------------------- VRSBench

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
    question, found_q = convert_geochat_text(question, *size, notes=skips, source=source, line=line,
                                             field="question")
    truth, found = convert_geochat_text(truth, *size, default_label=label, notes=skips, source=source, line=line,
                                        field="ground_truth")
    boxes = found_q + found
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + question},
              {"role": "assistant", "content": truth}]
  extra = {k: obj[k] for k in ("question_id", "type", "unique", "obj_corner", "size_group") if k in obj}
  record = Record(id=str(obj.get("question_id", f"vrsbench:{line}")), image=image, messages=messages, task=task,
                  answer=None if task == "caption" else truth, boxes=tuple(boxes), source=source, line=line,
                  image_size=size, extra=extra)
  return validate_record(record)


# ---------------------------------------------------------------------------------------------- DIOR-RSVG

DIOR_RSVG_PROMPT = "Output the bounding box of the object described as: {description}"
SMALL_AREA, MEDIUM_AREA = 32 ** 2, 96 ** 2  # the evaluation's S/M/L split by ground-truth box area


def size_group(box) -> str:
  """The evaluation's bucket of a pixel box by area, thresholds inclusive: small <= 32², medium <= 96², large."""
  area = (box[2] - box[0]) * (box[3] - box[1])
  return "small" if area <= SMALL_AREA else "medium" if area <= MEDIUM_AREA else "large"


@register_reader("dior_rsvg")
def read_dior_rsvg(path: str, *, skips: SkipCounter, split: str = "test", image_dir: str | None = None,
                   annotation_dir: str | None = None, split_file: str | None = None,
                   check_files: bool = True) -> Iterator[Record]:
  """DIOR-RSVG: one record per (image, description, box) triplet listed in the split file."""
  root = os.fspath(path)
  annotation_dir = annotation_dir or os.path.join(root, "Annotations")
  image_dir = image_dir or os.path.join(root, "JPEGImages")
  split_file = split_file or os.path.join(root, f"{split}.txt")
  if not os.path.exists(split_file):
    raise DataError("split file does not exist", source=split_file, reason="missing_file")
  wanted = set()
  with open(split_file, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if line.strip():
        try:
          wanted.add(int(line.strip()))
        except ValueError:
          raise DataError(f"not an object index: {line.strip()!r}", source=split_file, line=line_no,
                          reason="bad_split_file") from None
  if not os.path.isdir(annotation_dir):
    raise DataError("annotation folder does not exist", source=annotation_dir, reason="missing_file")
  index = 0
  for xml_name in sorted(n for n in os.listdir(annotation_dir) if n.lower().endswith(".xml")):
    xml_path = os.path.join(annotation_dir, xml_name)
    try:
      root_el = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
      # Fatal in both modes: the split indices count objects, so one unreadable file shifts all after it.
      raise DataError(f"malformed XML ({e})", source=xml_path, line=e.position[0], reason="bad_xml") from None
    objects = root_el.findall("object")
    for obj_no, obj in enumerate(objects, start=1):
      this_index, index = index, index + 1
      if this_index not in wanted:
        continue
      try:
        yield _dior_record(root_el, obj, obj_no, this_index, xml_path, image_dir, check_files)
      except DataError as e:
        skips.skip(e)
  if index <= max(wanted, default=-1):
    raise DataError(f"split lists object index {max(wanted)} but the annotations hold {index} objects",
                    source=split_file, reason="bad_split_file")


def _dior_record(root_el, obj, obj_no: int, index: int, xml_path: str, image_dir: str,
                 check_files: bool) -> Record:
  where = dict(source=xml_path, line=obj_no)  # line = the object's 1-based position in its file
  filename = (root_el.findtext("filename") or "").strip()
  if not filename:
    raise DataError("no <filename>", field="filename", reason="missing_field", **where)
  image = _image_path(filename, image_dir, xml_path, obj_no, check_files)
  try:
    size = (int(float(root_el.findtext("size/width"))), int(float(root_el.findtext("size/height"))))
  except (TypeError, ValueError):
    size = _size_of(image, {}, xml_path, obj_no)
  name = (obj.findtext("name") or "").strip()
  description = " ".join((obj.findtext("description") or "").split())
  if not description:
    raise DataError("object has no <description>", field="object/description", reason="missing_field", **where)
  try:
    box = tuple(float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
  except (TypeError, ValueError):
    raise DataError("object <bndbox> lacks numeric xmin/ymin/xmax/ymax", field="object/bndbox",
                    reason="bad_box", **where) from None
  box = check_box(box, *size, field="object/bndbox", **where)
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + DIOR_RSVG_PROMPT.format(description=description)},
              {"role": "assistant", "content": _box_to_text(box, *size, label=description)}]
  return validate_record(Record(
      id=f"dior_rsvg:{index}", image=image, messages=messages, task="ground", answer=messages[1]["content"],
      boxes=((name, box),), source=xml_path, line=obj_no, image_size=size,
      extra={"object_index": index, "category": name, "description": description, "size_group": size_group(box)}))


# -------------------------------------------------------------------------------------------------- RSVQA

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
      extra={"question_type": qtype, "question_id": q["id"], "img_id": q["img_id"]}))


# ------------------------------------------------------------------------------ shared by the benchmark readers

OPTION_LETTERS = "ABCDEFGHIJKLMNOP"
MC_INSTRUCTION = "Answer with the letter of the correct option."
# LHRS-Bench's 11 question types by id (the names its `qtype` keys carry, "1 identity" ... "11 reasoning").
LHRS_TYPE_NAMES = {"1": "identity", "2": "color", "3": "orientation", "4": "shape", "5": "quantity", "6": "area",
                   "7": "distance", "8": "resolution", "9": "modality", "10": "location", "11": "reasoning"}
_OPTION_PREFIX_RE = re.compile(r"^\s*\(?([A-Pa-p])\s*[.):]\s*")
_LONE_LETTER_RE = re.compile(r"\(?([A-Pa-p])\)?[.):]?")
_LETTER_THEN_TEXT_RE = re.compile(r"\(?([A-Pa-p])\s*[.):]\s+\S")


def _existing_dir(base: str, names: Sequence[str]) -> str | None:
  return next((os.path.join(base, n) for n in names if os.path.isdir(os.path.join(base, n))), None)


def _image_any_extension(path: str, skips: SkipCounter | None) -> str:
  """`path`, or the file with the same stem and another image extension when only that one exists (GeoChat's
  aid.jsonl names .png files that AID ships as .jpg; LHRS-Bench ships PNG and JPEG copies)."""
  if os.path.exists(path):
    return path
  stem = os.path.splitext(path)[0]
  for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
    if os.path.exists(stem + ext):
      if skips is not None:
        skips.note("image_extension_substituted")
      return stem + ext
  return path


def _image_in(dirs: Sequence[str], relative: str, source: str, line: int, check_files: bool,
              skips: SkipCounter | None, field: str = "image") -> str:
  """The first of `dirs` holding `relative` (any image extension); a missing image names the first candidate."""
  if not isinstance(relative, str) or not relative.strip():
    raise DataError(f"{field} is {relative!r}, expected a file name", source=source, line=line, field=field,
                    reason="missing_field")
  relative = relative.strip()
  if os.path.isabs(relative):
    dirs = [""]
  candidates = [os.path.normpath(os.path.join(d, relative)) for d in dirs]
  if not check_files:
    return candidates[0]
  found = next((c for c in candidates if os.path.exists(c)), None)  # the exact name first, in any folder
  if found is not None:
    return found
  for candidate in candidates:
    found = _image_any_extension(candidate, skips)
    if os.path.exists(found):
      return found
  raise DataError(f"image file {candidates[0]} does not exist", source=source, line=line, field=field,
                  reason="missing_image")


def _norm_text(text: str) -> str:
  return " ".join(re.sub(r"[^\w\s]", " ", str(text).lower()).split())


def parse_choices(value: Any) -> tuple[list[str], str]:
  """Options as stored -> (option texts without their letters, the options as the prompt shows them).

  A string ("A. airport B. harbor C. ...", which LHRS-Bench's official script appends to the question verbatim) is
  split at the letters in order and shown as written; a list is lettered "A. x B. y ..."; a dict maps letters to
  texts."""
  if isinstance(value, dict):
    keys = sorted(value, key=lambda k: str(k).strip().upper())
    texts = [str(value[k]).strip() for k in keys]
    if [str(k).strip().upper().rstrip(".") for k in keys] != list(OPTION_LETTERS[:len(keys)]):
      raise ValueError(f"option keys {keys} are not A, B, C, ...")
  elif isinstance(value, (list, tuple)):
    texts = []
    for i, item in enumerate(value):
      text = str(item).strip()
      m = _OPTION_PREFIX_RE.match(text)
      if i < len(OPTION_LETTERS) and m and m.group(1).upper() == OPTION_LETTERS[i]:
        text = text[m.end():].strip()
      texts.append(text)
  elif isinstance(value, str):
    spans, pos = [], 0
    for letter in OPTION_LETTERS:
      m = re.compile(rf"(?:^|(?<=[\s,;]))\(?{letter}\s*[.):]").search(value, pos)
      if not m:
        break
      spans.append((m.start(), m.end()))
      pos = m.end()
    texts = [value[end:(spans[k + 1][0] if k + 1 < len(spans) else len(value))].strip().rstrip(",;").strip()
             for k, (_, end) in enumerate(spans)]
    shown = value.strip()
  else:
    raise ValueError(f"options are {type(value).__name__}, expected a string, list or dict")
  if not 2 <= len(texts) <= len(OPTION_LETTERS) or not all(texts):
    raise ValueError(f"cannot read 2-{len(OPTION_LETTERS)} lettered, non-empty options from {value!r}")
  if not isinstance(value, str):
    shown = " ".join(f"{OPTION_LETTERS[i]}. {t}" for i, t in enumerate(texts))
  return texts, shown


def answer_letter(answer: Any, choices: Sequence[str]) -> str:
  """The option letter of a stored answer: a letter ("B", "b", "(B)", "B."), a lettered option ("B. forest"), or
  exactly one option's text. Raises ValueError otherwise."""
  if not isinstance(answer, str) or not answer.strip():
    raise ValueError(f"answer {answer!r} is not a letter or an option text")
  text = answer.strip()
  m = _LONE_LETTER_RE.fullmatch(text) or _LETTER_THEN_TEXT_RE.match(text)
  if m:
    letter = m.group(1).upper()
  else:
    hits = [i for i, c in enumerate(choices) if _norm_text(c) == _norm_text(text)]
    if len(hits) != 1:
      raise ValueError(f"answer {answer!r} is neither an option letter nor exactly one option's text")
    letter = OPTION_LETTERS[hits[0]]
  if OPTION_LETTERS.index(letter) >= len(choices):
    raise ValueError(f"answer {letter} but only {len(choices)} options")
  return letter


def mc_prompt(question: str, shown_choices: str) -> str:
  """The question, its options on a "Choices:" line (LHRS-Bench's layout), and the instruction."""
  return f"{IMAGE_PLACEHOLDER}{question.strip()}\nChoices: {shown_choices} {MC_INSTRUCTION}"


# --------------------------------------------------------------------------------------------- LHRS-Bench

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


# ----------------------------------------------------------------------------------------- GeoChat-Bench

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


def _strip_placeholder(text: str) -> str:
  return normalize_placeholder(text).replace(IMAGE_PLACEHOLDER, "").strip()


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


# ------------------------------------------------------------------------ the original work's evaluation JSON

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


# ------------------------------------------------------------------------------------- class-named folders

@register_reader("image_folder")
def read_image_folder(path: str, *, skips: SkipCounter, class_names: dict[str, str] | None = None,
                      extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Iterator[Record]:
  """root/ClassName/image files -> classification records (classes and files in sorted order)."""
  root = os.fspath(path)
  if not os.path.isdir(root):
    raise DataError("image folder does not exist", source=root, reason="missing_file")
  folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not folders:
    raise DataError("no class folders", source=root, reason="missing_file")
  shown = {d: (class_names or {}).get(d, humanize_class_name(d)) for d in folders}
  prompt = classification_prompt([shown[d] for d in folders])
  for folder in folders:
    files = sorted(f for f in os.listdir(os.path.join(root, folder)) if f.lower().endswith(tuple(extensions)))
    for number, name in enumerate(files, start=1):
      image = os.path.join(root, folder, name)
      yield Record(id=f"{folder}/{name}", image=image, task="classify", answer=shown[folder], source=image,
                   line=number, messages=[{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": shown[folder]}],
                   extra={"class_folder": folder})


# ---------------------------------------------------------------------------------- TensorFlow Datasets

_TFDS_SOURCES: dict[tuple, Any] = {}  # (name, split, data_dir, image_key) -> data source, per process


def _open_tfds_source(name: str, split: str, data_dir: str | None, image_key: str):
  """A random-access source whose image field stays encoded bytes (read, not decoded) where TFDS allows it;
  otherwise (e.g. TFDS mock data without TensorFlow) the default source, whose image field is an array."""
  import tensorflow_datasets as tfds  # lazy: optional dependency
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir,
                              decoders={image_key: tfds.decode.SkipDecoding()})
    if len(source):
      source[0]  # probe: skipping the decoder can fail only when an example is read
    return source
  except Exception:  # the plain source below raises the real problem, if there is one
    return tfds.data_source(name, split=split, data_dir=data_dir)


def _tfds_source(name: str, split: str, data_dir: str | None, image_key: str, *, fresh: bool = False):
  key = (name, split, data_dir, image_key)
  if fresh or key not in _TFDS_SOURCES:
    _TFDS_SOURCES[key] = _open_tfds_source(name, split, data_dir, image_key)
  return _TFDS_SOURCES[key]


@dataclasses.dataclass(frozen=True)
class TfdsImage(images_lib.LazyImage):
  """One example's image of a prepared TFDS split, read and decoded only when the pipeline loads it.

  Pickles as its five fields; a worker process opens the split's data source on first use (once per process).
  `height`/`width` are the dataset's declared image size when it is fixed (no read needed for planning)."""
  dataset: str
  split: str
  index: int
  image_key: str = "image"
  data_dir: str | None = None
  height: int | None = None
  width: int | None = None

  def read(self):
    value = _tfds_source(self.dataset, self.split, self.data_dir, self.image_key)[self.index][self.image_key]
    return value if isinstance(value, (bytes, np.ndarray)) else np.asarray(value)

  def size(self) -> tuple[int, int]:
    if self.height and self.width:
      return self.width, self.height
    return super().size()

  def describe(self) -> str:
    return f"tfds:{self.dataset}[{self.split}]#{self.index}"


@register_reader("tfds")
def read_tfds(path: str, *, skips: SkipCounter, split: str = "train", data_dir: str | None = None,
              class_names: dict[str, str] | None = None, image_key: str = "image",
              label_key: str = "label") -> Iterator[Record]:
  """A prepared TFDS classification set by name (`path`, e.g. "eurosat/rgb") via `tfds.data_source`.

  Lazy: listing the records reads each example's label only (the image field stays encoded bytes where TFDS can
  skip its decoder); Record.image is a `TfdsImage`, decoded when the pipeline loads it (`images.load_image`)."""
  import tensorflow_datasets as tfds  # lazy: optional dependency
  name = os.fspath(path)
  builder = tfds.builder(name, data_dir=data_dir)
  label_feature = builder.info.features[label_key]
  raw = list(label_feature.names)
  shown = [(class_names or {}).get(n, humanize_class_name(n)) for n in raw]
  prompt = classification_prompt(shown)
  shape = tuple(getattr(builder.info.features[image_key], "shape", ()) or ())
  fixed = (int(shape[0]), int(shape[1])) if len(shape) >= 2 and shape[0] and shape[1] else None
  source = _tfds_source(name, split, data_dir, image_key, fresh=True)  # this listing and its images: one source
  where = f"tfds:{name}[{split}]"
  for i in range(len(source)):
    try:
      try:
        label = int(source[i][label_key])
      except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"no integer label ({type(e).__name__}: {e})", source=where, line=i + 1, field=label_key,
                        reason="bad_label") from None
      if not 0 <= label < len(shown):
        raise DataError(f"label {label} outside the {len(shown)} classes", source=where, line=i + 1,
                        field=label_key, reason="bad_label")
    except DataError as e:
      skips.skip(e)
      continue
    image = TfdsImage(dataset=name, split=split, index=i, image_key=image_key, data_dir=data_dir,
                      height=fixed[0] if fixed else None, width=fixed[1] if fixed else None)
    yield Record(id=f"{name}/{split}/{i}", image=image, task="classify", answer=shown[label], source=where,
                 line=i + 1, image_size=(fixed[1], fixed[0]) if fixed else None,
                 messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": shown[label]}],
                 extra={"label": label, "class_name": raw[label]})


# ------------------------------------------------------------------------------------------------- CLI

def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  skips = SkipCounter(strict=f.strict, name=f.path)
  options = json.loads(f.options)
  n, tasks = 0, {}
  for record in read_records(f.format, f.path, skips=skips, verify_images=f.verify_images, **options):
    n += 1
    tasks[record.task] = tasks.get(record.task, 0) + 1
  print(json.dumps({"records": n, "tasks": tasks, "skipped": dict(skips.skipped), "notes": dict(skips.notes)},
                   indent=1))


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("format", "llava", f"one of {reader_names()}")
  flags.DEFINE_string("path", None, "file, folder or TFDS name", required=True)
  flags.DEFINE_bool("strict", False, "raise on the first bad record instead of counting skips")
  flags.DEFINE_bool("verify_images", False, "decode every image")
  flags.DEFINE_string("options", "{}", "reader options as JSON, e.g. '{\"split\": \"test\"}'")
  app.run(main)
