"""Qwen2-VL grounding text: formatting, rounding, parsing, IoU."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyrs_jax.data import boxes as bx


def test_format():
  assert bx.box_to_text((10, 20, 110, 220), 1000, 1000) == "<|box_start|>(10,20),(110,220)<|box_end|>"
  assert bx.box_to_text((0, 0, 50, 25), 100, 50, label="a small boat") == (
      "<|object_ref_start|>a small boat<|object_ref_end|><|box_start|>(0,0),(500,500)<|box_end|>")


@pytest.mark.parametrize("v,size,expected", [
    (5, 2000, 2),  # 2.5 -> 2 (half to even)
    (7, 2000, 4),  # 3.5 -> 4
    (1, 2000, 0),  # 0.5 -> 0
    (3, 2000, 2),  # 1.5 -> 2
    (3, 400, 8),  # 7.5 -> 8
    (5, 400, 12),  # 12.5 -> 12
    (333.3, 1000, 333),
    (0.6, 1000, 1),
])
def test_documented_rounding(v, size, expected):
  e = expected
  assert bx.box_to_text((v, v, v, v), size, size) == f"<|box_start|>({e},{e}),({e},{e})<|box_end|>"


def test_clipping():
  # Outside the image clips to the grid's ends; the right/bottom edge itself (1000) becomes 999.
  assert bx.parse_boxes(bx.box_to_text((-5, -0.1, 640, 999), 640, 480)) == [(None, (0, 0, 999, 999))]
  with pytest.raises(ValueError, match="positive"):
    bx.box_to_text((0, 0, 1, 1), 0, 10)


@pytest.mark.parametrize("text,expected", [
    ("<|box_start|>(1,2),(3,4)<|box_end|>", [(None, (1, 2, 3, 4))]),
    ("<|box_start|> ( 1 , 2 ) , ( 3 , 4 ) <|box_end|>", [(None, (1, 2, 3, 4))]),
    ("<|box_start|>(1,2)(3,4)<|box_end|>", [(None, (1, 2, 3, 4))]),
    ("<|box_start|>(1.4,2.6),(3,4)<|box_end|>", [(None, (1.4, 2.6, 3, 4))]),  # decimals as written
    ("<|box_start|>(1,\n2),\n(3,4)<|box_end|>", [(None, (1, 2, 3, 4))]),
    ("<|object_ref_start|> the red car <|object_ref_end|> <|box_start|>(1,2),(3,4)<|box_end|>",
     [("the red car", (1, 2, 3, 4))]),
    ("<|object_ref_start|>a<|object_ref_end|> then text <|object_ref_start|>b<|object_ref_end|>"
     "<|box_start|>(1,2),(3,4)<|box_end|> and <|box_start|>(5,6),(7,8)<|box_end|>",
     [("b", (1, 2, 3, 4)), (None, (5, 6, 7, 8))]),
    # Without special tokens (e.g. decoded with skip_special_tokens): bare pairs.
    ("the tank is at (100,200),(300,400).", [(None, (100, 200, 300, 400))]),
    ("two: (1, 2), (3, 4) and (5,6),(7,8)", [(None, (1, 2, 3, 4)), (None, (5, 6, 7, 8))]),
    # Tagged boxes win over bare pairs elsewhere in the text.
    ("(9,9),(9,9) <|box_start|>(1,2),(3,4)<|box_end|>", [(None, (1, 2, 3, 4))]),
    ("no box here (1,2) or (a,b),(c,d)", []),
    ("(12345678,1),(2,3)", []),
    ("", []),
])
def test_parse_variants(text, expected):
  assert bx.parse_boxes(text) == expected


def test_box_from_norm1000():
  assert bx.box_from_norm1000((0, 500, 250, 1000), 800, 600) == (0.0, 300.0, 200.0, 600.0)


def _iou_numpy(a, b):
  """The reference statement: vectorized NumPy over many box pairs."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  wh_a = np.clip(a[:, 2:] - a[:, :2], 0, None)
  wh_b = np.clip(b[:, 2:] - b[:, :2], 0, None)
  area_a, area_b = wh_a.prod(1), wh_b.prod(1)
  inter = np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None).prod(1)
  union = area_a + area_b - inter
  ok = (area_a > 0) & (area_b > 0)
  return np.where(ok, inter / np.where(ok, union, 1), 0.0)


def test_iou_matches_numpy():
  rng = np.random.default_rng(0)
  a = rng.uniform(0, 100, (500, 4))
  b = rng.uniform(0, 100, (500, 4))
  a[:50] = b[:50]  # identical boxes
  a[50:100, 2] = a[50:100, 0]  # zero width
  ours = np.array([bx.iou(x, y) for x, y in zip(a, b)])
  np.testing.assert_allclose(ours, _iou_numpy(a, b), rtol=1e-12, atol=1e-12)
  assert bx.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
  assert bx.iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges
  assert bx.iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
  assert bx.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
  assert bx.iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0  # degenerate


sizes = st.integers(min_value=1, max_value=8000)


@settings(max_examples=200, deadline=None)
@given(st.data(), sizes, sizes, st.one_of(st.none(), st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="<>"), max_size=20)))
def test_round_trip_property(data, width, height, label):
  x1 = data.draw(st.floats(0, width, allow_nan=False))
  x2 = data.draw(st.floats(x1, width, allow_nan=False))
  y1 = data.draw(st.floats(0, height, allow_nan=False))
  y2 = data.draw(st.floats(y1, height, allow_nan=False))
  text = bx.box_to_text((x1, y1, x2, y2), width, height, label=label)
  [(parsed_label, coords)] = bx.parse_boxes(text)
  assert parsed_label == (None if label is None else label.strip())
  assert all(0 <= c <= 999 for c in coords) and coords[0] <= coords[2] and coords[1] <= coords[3]
  back = bx.box_from_norm1000(coords, width, height)
  # Half a grid step of rounding, plus the step lost by clipping 1000 to 999.
  for v, w, size in zip((x1, y1, x2, y2), back, (width, height, width, height)):
    assert abs(v - w) <= size / 1000 * (1.0 if v > 999.5 / 1000 * size else 0.5) + 1e-9


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("(),0123456789 .-\n") + ["<|box_start|>", "<|box_end|>", "a",
                                                               "<|object_ref_start|>", "<|object_ref_end|>"]),
                max_size=60).map("".join))
def test_parse_never_raises(text):
  for label, coords in bx.parse_boxes(text):
    assert label is None or isinstance(label, str)
    assert len(coords) == 4 and all(isinstance(c, (int, float)) for c in coords)
  first = bx.first_box(text)
  assert (first is None) == (not bx.parse_boxes(text))


@pytest.mark.parametrize("text,expected", [
    ("(9,9),(19,19) <|box_start|>(1,2),(3,4)<|box_end|>", (None, (9, 9, 19, 19))),  # the bare box comes first
    ("<|object_ref_start|>car<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|> (9,9),(19,19)",
     ("car", (1, 2, 3, 4))),
    ("<|box_start|>(1,2),(3,4)<|box_end|>", (None, (1, 2, 3, 4))),
    ("at (1.5, 2.25),(3,4)", (None, (1.5, 2.25, 3, 4))),  # decimals as written
    ("no box", None),
])
def test_first_box_in_text_order(text, expected):
  assert bx.first_box(text) == expected


def _exact_grid_values(size):
  """Grid values whose pixel value v * size / 1000 is an even integer (so half of it is exact too)."""
  return [g for g in range(2, 999) if (g * size) % 1000 == 0 and (g * size // 1000) % 2 == 0]


@pytest.mark.parametrize("size", [800, 600, 512, 1000])
def test_iou_exactly_half_is_a_hit_on_every_image_size(size):
  """An IoU of exactly 0.5 is a hit under both rule sets, and one grid step either side of the boundary falls on
  the right side, for every grid value that lands on an exact pixel. v / 1000 * size (the old order) misses it:
  145 / 1000 * 800 = 115.99999999999999 (pred inside the truth: IoU below 0.5), 545 / 1000 * 800 =
  436.00000000000006 (truth inside the pred: IoU below 0.5)."""
  from tinyrs_jax.evaluation import rules
  values = _exact_grid_values(size)
  assert values
  half = size // 2

  def score(text, truth):
    return rules.score(text, {"task": "ground", "boxes": [{"label": "x", "box": list(truth)}], "width": size,
                              "height": size})

  for g in values:
    px = g * size // 1000
    # the prediction inside the truth: (0,0)-(g,500) against (0,0)-(px,size)
    truth = (0, 0, px, size)
    at = score(f"({0},{0}),({g},500)", truth)
    assert at["iou"] == 0.5 and at["correct_strict"] and at["correct_tinyrs"], (size, g, at["iou"])
    assert not score(f"(0,0),({g},499)", truth)["correct_strict"]
    assert not score(f"(0,0),({g},499)", truth)["correct_tinyrs"]
    assert score(f"(0,0),({g},501)", truth)["correct_strict"]
    # the truth inside the prediction: (0,0)-(g,1000) against (0,0)-(px/2,size)
    truth = (0, 0, px // 2, size)
    at = score(f"(0,0),({g},1000)", truth)
    assert at["iou"] == 0.5 and at["correct_strict"] and at["correct_tinyrs"], (size, g, at["iou"])
    if g + 1 <= 1000:
      assert not score(f"(0,0),({g + 1},1000)", truth)["correct_tinyrs"]
      assert not score(f"(0,0),({g + 1},1000)", truth)["correct_strict"]
    assert score(f"(0,0),({g - 1},1000)", truth)["correct_strict"]


def test_grid_to_pixels_multiplies_first():
  assert bx.box_from_norm1000((145, 545, 145, 545), 800, 800) == (116.0, 436.0, 116.0, 436.0)
