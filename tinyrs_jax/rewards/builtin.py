"""The built-in rewards. Each is `fn(completions, examples, **options) -> list[float]`.

  format         1.0 iff the completion is exactly `<think>…</think>` then `<answer>…</answer>`, only whitespace
                 around and between, each tag exactly once, both bodies non-blank (an empty answer is the
                 classic way a format reward gets gamed). Options: think_tag ("think"; the original TinyRS
                 used "reasoning"), answer_tag ("answer"), allow_empty (False).
  accuracy       scoring.score_accuracy: task-dependent correctness in [0, 1]; grounding is continuous IoU.
                 Options: answer_tag, think_tag (fallback span after its close; default think or reasoning),
                 box_format ("qwen1000", "pixels", "norm1").
  iou_threshold  1.0 when a `ground` example's IoU >= threshold (0.5), else 0.0. Same options plus threshold.
  box_distance   for a `ground` example, 1 - d / (reach x the image diagonal), at least 0, where d is the distance
                 between the predicted and the true box centres (0 without a valid box; 0 for other tasks). Dense
                 where IoU is not: a box next to the target earns something even at IoU 0. Same options as
                 accuracy plus reach (0.5).
  overlong       DAPO's soft overlong penalty in [-1, 0] from the trainer's completion_length,
                 max_completion_length and truncated keys; option cache_length (max_completion_length // 4).
                 Rows without lengths get 0 (no evidence of being long).

All but overlong lie in [0, 1]; none raises on any completion text.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import numpy as np

from tinyrs_jax.rewards import register_reward, scoring


def _rows(completions: Sequence[Any], examples: Sequence[Any]) -> list[tuple[str, Any]]:
  if len(completions) != len(examples):
    raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
  return [(scoring.as_text(c), e) for c, e in zip(completions, examples)]


def _think_tags(think_tag: str | None) -> tuple[str, ...]:
  return scoring.THINK_TAGS if think_tag is None else (scoring.check_tag(think_tag),)


def format_ok(text: str, think_tag: str = "think", answer_tag: str = "answer", allow_empty: bool = False) -> bool:
  """The exact think-then-answer layout (rules in the module docstring)."""
  tags = [f"<{scoring.check_tag(think_tag)}>", f"</{think_tag}>", f"<{scoring.check_tag(answer_tag)}>",
          f"</{answer_tag}>"]
  if any(text.count(t) != 1 for t in tags):  # counting first keeps the regex below unambiguous and linear
    return False
  think_open, think_close, answer_open, answer_close = (re.escape(t) for t in tags)
  m = re.fullmatch(rf"\s*{think_open}(.*){think_close}\s*{answer_open}(.*){answer_close}\s*", text, re.DOTALL)
  if m is None:
    return False
  return allow_empty or (bool(m.group(1).strip()) and bool(m.group(2).strip()))


@register_reward("format")
def format_reward(completions: Sequence[str], examples: Sequence[Mapping], *, think_tag: str = "think",
                  answer_tag: str = "answer", allow_empty: bool = False) -> list[float]:
  return [float(format_ok(text, think_tag, answer_tag, allow_empty)) for text, _e in _rows(completions, examples)]


@register_reward("accuracy")
def accuracy_reward(completions: Sequence[str], examples: Sequence[Mapping], *, answer_tag: str = "answer",
                    think_tag: str | None = None, box_format: str = "qwen1000") -> list[float]:
  think_tags = _think_tags(think_tag)
  return [scoring.score_accuracy(text, example, answer_tag=answer_tag, think_tags=think_tags, box_format=box_format)
          for text, example in _rows(completions, examples)]


@register_reward("iou_threshold")
def iou_threshold_reward(completions: Sequence[str], examples: Sequence[Mapping], *, threshold: float = 0.5,
                         answer_tag: str = "answer", think_tag: str | None = None,
                         box_format: str = "qwen1000") -> list[float]:
  threshold = float(threshold)
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f"threshold must be in [0, 1], got {threshold}")
  think_tags = _think_tags(think_tag)
  out = []
  for text, example in _rows(completions, examples):
    task = example.get("task") if isinstance(example, Mapping) else None
    iou = scoring.score_iou(text, example, answer_tag=answer_tag, think_tags=think_tags,
                            box_format=box_format) if task == scoring.GROUND_TASK else None
    out.append(float(iou is not None and iou >= threshold))
  return out


@register_reward("box_distance")
def box_distance_reward(completions: Sequence[str], examples: Sequence[Mapping], *, reach: float = 0.5,
                        answer_tag: str = "answer", think_tag: str | None = None,
                        box_format: str = "qwen1000") -> list[float]:
  reach = float(reach)
  if not (math.isfinite(reach) and reach > 0):
    raise ValueError(f"reach must be a positive fraction of the image diagonal, got {reach}")
  think_tags = _think_tags(think_tag)
  out = []
  for text, example in _rows(completions, examples):
    if not isinstance(example, Mapping) or example.get("task") != scoring.GROUND_TASK:
      out.append(0.0)
      continue
    truth = scoring.true_box(example, box_format)
    width, height = example.get("width"), example.get("height")
    pred = scoring.parse_box(scoring.answer_span(text, answer_tag, think_tags), width, height, box_format)
    w, h = scoring.positive_size(width), scoring.positive_size(height)
    if truth is None or pred is None or w is None or h is None:  # no box, no reference, or no usable image size
      out.append(0.0)
      continue
    d = math.hypot((pred[0] + pred[2] - truth[0] - truth[2]) / 2, (pred[1] + pred[3] - truth[1] - truth[3]) / 2)
    value = 1.0 - d / (reach * math.hypot(w, h))
    out.append(min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0)
  return out


def _count(value: Any) -> float | None:
  """A token count from example metadata (int, numpy int, float), or None when absent or nonsense."""
  if isinstance(value, bool) or value is None:
    return None
  try:
    v = float(value)
  except (TypeError, ValueError, OverflowError):
    return None
  return v if math.isfinite(v) and v >= 0 else None


def overlong_penalty(length: Any, max_length: Any, cache_length: Any = None, truncated: bool = False) -> float:
  """DAPO soft overlong penalty: 0 up to L_max - L_cache, linear down to -1 at L_max, -1 beyond."""
  n, l_max = _count(length), _count(max_length)
  if n is None or l_max is None or l_max <= 0:
    return 0.0
  l_cache = _count(cache_length)
  l_cache = float(int(l_max) // 4) if l_cache is None else min(l_cache, l_max)
  if (isinstance(truncated, (bool, np.bool_)) and truncated and n >= l_max) or n > l_max:
    return -1.0
  if n <= l_max - l_cache:
    return 0.0
  return max(-1.0, min(0.0, ((l_max - l_cache) - n) / l_cache))  # l_cache > 0 here, since n > l_max - l_cache


@register_reward("overlong")
def overlong_reward(completions: Sequence[str], examples: Sequence[Mapping], *,
                    cache_length: int | None = None) -> list[float]:
  out = []
  for _text, example in _rows(completions, examples):
    get = example.get if isinstance(example, Mapping) else (lambda key, default=None: default)
    out.append(overlong_penalty(get("completion_length"), get("max_completion_length"), cache_length,
                                get("truncated", False)))
  return out
