"""What the readers share: the registry they add themselves to (`register_reader`), and the helpers every format
uses — JSON/JSONL loading, LLaVA-style turns, image paths and sizes, pixel boxes, the `<image>` placeholder,
class names. The conventions these helpers carry out are in the package docstring (`tinyrs_jax.data.readers`)."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Iterator, Sequence

from tinyrs_jax.data import images as images_lib
from tinyrs_jax.data.records import IMAGE_PLACEHOLDER, DataError, Record, SkipCounter, check_box


READERS: dict[str, Callable[..., Iterator[Record]]] = {}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def register_reader(name: str):
  def wrap(fn):
    READERS[name] = fn
    return fn
  return wrap


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


def _replace(record: Record, **kw) -> Record:
  return dataclasses.replace(record, **kw)


def _strip_placeholder(text: str) -> str:
  return normalize_placeholder(text).replace(IMAGE_PLACEHOLDER, "").strip()


# ------------------------------------------------------------------------- finding an image among folders

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
