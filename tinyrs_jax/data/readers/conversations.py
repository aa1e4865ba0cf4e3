"""Conversation formats: `llava` (LLaVA-style JSON list or JSONL; our synthetic data) and `geochat`
(GeoChat-Instruct, VRSBench training: llava records whose text carries GeoChat boxes, phrases and task tags).
`convert_geochat_text` (GeoChat box syntax -> Qwen2-VL box text) also serves the benchmark readers."""
from __future__ import annotations

import os
import re
from typing import Any, Iterator

from tinyrs_jax.data.readers._common import (_box_to_text, _image_path, _iter_json_objects, _messages_from,
                                             _pixel_boxes, _replace, _size_of, register_reader)
from tinyrs_jax.data.records import IMAGE_PLACEHOLDER, TASKS, DataError, Record, SkipCounter, check_box, validate_record


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
