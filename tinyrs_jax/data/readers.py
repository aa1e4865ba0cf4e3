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
                through `tfds.data_source`; images are in-memory arrays.

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

from tinyrs_jax.data import images as images_lib
from tinyrs_jax.data.records import (IMAGE_PLACEHOLDER, TASKS, DataError, Record, SkipCounter, check_box,
                                     validate_record)

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
  area = (box[2] - box[0]) * (box[3] - box[1])
  return "small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"


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

@register_reader("tfds")
def read_tfds(path: str, *, skips: SkipCounter, split: str = "train", data_dir: str | None = None,
              class_names: dict[str, str] | None = None, image_key: str = "image",
              label_key: str = "label") -> Iterator[Record]:
  """A prepared TFDS classification set by name (`path`, e.g. "eurosat/rgb") via `tfds.data_source`."""
  import tensorflow_datasets as tfds  # lazy: optional dependency
  name = os.fspath(path)
  builder = tfds.builder(name, data_dir=data_dir)
  label_feature = builder.info.features[label_key]
  raw = list(label_feature.names)
  shown = [(class_names or {}).get(n, humanize_class_name(n)) for n in raw]
  prompt = classification_prompt(shown)
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  where = f"tfds:{name}[{split}]"
  for i in range(len(source)):
    try:
      example = source[i]
      label = int(example[label_key])
      if not 0 <= label < len(shown):
        raise DataError(f"label {label} outside the {len(shown)} classes", source=where, line=i + 1,
                        field=label_key, reason="bad_label")
      image = images_lib.load_image(example[image_key], name=f"{where}#{i}")
    except DataError as e:
      skips.skip(e)
      continue
    yield Record(id=f"{name}/{split}/{i}", image=image, task="classify", answer=shown[label], source=where,
                 line=i + 1, image_size=(image.shape[1], image.shape[0]),
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
