"""Qwen2-VL grounding text: boxes as `(x1,y1),(x2,y2)` on a 0-1000 grid.

Format (Qwen2-VL paper): `<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`,
top-left then bottom-right corner, each coordinate normalized to [0, 1000).

Rounding rule, pixels -> text: `min(max(round(v / size * 1000), 0), 999)` with Python's `round`, which is
round-half-to-even on the float quotient: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (e.g. x = 5 px of width 2000 gives
2.5 -> 2, x = 7 px gives 3.5 -> 4). Coordinates outside the image clip to 0 and 999, so x = width gives 999.
Text -> pixels is `v * size / 1000` (floats, no rounding), multiplied first as the original work's evaluation
does: `v / 1000 * size` is not exact (545 / 1000 * 800 = 436.00000000000006, 145 / 1000 * 800 =
115.99999999999999), and an IoU of exactly 0.5 must stay 0.5 on every image size. Coordinates are read as
written: a decimal grid value (other models write them) is kept, not rounded.

Parsing is regex-only: nothing from model output is ever evaluated.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

BOX_START, BOX_END = "<|box_start|>", "<|box_end|>"
REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"

# Bounded digit runs keep float() finite and the regex linear.
_NUM = r"\s*(-?\d{1,7}(?:\.\d{1,7})?)\s*"
_PAIR = r"\(" + _NUM + "," + _NUM + r"\)"
_COORDS = _PAIR + r"\s*(?:,\s*)?" + _PAIR
# A box in special tokens, optionally preceded by its <|object_ref_start|>label<|object_ref_end|>; the
# label may not contain another ref token, so one label never swallows the next.
_LABEL = r"(?P<label>(?:(?!" + re.escape(REF_START) + "|" + re.escape(REF_END) + r").)*)"
_TAGGED = re.compile(
    r"(?:" + re.escape(REF_START) + _LABEL + re.escape(REF_END) + r"\s*)?"
    + re.escape(BOX_START) + r"\s*" + _COORDS + r"\s*" + re.escape(BOX_END), re.DOTALL)
_BARE = re.compile(_COORDS)


def _to_grid(v: float, size: float) -> int:
  return min(max(round(v / size * 1000), 0), 999)


def box_to_text(box_xyxy_pixels: Sequence[float], width: float, height: float, label: str | None = None) -> str:
  """Pixel box (x1, y1, x2, y2) on a width x height image -> Qwen2-VL grounding text."""
  if width <= 0 or height <= 0:
    raise ValueError(f"image size must be positive, got width={width}, height={height}")
  if len(box_xyxy_pixels) != 4:
    raise ValueError(f"box must be (x1, y1, x2, y2), got {box_xyxy_pixels!r}")
  x1, y1, x2, y2 = box_xyxy_pixels
  coords = (_to_grid(x1, width), _to_grid(y1, height), _to_grid(x2, width), _to_grid(y2, height))
  box = f"{BOX_START}({coords[0]},{coords[1]}),({coords[2]},{coords[3]}){BOX_END}"
  return box if label is None else f"{REF_START}{label}{REF_END}{box}"


Coords = tuple[float, float, float, float]


def _number(g: str) -> float:
  """A coordinate as written: an int for "545", the float for "545.5" (never rounded)."""
  return float(g) if "." in g else int(g)


def _coords(groups: Sequence[str]) -> Coords:
  x1, y1, x2, y2 = (_number(g) for g in groups)
  return x1, y1, x2, y2


def _label(m: re.Match) -> str | None:
  return m.group("label").strip() if m.group("label") is not None else None


def parse_boxes(text: str) -> list[tuple[str | None, Coords]]:
  """All boxes in `text` as (label or None, (x1, y1, x2, y2) on the 0-1000 grid, as written), in order.

  Tolerates spaces inside the coordinates; decimal values are kept. When the text has no <|box_start|>
  boxes, bare `(x1,y1),(x2,y2)` pairs are accepted instead (models often drop the tokens, and
  skip_special_tokens decoding removes them).
  """
  tagged = [(_label(m), _coords(m.groups()[1:])) for m in _TAGGED.finditer(text)]
  if tagged:
    return tagged
  return [(None, _coords(m.groups())) for m in _BARE.finditer(text)]


def first_box(text: str) -> tuple[str | None, Coords] | None:
  """The first box in TEXT ORDER, tagged (`<|box_start|>…`) or bare (`(x1,y1),(x2,y2)`), as (label or None,
  grid coordinates as written); None without one. "The first box counts" means this one: a bare box written
  before a tagged one is the first."""
  tagged, bare = _TAGGED.search(text), _BARE.search(text)
  if tagged is not None and (bare is None or bare.start() >= tagged.start()):  # a tagged box's own coordinates
    return _label(tagged), _coords(tagged.groups()[1:])  # are a bare match inside it, after its start
  return (None, _coords(bare.groups())) if bare is not None else None


def box_from_norm1000(box: Sequence[float], width: float, height: float) -> tuple[float, float, float, float]:
  """0-1000 grid box -> pixel box (floats), v * size / 1000 (the module docstring says why in that order)."""
  x1, y1, x2, y2 = box
  return (x1 * width / 1000, y1 * height / 1000, x2 * width / 1000, y2 * height / 1000)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
  """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when they don't overlap or either is empty."""
  ax1, ay1, ax2, ay2 = (float(v) for v in a)
  bx1, by1, bx2, by2 = (float(v) for v in b)
  area_a = max(ax2 - ax1, 0.0) * max(ay2 - ay1, 0.0)
  area_b = max(bx2 - bx1, 0.0) * max(by2 - by1, 0.0)
  inter = max(min(ax2, bx2) - max(ax1, bx1), 0.0) * max(min(ay2, by2) - max(ay1, by1), 0.0)
  union = area_a + area_b - inter
  if area_a <= 0 or area_b <= 0 or union <= 0 or not np.isfinite(union):
    return 0.0
  return inter / union
