"""Multiple choice, shared by the benchmark readers: option letters, reading stored options and answers
(`parse_choices`, `answer_letter`) and the multiple-choice prompt (`mc_prompt`, LHRS-Bench's layout)."""
from __future__ import annotations

import re
from typing import Any, Sequence

from tinyrs_jax.data.records import IMAGE_PLACEHOLDER

OPTION_LETTERS = "ABCDEFGHIJKLMNOP"
MC_INSTRUCTION = "Answer with the letter of the correct option."
# LHRS-Bench's 11 question types by id (the names its `qtype` keys carry, "1 identity" ... "11 reasoning").
LHRS_TYPE_NAMES = {"1": "identity", "2": "color", "3": "orientation", "4": "shape", "5": "quantity", "6": "area",
                   "7": "distance", "8": "resolution", "9": "modality", "10": "location", "11": "reasoning"}
_OPTION_PREFIX_RE = re.compile(r"^\s*\(?([A-Pa-p])\s*[.):]\s*")
_LONE_LETTER_RE = re.compile(r"\(?([A-Pa-p])\)?[.):]?")
_LETTER_THEN_TEXT_RE = re.compile(r"\(?([A-Pa-p])\s*[.):]\s+\S")


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
