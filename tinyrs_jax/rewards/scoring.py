"""Answer extraction and scoring, shared by the GRPO rewards and the evaluation suite.

Everything here reads model text with `str` methods and bounded regexes; nothing from a completion is ever
evaluated, and no function raises on any string (configuration mistakes such as a bad tag name do raise).

Answer span (`answer_span`): the content of the last complete `<answer>…</answer>` pair if there is one, else
the text after the last `</think>` or `</reasoning>`, else the whole text. A bare correct answer therefore still
scores on accuracy (the `format` reward is what asks for the tags), and reasoning text is never graded when the
model closed its think block. An opened but unclosed `<answer>` (a truncated completion) is not a span.

Normalisation (`normalize_answer`): lower-case, collapse whitespace, strip surrounding quotes / backticks /
asterisks and trailing `. , ; : ! ?`, repeatedly ('"Airport."' -> 'airport').

Parsers (each returns None when the text does not commit to exactly one value, so hedging never scores):
  parse_yes_no  the first word is yes/no and the opposite word does not appear ("Yes, there is one." -> yes).
  parse_int     one integer value: digits (1,000 and 3.0 accepted) or a number word zero..twenty / "none";
                "3 ships" -> 3, "2 or 3" -> None, "2.5" -> None.
  parse_box     the first box in text order of Qwen2-VL's `(x1,y1),(x2,y2)` (with or without <|box_start|>
                tokens; always the 0-1000 grid, that is what the grammar means), else the first `[x1,y1,x2,y2]`
                list, read in `box_format`: "qwen1000" (default, v * size / 1000), "pixels", or "norm1"
                (v * size). Coordinates are read as written (decimals kept). Returned in pixels, unclipped;
                non-finite, inverted or empty boxes are None.
  parse_choice  the option letter an answer commits to ("B", "(B)", "B. forest", "Answer: B", a lone "b", or
                exactly one option's text: "forest"); the one parser of multiple choice, for the `accuracy`
                reward and the evaluation suite's strict rule alike.

`score_accuracy(completion, example)` dispatches on the example's task (see its docstring); `score_iou` gives
the grounding IoU or None when the completion has no parseable box (evaluation counts those separately).
An example is the pipeline's per-row metadata dict (task, answer, boxes [{label, box}] in pixels, width,
height, ...); every key is optional.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from tinyrs_jax.data import boxes as boxes_lib

ANSWER_TAG = "answer"
THINK_TAGS = ("think", "reasoning")
BOX_FORMATS = ("qwen1000", "pixels", "norm1")
YES_NO_TASKS = ("vqa_presence", "vqa_compare")
GROUND_TASK = "ground"

_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def check_tag(tag: str) -> str:
  """A tag name usable as `<tag>…</tag>`; raises ValueError on anything else (a config error)."""
  if not isinstance(tag, str) or not _TAG_NAME.fullmatch(tag):
    raise ValueError(f"tag name must match {_TAG_NAME.pattern}, got {tag!r}")
  return tag


def as_text(value: Any) -> str:
  """Completions are strings; anything else (None, bytes from a broken decoder) reads as empty."""
  return value if isinstance(value, str) else ""


def extract_tagged(text: str, tag: str) -> str | None:
  """Content of the last complete `<tag>…</tag>` pair in `text` (innermost if nested), or None.

  Found with rfind, not a regex, so it stays linear on texts full of unmatched tags.
  """
  check_tag(tag)
  text = as_text(text)
  close = text.rfind(f"</{tag}>")
  if close < 0:
    return None
  opening = f"<{tag}>"
  start = text.rfind(opening, 0, close)
  if start < 0:
    return None
  return text[start + len(opening):close]


def answer_span(text: str, answer_tag: str = ANSWER_TAG, think_tags: Sequence[str] = THINK_TAGS) -> str:
  """The part of a completion that is graded (rule in the module docstring)."""
  text = as_text(text)
  span = extract_tagged(text, answer_tag)
  if span is not None:
    return span
  closes = [f"</{check_tag(t)}>" for t in think_tags]
  after = max((text.rfind(c) + len(c) for c in closes if c in text), default=0)
  return text[after:]


_SURROUND = "\"'`*“”‘’«»"
_TRAILING = ".,;:!?。"


def normalize_answer(text: Any) -> str:
  """Lower-case, collapse whitespace, strip surrounding quotes and trailing punctuation (until stable)."""
  s = " ".join(as_text(text).lower().split())
  while True:
    stripped = s.strip(_SURROUND).rstrip(_TRAILING).strip()
    if stripped == s:
      return s
    s = stripped


_WORD = re.compile(r"[^\W\d_]+")


def parse_yes_no(text: Any) -> str | None:
  """'yes' / 'no' when the answer starts with that word and never says the opposite word; else None."""
  words = _WORD.findall(normalize_answer(text))
  if not words or words[0] not in ("yes", "no"):
    return None
  opposite = "no" if words[0] == "yes" else "yes"
  return None if opposite in words else words[0]


NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
NUMBER_WORDS["none"] = 0
_NUMBER_TOKEN = re.compile(r"(\d+(?:[.,]\d+)*)|([^\W\d_]+)")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+")
_WHOLE_FLOAT = re.compile(r"(\d+)\.0+")
_MAX_DIGITS = 15  # int() stays cheap (Python refuses > 4300 digits) and counts stay plausible


def _digits_int(token: str) -> int | None:
  """A digit token as an int, or None when it is not a plain integer ("2.5", "1,5", non-ASCII digits)."""
  if _THOUSANDS.fullmatch(token):
    token = token.replace(",", "")
  elif m := _WHOLE_FLOAT.fullmatch(token):
    token = m.group(1)
  token = token.lstrip("0") or "0"
  if not (token.isascii() and token.isdigit()) or len(token) > _MAX_DIGITS:
    return None
  return int(token)


def parse_int(text: Any) -> int | None:
  """The one integer an answer states ("3", "three", "3 ships", "There are 1,000."), else None."""
  values = set()
  for digits, word in _NUMBER_TOKEN.findall(normalize_answer(text)):
    if digits:
      v = _digits_int(digits)
      if v is None:
        return None  # a number, but not an integer count: the answer does not state one
      values.add(v)
    elif word in NUMBER_WORDS:
      values.add(NUMBER_WORDS[word])
  return values.pop() if len(values) == 1 else None


def strict_int(text: Any) -> int | None:
  """An integer only when the whole normalised text is one (for reference answers, e.g. not '0 to 10')."""
  s = normalize_answer(text)
  return parse_int(s) if (s.isascii() and s.isdigit()) or s in NUMBER_WORDS else None


_CHOICE_PREFIX = re.compile(r"^(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*", re.I)
_CHOICE = re.compile(r"^[\(\[]?([A-Z])[\)\]]?(?=$|[\s.,:;)\]])")


def parse_choice(text: Any, choices: Sequence[str] = ()) -> str | None:
  """The option letter an answer commits to: a leading capital letter ("B", "(B)", "B. forest", "Answer: B"),
  or a lone letter in any case ("b"), else the letter of the one option whose text equals the answer; None
  otherwise (also for a letter beyond the options, when they are known). "a forest" is not option A."""
  span = _CHOICE_PREFIX.sub("", as_text(text).strip(), count=1)
  m = _CHOICE.match(span)
  letter = m.group(1) if m else None
  norm = normalize_answer(span)
  if letter is None and len(norm) == 1 and norm.isalpha() and norm.isascii():
    letter = norm.upper()
  if letter is not None:
    return letter if not choices or ord(letter) - ord("A") < len(choices) else None
  hits = [i for i, c in enumerate(choices) if norm and normalize_answer(c) == norm]
  return chr(ord("A") + hits[0]) if len(hits) == 1 else None


def choices_of(example: Any) -> Sequence[str]:
  """A multiple-choice example's option texts (example["extra"]["choices"]), or ()."""
  extra = _get(example, "extra") or {}
  choices = extra.get("choices") if isinstance(extra, Mapping) else None
  return choices if isinstance(choices, (list, tuple)) else ()


_NUM = r"\s*(-?(?:\d{1,7}(?:\.\d{0,7})?|\.\d{1,7}))\s*"
_LIST_BOX = re.compile(r"\[" + _NUM + "," + _NUM + "," + _NUM + "," + _NUM + r"\]")


def positive_size(v: Any) -> float | None:
  try:
    f = float(v)
  except (TypeError, ValueError, OverflowError):
    return None
  return f if math.isfinite(f) and f > 0 else None


def valid_box(box: Any) -> tuple[float, float, float, float] | None:
  """Four finite floats with x1 < x2 and y1 < y2, else None."""
  try:
    x1, y1, x2, y2 = (float(v) for v in box)
  except (TypeError, ValueError, OverflowError):
    return None
  if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
    return None
  return x1, y1, x2, y2


def to_pixels(box: Sequence[float], width: Any, height: Any, box_format: str = "qwen1000"):
  """A box written in `box_format` -> pixels (None when the size it needs is missing or the box invalid)."""
  if box_format not in BOX_FORMATS:
    raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
  if box_format == "pixels":
    return valid_box(box)
  w, h = positive_size(width), positive_size(height)
  if w is None or h is None:
    return None
  scale = 1000.0 if box_format == "qwen1000" else 1.0
  x1, y1, x2, y2 = box
  # multiplied first: v / 1000 * size turns an exact 436 px into 436.00000000000006 (data/boxes.py)
  return valid_box((x1 * w / scale, y1 * h / scale, x2 * w / scale, y2 * h / scale))


def parse_box(text: Any, width: Any, height: Any, box_format: str = "qwen1000"):
  """The first box in `text`, in pixels of a width x height image, or None (rules in the module docstring)."""
  text = as_text(text)
  found = boxes_lib.first_box(text)
  if found is not None:
    return to_pixels(found[1], width, height, "qwen1000")
  m = _LIST_BOX.search(text)
  if m is None:
    return None
  return to_pixels([float(g) for g in m.groups()], width, height, box_format)


def box_iou(a: Any, b: Any) -> float:
  """IoU of two pixel boxes (no +1 convention) in [0, 1]; 0 when either is invalid."""
  a, b = valid_box(a), valid_box(b)
  if a is None or b is None:
    return 0.0
  v = boxes_lib.iou(a, b)
  return min(max(v, 0.0), 1.0) if math.isfinite(v) else 0.0


def _get(example: Any, key: str, default: Any = None) -> Any:
  return example.get(key, default) if isinstance(example, Mapping) else default


def true_box(example: Any, box_format: str = "qwen1000"):
  """The reference box in pixels: example["boxes"][0]["box"], else the box in example["answer"]; or None."""
  boxes = _get(example, "boxes")
  if isinstance(boxes, (list, tuple)) and boxes:
    first = boxes[0]
    box = first.get("box") if isinstance(first, Mapping) else (
        first[1] if isinstance(first, (list, tuple)) and len(first) == 2 else None)  # a Record's (label, box)
    box = valid_box(box) if box is not None else None
    if box is not None:
      return box
  return parse_box(reference_answer(example), _get(example, "width"), _get(example, "height"), box_format)


def reference_answer(example: Any) -> str | None:
  """example["answer"] as text (an int count becomes its digits); None when absent or blank."""
  ref = _get(example, "answer")
  if isinstance(ref, int) and not isinstance(ref, bool):
    ref = str(ref)
  return ref if isinstance(ref, str) and ref.strip() else None


def score_iou(completion: Any, example: Any, *, answer_tag: str = ANSWER_TAG,
              think_tags: Sequence[str] = THINK_TAGS, box_format: str = "qwen1000") -> float | None:
  """IoU of the completion's first box with the reference box; None when the completion has no valid box.

  No reference box also gives 0.0 (a data problem must not read as a model failure to parse).
  """
  truth = true_box(example, box_format)
  pred = parse_box(answer_span(completion, answer_tag, think_tags), _get(example, "width"),
                   _get(example, "height"), box_format)
  if pred is None:
    return None
  return box_iou(pred, truth) if truth is not None else 0.0


def score_accuracy(completion: Any, example: Any, *, answer_tag: str = ANSWER_TAG,
                   think_tags: Sequence[str] = THINK_TAGS, box_format: str = "qwen1000") -> float:
  """Correctness of one completion against its example, in [0, 1]. By task:

  ground        continuous IoU of the first predicted box with the reference box (0 if unparseable).
  yes/no        vqa_presence, vqa_compare, or any reference that is yes/no: parse_yes_no equality.
  vqa_count     parse_int equality when the reference is an integer, else normalised exact match (RSVQA ranges).
  mc            parse_choice (with the example's options) equals the reference letter (as the evaluation).
  anything else with a reference answer (classify, vqa_rural_urban, vqa_area, vqa, ...): normalised exact match.
  no reference  (caption): 0.0.
  """
  task = _get(example, "task")
  if task == GROUND_TASK:
    return score_iou(completion, example, answer_tag=answer_tag, think_tags=think_tags,
                     box_format=box_format) or 0.0
  ref = reference_answer(example)
  if ref is None:
    return 0.0
  span = answer_span(completion, answer_tag, think_tags)
  ref_norm = normalize_answer(ref)
  ref_yes_no = parse_yes_no(ref) if task in YES_NO_TASKS else (ref_norm if ref_norm in ("yes", "no") else None)
  if ref_yes_no is not None:
    return float(parse_yes_no(span) == ref_yes_no)
  if task == "mc":
    return float(parse_choice(span, choices_of(example)) == ref.strip().upper())
  if task == "vqa_count":
    ref_int = strict_int(ref)
    if ref_int is not None:
      return float(parse_int(span) == ref_int)
  return float(normalize_answer(span) == ref_norm)


def is_verifiable(example: Any) -> bool:
  """Whether `score_accuracy` can grade the example: a reference box for grounding, a reference answer else."""
  if _get(example, "task") == GROUND_TASK:
    boxes = _get(example, "boxes")
    return bool(boxes) or reference_answer(example) is not None
  return reference_answer(example) is not None
