"""The two scoring rule sets, applied to one model output at a time. Both are always reported, side by side.

`strict` (ours; rewards/scoring.py, shared with the GRPO rewards):
  answer    the graded span: inside the last `<answer>…</answer>`, else after the last `</think>` / `</reasoning>`,
            else the whole output; normalised (lower case, collapsed spaces, surrounding quotes and trailing
            punctuation stripped).
  classify, open VQA, rural/urban, area: normalised exact match with the reference. An empty or missing answer
            is wrong.
  yes/no    the answer starts with yes or no and never says the other word.
  count     the one integer the answer states equals the reference.
  mc        the first option letter the answer commits to ("B", "(B)", "B. text", or exactly one option's text)
            equals the reference letter.
  ground    the first box of the answer (Qwen2-VL's `(x1,y1),(x2,y2)` on the 0-1000 grid, else the first
            `[x1,y1,x2,y2]` in `box_format`), in pixels, IoU without the +1 convention. An output without a
            parseable box is a miss and counts in every denominator.

`tinyrs` (the original work's evaluation, aybora/TinyRS rs_evaluation.py, a ScoreRS fork; quirks kept on
purpose, so the numbers compare with published tables):
  answer    the text after the think block (the original's `<reasoning>`; ours `<think>`; an unclosed block
            leaves the whole output), then inside `<answer>` (to its close, or to the end when it never closes).
  text      every space removed from prediction and reference, the prediction cut at its first "." and then its
            first ",", both stripped and lower-cased; correct when the prediction is a SUBSTRING of the
            reference. What that inflates: an empty prediction is correct; a partial word is correct
            ("residential" for "dense residential", "1" for "10", "n" for "no"); an answer followed by an
            explanation after a period is correct. An unclosed think block is graded whole and usually fails.
  mc        LHRS-Bench's rule there: the prediction cut at its first ".", spaces and periods removed from both,
            substring of the reference as the files write it ("C. 3" -> "c3"; so "3" is correct too).
  ground    the same box parsing and IoU, but outputs without a parseable box are dropped from numerator AND
            denominator (accuracy over parseable outputs only), which inflates a model that often fails to
            write a box.

`score(output, example)` returns one predictions-file row's scoring fields; evaluation/metrics.py aggregates rows.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from tinyrs_jax.rewards import scoring

RULE_SETS = ("strict", "tinyrs")
SMALL_AREA, MEDIUM_AREA = 32 ** 2, 96 ** 2  # DIOR-RSVG's size buckets by the true box's area in pixels (inclusive)
NO_ANSWER_TASKS = ("caption", "ground_multi", "chat", "reason")  # no short reference: not scored for accuracy


def size_bucket(box: Sequence[float] | None) -> str | None:
  """small (area <= 32^2), medium (<= 96^2) or large, by the true box's area in original pixels."""
  if box is None:
    return None
  area = (box[2] - box[0]) * (box[3] - box[1])
  return "small" if area <= SMALL_AREA else "medium" if area <= MEDIUM_AREA else "large"


# ------------------------------------------------------------------------------------------------- strict

parse_choice = scoring.parse_choice  # one parser for the reward and the evaluation (rewards/scoring.py)


def strict_answer(output: str, answer_tag: str, think_tags: Sequence[str]) -> str:
  return scoring.normalize_answer(scoring.answer_span(output, answer_tag, think_tags))


# ------------------------------------------------------------------------------------------------- tinyrs

def tinyrs_span(output: Any, answer_tag: str, think_tags: Sequence[str]) -> str:
  """The original's graded text, its steps in its order: when a think tag opens, the text after its first close
  (the whole output when it never closes); then, when an answer tag opens, the text up to its close (to the end
  when it never closes). The original knew one think tag, `reasoning`; ours are `think_tags`."""
  text = scoring.as_text(output)
  for tag in think_tags:
    opening, closing = f"<{scoring.check_tag(tag)}>", f"</{tag}>"
    if opening in text:
      after = text.split(opening)[1].split(closing)
      text = after[1] if len(after) > 1 else text
      break
  opening = f"<{scoring.check_tag(answer_tag)}>"
  if opening in text:
    text = text.split(opening)[1].split(f"</{answer_tag}>")[0]
  return text


def tinyrs_prediction(span: str) -> str:
  """Spaces removed, cut at the first "." then the first ",", stripped, lower case (the original's steps)."""
  return span.replace(" ", "").split(".")[0].split(",")[0].strip().lower()


def tinyrs_correct(span: str, reference: str) -> bool:
  return tinyrs_prediction(span) in reference.replace(" ", "").strip().lower()


def tinyrs_choice_correct(span: str, reference: str) -> bool:
  """LHRS-Bench in the original: the prediction cut at its first "."; spaces and periods removed from both, lower
  case; correct when the prediction is a substring of the reference as written (e.g. "C. 3" -> "c3")."""
  clean = lambda t: t.replace(" ", "").replace(".", "").lower()
  return clean(span.split(".")[0]) in clean(reference)


def choice_reference(example: Mapping, letter: str) -> str:
  """The multiple-choice reference as the original's files write it: the raw answer when the reader kept one,
  else "<letter>. <option text>"."""
  extra = example.get("extra") or {}
  if isinstance(extra.get("raw_answer"), str) and extra["raw_answer"].strip():
    return extra["raw_answer"]
  choices = extra.get("choices") or []
  i = ord(letter.upper()) - ord("A") if len(letter) == 1 else -1
  return f"{letter}. {choices[i]}" if 0 <= i < len(choices) else letter


# --------------------------------------------------------------------------------------------- one example

def reference_of(example: Mapping) -> str | None:
  return scoring.reference_answer(example)


def score(output: Any, example: Mapping, *, answer_tag: str = scoring.ANSWER_TAG,
          think_tags: Sequence[str] = scoring.THINK_TAGS, box_format: str = "qwen1000") -> dict:
  """The scoring fields of one prediction row: extracted answers and correctness under both rule sets; for
  grounding the boxes in pixels, IoU and size bucket. `correct_*` is None where a rule set does not score the
  example (captions; tinyrs grounding without a parseable box)."""
  task = example.get("task")
  output = scoring.as_text(output)
  row: dict[str, Any] = {"answer_text": scoring.answer_span(output, answer_tag, think_tags).strip(),
                         "answer_strict": strict_answer(output, answer_tag, think_tags),
                         "answer_tinyrs": tinyrs_prediction(tinyrs_span(output, answer_tag, think_tags))}
  if task == scoring.GROUND_TASK:
    truth = scoring.true_box(example, box_format)
    w, h = example.get("width"), example.get("height")
    pred = scoring.parse_box(scoring.answer_span(output, answer_tag, think_tags), w, h, box_format)
    pred_tinyrs = scoring.parse_box(tinyrs_span(output.strip(), answer_tag, think_tags), w, h, box_format)
    iou = scoring.box_iou(pred, truth) if pred is not None and truth is not None else 0.0
    iou_tinyrs = (scoring.box_iou(pred_tinyrs, truth) if truth is not None else 0.0) \
        if pred_tinyrs is not None else None
    row.update(pred_box=_rounded(pred), true_box=_rounded(truth), iou=iou, iou_tinyrs=iou_tinyrs,
               parsed=pred is not None, size=size_bucket(truth),
               correct_strict=iou >= 0.5, correct_tinyrs=None if iou_tinyrs is None else iou_tinyrs >= 0.5)
    return row
  ref = reference_of(example)
  if task in NO_ANSWER_TASKS or ref is None:
    row.update(correct_strict=None, correct_tinyrs=None)
    return row
  span = tinyrs_span(output, answer_tag, think_tags)
  if task == "mc":
    choices = (example.get("extra") or {}).get("choices") or ()
    letter = parse_choice(scoring.answer_span(output, answer_tag, think_tags), choices)
    row.update(answer_strict=letter or "", correct_strict=letter is not None and letter == ref.strip().upper(),
               correct_tinyrs=tinyrs_choice_correct(span, choice_reference(example, ref.strip())))
    return row
  row["correct_strict"] = scoring.score_accuracy(output, example, answer_tag=answer_tag, think_tags=think_tags,
                                                 box_format=box_format) == 1.0
  row["correct_tinyrs"] = tinyrs_correct(span, ref)
  return row


def _rounded(box):
  return None if box is None else [round(float(v), 2) for v in box]
