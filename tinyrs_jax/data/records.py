"""The one internal record form every reader produces, and how bad input is reported.

A `Record` is one training or evaluation example: an image (a path, an in-memory array, or none), a chat in
our message form, the task it exercises, its canonical short answer and its boxes (pixels of that image).
Readers convert every source format into it; the processor and the pipelines only ever see records.

Messages are `{"role": "system" | "user" | "assistant", "content": str}`. The image is marked by the literal
`IMAGE_PLACEHOLDER` ("<image>") inside user text, as in LLaVA; the chat template turns it into
`<|vision_start|><|image_pad|>…<|vision_end|>`. A record with an image has exactly one placeholder.

Bad input: readers raise `DataError` (a ValueError naming file, line and field). Callers pass a `SkipCounter`:
in strict mode it re-raises; in lenient mode (the training default) it counts the skipped record by reason,
logs the first few of each reason in full and the totals on `log_counts()`, so a long run goes on.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterable, Iterator

import numpy as np
from absl import logging

IMAGE_PLACEHOLDER = "<image>"
ROLES = ("system", "user", "assistant")

# The documented task vocabulary. Readers must use one of these names; eval and rewards key on them.
TASKS = {
    "caption": "describe the image in one paragraph (open answer, no canonical short answer)",
    "classify": "name the scene class; the prompt lists the classes; answer is the class name",
    "vqa": "open visual question answering (type unknown or not one below)",
    "vqa_presence": "is there an X? answer yes/no",
    "vqa_count": "how many X? answer is an integer (or an RSVQA range string)",
    "vqa_compare": "comparison between objects or counts (RSVQA 'comp'); answer yes/no",
    "vqa_rural_urban": "is this a rural or an urban area? answer rural/urban",
    "vqa_area": "area covered by X (RSVQA 'area'); answer is a range string such as '0m2'",
    "mc": "multiple choice; the prompt lists lettered options; answer is the option letter",
    "ground": "referring expression -> one box; answer is the Qwen box text",
    "ground_multi": "phrase -> several boxes or a grounded description (GeoChat [grounding])",
    "identify": "box -> what is there (GeoChat [identify]); answer is text",
    "reason": "think-then-answer record whose underlying task is not known",
    "chat": "any other conversation (multi-turn, no known task)",
}


class DataError(ValueError):
  """Bad input, named by file, line (1-based line or record index) and field.

  `reason` is a short stable slug used to count skips (e.g. "missing_image", "bad_json").
  """

  def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
               field: str | None = None, reason: str = "bad_record"):
    self.source, self.line, self.field, self.reason, self.detail = source, line, field, reason, message
    where = source or "<unknown source>"
    if line is not None:
      where += f":{line}"
    if field:
      where += f" [field {field}]"
    super().__init__(f"{where}: {message}")


@dataclasses.dataclass(frozen=True)
class Record:
  """One example. Boxes are (label, (x1, y1, x2, y2)) in pixels of the image, x to the right, y down."""
  id: str
  image: "str | np.ndarray | images.LazyImage | None"  # a path, pixels, or a lazy reference (TFDS)
  messages: list[dict[str, str]]
  task: str = "chat"
  answer: str | None = None
  boxes: tuple[tuple[str, tuple[float, float, float, float]], ...] = ()
  source: str = ""
  line: int | None = None
  image_size: tuple[int, int] | None = None  # (width, height) when the reader already knows it
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  def error(self, message: str, *, field: str | None = None, reason: str = "bad_record") -> DataError:
    return DataError(message, source=self.source, line=self.line, field=field, reason=reason)

  @property
  def prompt_messages(self) -> list[dict[str, str]]:
    """Messages up to (not including) the last assistant turn: the prompt of an RL or eval example."""
    last = max((i for i, m in enumerate(self.messages) if m["role"] == "assistant"), default=len(self.messages))
    return self.messages[:last]

  @property
  def has_assistant_turn(self) -> bool:
    return any(m["role"] == "assistant" for m in self.messages)


def validate_record(record: Record, *, require_assistant: bool = True) -> Record:
  """Checks the invariants every consumer relies on; raises DataError naming the field."""
  if record.task not in TASKS:
    raise record.error(f"unknown task {record.task!r}; known: {sorted(TASKS)}", field="task", reason="bad_task")
  if not record.messages:
    raise record.error("no messages", field="messages", reason="no_messages")
  for i, m in enumerate(record.messages):
    if m.get("role") not in ROLES:
      raise record.error(f"message {i} has role {m.get('role')!r}; expected one of {ROLES}",
                         field=f"messages[{i}].role", reason="bad_role")
    if not isinstance(m.get("content"), str):
      raise record.error(f"message {i} content is not a string", field=f"messages[{i}].content",
                         reason="bad_message")
  if not any(m["role"] == "user" for m in record.messages):
    raise record.error("no user turn", field="messages", reason="no_user_turn")
  if require_assistant and not record.has_assistant_turn:
    raise record.error("conversation has no assistant turn", field="messages", reason="no_assistant_turn")
  placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in record.messages)
  if placeholders and any(IMAGE_PLACEHOLDER in m["content"] for m in record.messages if m["role"] != "user"):
    raise record.error(f"{IMAGE_PLACEHOLDER} outside a user turn", field="messages", reason="bad_placeholder")
  expected = 0 if record.image is None else 1
  if placeholders != expected:
    raise record.error(f"{placeholders} {IMAGE_PLACEHOLDER} placeholders for {expected} image(s)",
                       field="messages", reason="bad_placeholder")
  if record.image_size is not None:
    for label, box in record.boxes:
      check_box(box, *record.image_size, source=record.source, line=record.line)
  return record


BOX_TOLERANCE_PX = 1.0  # annotation rounding: a box may overhang the image by this much and is clipped


def check_box(box, width: int, height: int, *, source: str | None = None, line: int | None = None,
              field: str = "boxes") -> tuple[float, float, float, float]:
  """A pixel box (x1, y1, x2, y2) inside a width x height image, clipped by at most BOX_TOLERANCE_PX."""
  try:
    x1, y1, x2, y2 = (float(v) for v in box)
  except (TypeError, ValueError):
    raise DataError(f"box {box!r} is not four numbers", source=source, line=line, field=field,
                    reason="bad_box") from None
  if not all(np.isfinite([x1, y1, x2, y2])) or x2 <= x1 or y2 <= y1:
    raise DataError(f"box {box!r} is empty or not (x1, y1, x2, y2) with x1 < x2, y1 < y2", source=source,
                    line=line, field=field, reason="bad_box")
  tol = BOX_TOLERANCE_PX
  if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
    raise DataError(f"box {box!r} lies outside the {width}x{height} image", source=source, line=line,
                    field=field, reason="box_outside_image")
  return (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))


class SkipCounter:
  """Strict: re-raise DataError. Lenient: count skips by reason (and lossy conversions as notes) and go on.

  Usage in a reader loop:
      try: record = parse(...)
      except DataError as e: skips.skip(e); continue
  """

  def __init__(self, strict: bool = False, *, name: str = "data", log_first: int = 3):
    self.strict, self.name, self.log_first = strict, name, log_first
    self.skipped: collections.Counter[str] = collections.Counter()
    self.notes: collections.Counter[str] = collections.Counter()

  def skip(self, error: DataError) -> None:
    if self.strict:
      raise error
    self.skipped[error.reason] += 1
    if self.skipped[error.reason] <= self.log_first:
      logging.warning("%s: skipping a record (%s): %s", self.name, error.reason, error)

  def note(self, reason: str, count: int = 1) -> None:
    """A lossy but accepted conversion (e.g. a dropped box angle): counted, never raised."""
    self.notes[reason] += count

  @property
  def total_skipped(self) -> int:
    return sum(self.skipped.values())

  def log_counts(self) -> None:
    if self.skipped:
      logging.warning("%s: skipped %d records: %s", self.name, self.total_skipped, dict(sorted(self.skipped.items())))
    if self.notes:
      logging.info("%s: lossy conversions: %s", self.name, dict(sorted(self.notes.items())))

  def __repr__(self) -> str:
    return f"SkipCounter(strict={self.strict}, skipped={dict(self.skipped)}, notes={dict(self.notes)})"


def strict() -> SkipCounter:
  return SkipCounter(strict=True)


def lenient(name: str = "data") -> SkipCounter:
  return SkipCounter(strict=False, name=name)


def guarded(records: Iterable[Record], skips: SkipCounter, check) -> Iterator[Record]:
  """Applies `check(record) -> record` to each record, skipping (or raising) on DataError."""
  for record in records:
    try:
      record = check(record)
    except DataError as e:
      skips.skip(e)
      continue
    yield record
