r"""The two scoring rule sets, applied to one model output at a time. Both are always reported, side by side.

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
  ground    the first box of the answer in text order (Qwen2-VL's `(x1,y1),(x2,y2)` on the 0-1000 grid, with or
            without its tokens, spaces allowed, else the first `[x1,y1,x2,y2]` in `box_format`), decimals as
            written, in pixels as v * size / 1000, IoU without the +1 convention, a hit at IoU >= 0.5. An
            output without a parseable box (or with a reversed one) is a miss and counts in every denominator.
  ground_multi  (several true boxes: GeoChat referring with several objects, grounded descriptions) every box of
            the answer against every true box, matched one to one at IoU >= 0.5 (a maximum matching);
            precision = matched / predicted boxes, recall = matched / true boxes, summed over the rows. No
            original rule exists: the same value in both columns.
  no true box  a grounding row whose record has no true box is unusable: in no grounding denominator, listed
            as unscored in results.md (not a miss).

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
  ground    boxes read as the original's Qwen2-VL path reads them (lm_prediction_call.py `_extract_bbox_qwen2vl`):
            `\((\d+(?:\.\d+)?),(\d+(?:\.\d+)?)\),\((…),(…)\)` exactly (no spaces, no signs; tokens around it
            are ignored), else (its reasoning models) `[x1, y1, x2, y2]`, spaces allowed after the commas; the
            first match counts; coordinates as written (decimals kept), pixels as v * size / 1000 (the list form
            in `box_format`, default the same grid), IoU as ours. A reversed box (x2 < x1) is read, and its IoU
            is 0: a miss that counts. What is dropped from numerator AND denominator is exactly what that
            grammar cannot read (accuracy over parseable outputs only, which inflates a model that often fails
            to write a box). Decision kept on purpose: the reading is the Qwen2-VL path's (our model writes
            Qwen2-VL's form), the dropping is the TinyRS path's (`_extract_bbox_tinyrs` returns an empty list
            for no box, and the scorer's zip then counts nothing; the Qwen2-VL path's None would count a miss).
            The original's scorer has no rule for several true boxes (ground_multi) and no cumulative IoU:
            those are reported with our rule in both columns.

`score(output, example)` returns one predictions-file row's scoring fields; evaluation/metrics.py aggregates rows.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from tinyrs_jax.data import boxes as boxes_lib
from tinyrs_jax.rewards import scoring

RULE_SETS = ("strict", "tinyrs")
# Bump with every change to the scoring code (this file, rewards/scoring.py's parsers, data/boxes.py's reading,
# metrics.py) that can change a number: results.json entries scored under another version are re-scored from
# their saved predictions (evaluation/results.py). 2: v * size / 1000, first box in text order, decimals kept,
# the original's box grammar in the tinyrs column, ground_multi, cumulative IoU, rows without a true box unscored.
SCORING_VERSION = 2
SMALL_AREA, MEDIUM_AREA = 32 ** 2, 96 ** 2  # DIOR-RSVG's size buckets by the true box's area in pixels (inclusive)
NO_ANSWER_TASKS = ("caption", "ground_multi", "chat", "reason")  # no short reference: not scored for accuracy
GROUND_MULTI_TASK = "ground_multi"
MATCH_IOU = 0.5  # ground_multi: a predicted box matches a true box at this IoU (one to one)


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


# The original's box grammar (aybora/TinyRS eval/src/evaluation/lm_prediction_call.py, `_extract_bbox_qwen2vl`).
_N = r"(\d+(?:\.\d+)?)"
_TINYRS_PAIRS = re.compile(r"\(" + _N + "," + _N + r"\),\(" + _N + "," + _N + r"\)")
_TINYRS_LIST = re.compile(r"\[" + _N + r",\s*" + _N + r",\s*" + _N + r",\s*" + _N + r"\]")
_MAX_CHARS = 100_000  # outputs are at most max_new_tokens long; this only bounds the regex on junk


def tinyrs_box(span: str, width: Any, height: Any, box_format: str = "qwen1000"):
  """The first box the original's grammar reads in `span`, in pixels as (x1, y1, x2, y2) floats, reversed boxes
  included (their IoU is 0); None when it reads none (or the image size is unknown)."""
  span = scoring.as_text(span)[:_MAX_CHARS]
  m = _TINYRS_PAIRS.search(span)
  fmt = "qwen1000"
  if m is None:
    m, fmt = _TINYRS_LIST.search(span), box_format
  if m is None:
    return None
  v = [float(g) for g in m.groups()]
  if fmt == "pixels":
    return tuple(v)
  w, h = scoring.positive_size(width), scoring.positive_size(height)
  if w is None or h is None:
    return None
  scale = 1000.0 if fmt == "qwen1000" else 1.0
  return (v[0] * w / scale, v[1] * h / scale, v[2] * w / scale, v[3] * h / scale)


def _all_boxes(span: str, width: Any, height: Any, box_format: str) -> list[tuple[float, float, float, float]]:
  """Every box of an answer in pixels (Qwen2-VL's form; else every `[x1,y1,x2,y2]` in box_format); invalid ones
  (reversed, empty) are kept as written and match nothing."""
  found = [b for _, b in boxes_lib.parse_boxes(span)]
  out = []
  for b in found:
    px = scoring.to_pixels(b, width, height, "qwen1000")
    out.append(px if px is not None else (0.0, 0.0, 0.0, 0.0))
  if not found:
    for m in scoring._LIST_BOX.finditer(span[:_MAX_CHARS]):
      px = scoring.to_pixels([float(g) for g in m.groups()], width, height, box_format)
      out.append(px if px is not None else (0.0, 0.0, 0.0, 0.0))
  return out


def match_boxes(pred: Sequence, truth: Sequence, threshold: float = MATCH_IOU) -> int:
  """The most one-to-one pairs (predicted, true) with IoU >= threshold (a maximum bipartite matching, by
  augmenting paths; boxes per row are few)."""
  edges = [[j for j, t in enumerate(truth) if scoring.box_iou(p, t) >= threshold] for p in pred]
  owner: dict[int, int] = {}

  def assign(i: int, seen: set) -> bool:
    for j in edges[i]:
      if j not in seen:
        seen.add(j)
        if j not in owner or assign(owner[j], seen):
          owner[j] = i
          return True
    return False

  return sum(assign(i, set()) for i in range(len(pred)))


def true_boxes(example: Mapping) -> list[tuple[float, float, float, float]]:
  out = []
  for b in example.get("boxes") or []:
    box = scoring.valid_box(b.get("box") if isinstance(b, Mapping) else (b[1] if len(b) == 2 else None))
    if box is not None:
      out.append(box)
  return out


def _area(box) -> float:
  return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def _inter_union(pred, truth) -> tuple[float, float]:
  """Intersection and union areas (pixels) for the cumulative IoU; no prediction: (0, the true box's area)."""
  if pred is None or not all(math.isfinite(float(v)) for v in pred):
    return 0.0, _area(truth)
  inter = (max(min(pred[2], truth[2]) - max(pred[0], truth[0]), 0.0)
           * max(min(pred[3], truth[3]) - max(pred[1], truth[1]), 0.0))
  return inter, _area(pred) + _area(truth) - inter


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
  w, h = example.get("width"), example.get("height")
  if task == scoring.GROUND_TASK:
    truth = scoring.true_box(example, box_format)
    pred = scoring.parse_box(scoring.answer_span(output, answer_tag, think_tags), w, h, box_format)
    if truth is None:  # nothing to score against: unusable, not a miss
      row.update(pred_box=_rounded(pred), true_box=None, iou=None, iou_tinyrs=None, parsed=pred is not None,
                 size=None, no_true_box=True, correct_strict=None, correct_tinyrs=None)
      return row
    pred_tinyrs = tinyrs_box(tinyrs_span(output.strip(), answer_tag, think_tags), w, h, box_format)
    iou = scoring.box_iou(pred, truth) if pred is not None else 0.0
    iou_tinyrs = boxes_lib.iou(pred_tinyrs, truth) if pred_tinyrs is not None else None
    inter, union = _inter_union(pred, truth)
    row.update(pred_box=_rounded(pred), true_box=_rounded(truth), iou=iou, iou_tinyrs=iou_tinyrs,
               parsed=pred is not None, size=size_bucket(truth), inter=inter, union=union,
               correct_strict=iou >= 0.5, correct_tinyrs=None if iou_tinyrs is None else iou_tinyrs >= 0.5)
    if pred_tinyrs is not None:
      row["inter_tinyrs"], row["union_tinyrs"] = _inter_union(pred_tinyrs, truth)
    return row
  if task == GROUND_MULTI_TASK:
    truths = true_boxes(example)
    preds = _all_boxes(scoring.answer_span(output, answer_tag, think_tags), w, h, box_format)
    row.update(pred_boxes=[_rounded(b) for b in preds], true_boxes=[_rounded(b) for b in truths],
               n_pred=len(preds), n_true=len(truths), matched=match_boxes(preds, truths) if truths else 0,
               correct_strict=None, correct_tinyrs=None)
    if not truths:
      row["no_true_box"] = True
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
