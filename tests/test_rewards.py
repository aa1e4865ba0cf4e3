"""GRPO rewards: answer extraction, every built-in reward per task, the registry, and fuzzing."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyrs_jax.rewards as rw
from tinyrs_jax.data import boxes as bx
from tinyrs_jax.rewards import builtin, scoring

W, H = 800, 600
TRUE_BOX = [96.0, 24.0, 240.0, 120.0]  # pixels
TRUE_TEXT = bx.box_to_text(TRUE_BOX, W, H, label="the ship")  # (120,40),(300,200) on the grid


def ex(task, answer=None, **kw):
  return {"task": task, "answer": answer, "boxes": [], "width": W, "height": H, "id": "x", "is_padding": False,
          "extra": {}, **kw}


GROUND = ex("ground", TRUE_TEXT, boxes=[{"label": "ship", "box": TRUE_BOX}])


def wrap(answer, think="I look at the image."):
  return f"<think>{think}</think><answer>{answer}</answer>"


def reward(name, completions, examples, **options):
  values = rw.get_reward(name)(completions, examples, **options)
  assert len(values) == len(completions) and all(isinstance(v, float) for v in values)
  return values


def one(name, completion, example, **options):
  return reward(name, [completion], [example], **options)[0]


# ---------------------------------------------------------------- scoring


def test_extract_tagged_and_answer_span():
  assert scoring.extract_tagged("<think>a</think><answer> b </answer>", "answer") == " b "
  assert scoring.extract_tagged("<reasoning>r</reasoning>", "reasoning") == "r"
  assert scoring.extract_tagged("<answer>a</answer><answer>b</answer>", "answer") == "b"  # the last one
  assert scoring.extract_tagged("<answer>truncated", "answer") is None
  assert scoring.extract_tagged("</answer>x<answer>", "answer") is None
  assert scoring.answer_span(wrap("Airport")) == "Airport"
  assert scoring.answer_span("<think>it is forest</think> Airport") == " Airport"  # after the think block
  assert scoring.answer_span("<reasoning>forest?</reasoning>Airport") == "Airport"
  assert scoring.answer_span("Airport") == "Airport"  # bare answer: the whole text
  assert scoring.answer_span("<r>x</r><a>y</a>", answer_tag="a") == "y"
  with pytest.raises(ValueError, match="tag name"):
    scoring.extract_tagged("x", "a>b")


@pytest.mark.parametrize("text,expected", [
    ("Airport", "airport"), ("  Dense   Residential.  ", "dense residential"), ('"Airport."', "airport"),
    ("'yes'", "yes"), ("**Forest**", "forest"), ("harbour!?", "harbour"), ("", ""), (None, ""),
    ("a.b", "a.b"),
])
def test_normalize_answer(text, expected):
  assert scoring.normalize_answer(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("yes", "yes"), ("Yes.", "yes"), ("NO", "no"), ("Yes, there is a ship.", "yes"), ("no ships at all", "no"),
    ("yes or no", None), ("maybe", None), ("I think yes", None), ("", None), ("yesterday", None),
])
def test_parse_yes_no(text, expected):
  assert scoring.parse_yes_no(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("3", 3), ("3.", 3), ("three", 3), ("Twenty", 20), ("zero", 0), ("none", 0), ("3 ships", 3),
    ("There are 12 tanks.", 12), ("1,000", 1000), ("4.0", 4), ("007", 7), ("2 or 3", None), ("2.5", None),
    ("many", None), ("", None), ("9" * 5000, None), ("0" * 5000 + "5", 5), ("three (3)", 3),
])
def test_parse_int(text, expected):
  assert scoring.parse_int(text) == expected


def test_parse_box_forms_and_conventions():
  expected = pytest.approx(TRUE_BOX)
  assert scoring.parse_box(TRUE_TEXT, W, H) == expected
  assert scoring.parse_box("(120,40),(300,200)", W, H) == expected  # special tokens skipped by decoding
  assert scoring.parse_box("the ship (120, 40), (300, 200) and (0,0),(1,1)", W, H) == expected  # the first
  assert scoring.parse_box("[120, 40, 300, 200]", W, H) == expected
  assert scoring.parse_box("[96, 24, 240, 120]", W, H, box_format="pixels") == expected
  assert scoring.parse_box("[0.12, 0.04, 0.3, 0.2]", W, H, box_format="norm1") == expected
  # The pair form is Qwen2-VL's grammar: always the 0-1000 grid, whatever box_format says.
  assert scoring.parse_box("(120,40),(300,200)", W, H, box_format="pixels") == expected
  with pytest.raises(ValueError, match="box_format"):
    scoring.parse_box("[1,2,3,4]", W, H, box_format="percent")


@pytest.mark.parametrize("text", [
    "", "no box here", "(300,200),(120,40)", "[300, 40, 120, 200]", "(1,1),(1,5)", "[5,5,5,5]",
    "(99999999,1),(2,3)", "[1e309, 1, 2, 3]", "[nan, 1, 2, 3]", "[inf,0,10,10]", "(1,2),(3", "[1,2,3]",
    "<|box_start|><|box_end|>", "[1,2,3,4,5]",
])
def test_parse_box_rejects(text):
  assert scoring.parse_box(text, W, H) is None


def test_parse_box_needs_a_size_unless_pixels():
  assert scoring.parse_box("[1,2,3,4]", None, H) is None
  assert scoring.parse_box("[1,2,3,4]", 0, H) is None
  assert scoring.parse_box("[1,2,3,4]", float("nan"), H) is None
  assert scoring.parse_box("[1,2,3,4]", None, None, box_format="pixels") == (1, 2, 3, 4)


def test_box_iou():
  assert scoring.box_iou(TRUE_BOX, TRUE_BOX) == 1.0
  assert scoring.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)  # no +1 pixel convention
  assert scoring.box_iou((0, 0, 10, 10), (0, 0, float("inf"), 10)) == 0.0
  assert scoring.box_iou((0, 0, 10, 10), "garbage") == 0.0
  assert scoring.box_iou((10, 0, 0, 10), (0, 0, 10, 10)) == 0.0


def test_true_box_sources():
  assert scoring.true_box(GROUND) == tuple(TRUE_BOX)
  from_text = scoring.true_box({**GROUND, "boxes": []})
  assert from_text == pytest.approx(TRUE_BOX)
  assert scoring.true_box({**GROUND, "boxes": [("ship", TRUE_BOX)]}) == tuple(TRUE_BOX)  # Record form
  assert scoring.true_box({"task": "ground"}) is None


# ---------------------------------------------------------------- format


@pytest.mark.parametrize("text,expected", [
    (wrap("yes"), 1.0),
    ("  <think>\nstep 1\nstep 2\n</think>\n\n<answer> yes </answer>\n", 1.0),
    ("<think>a</think><answer>yes</answer> trailing text", 0.0),
    ("preamble <think>a</think><answer>yes</answer>", 0.0),
    ("<think>a</think> between <answer>yes</answer>", 0.0),
    ("<think>a</think><answer>yes</answer><answer>no</answer>", 0.0),
    ("<answer>yes</answer>", 0.0),
    ("<answer>yes</answer><think>a</think>", 0.0),
    ("<think>a</think>", 0.0),
    ("<think>a<think>b</think></think><answer>yes</answer>", 0.0),
    ("<think>a <answer>x</answer></think><answer>yes</answer>", 0.0),
    ("<think>a</think><answer>yes", 0.0),
    ("<think>a</think><answer>  </answer>", 0.0),
    ("<think></think><answer>yes</answer>", 0.0),
    ("<reasoning>a</reasoning><answer>yes</answer>", 0.0),
    ("<THINK>a</THINK><ANSWER>yes</ANSWER>", 0.0),
    ("", 0.0),
])
def test_format(text, expected):
  assert one("format", text, ex("vqa_presence", "yes")) == expected


def test_format_options():
  text = "<reasoning>a</reasoning>\n<answer>yes</answer>"
  assert one("format", text, {}, think_tag="reasoning") == 1.0
  assert one("format", text, {}) == 0.0
  assert one("format", "<think>a</think><final>b</final>", {}, answer_tag="final") == 1.0
  assert one("format", "<think></think><answer></answer>", {}, allow_empty=True) == 1.0


# ---------------------------------------------------------------- accuracy, per task


@pytest.mark.parametrize("answer,expected", [
    ("Airport", 1.0), ("airport", 1.0), ("AIRPORT.", 1.0), (" airport ", 1.0), ('"Airport"', 1.0),
    ("Harbour", 0.0), ("airport harbour", 0.0), ("air port", 0.0), ("", 0.0),
])
def test_accuracy_classify(answer, expected):
  assert one("accuracy", wrap(answer), ex("classify", "airport")) == expected


def test_accuracy_classify_without_tags():
  e = ex("classify", "dense residential")
  assert one("accuracy", "Dense Residential", e) == 1.0  # a bare answer still counts
  assert one("accuracy", "<think>forest? no.</think>dense residential", e) == 1.0
  assert one("accuracy", "<reasoning>x</reasoning> Dense residential.", e) == 1.0
  assert one("accuracy", "The scene is dense residential", e) == 0.0
  assert one("accuracy", "<think>dense residential</think><answer>forest</answer>", e) == 0.0


@pytest.mark.parametrize("task", ["vqa_presence", "vqa_compare", "vqa"])
@pytest.mark.parametrize("answer,ref,expected", [
    ("yes", "yes", 1.0), ("Yes.", "yes", 1.0), ("Yes, there is one.", "yes", 1.0), ("no", "yes", 0.0),
    ("no", "No", 1.0), ("yes or no", "no", 0.0), ("maybe", "no", 0.0), ("", "no", 0.0),
])
def test_accuracy_yes_no(task, answer, ref, expected):
  assert one("accuracy", wrap(answer), ex(task, ref)) == expected


@pytest.mark.parametrize("answer,ref,expected", [
    ("3", "3", 1.0), ("three", "3", 1.0), ("There are 3 ships.", "3", 1.0), ("Three.", "3", 1.0),
    ("0", "0", 1.0), ("none", "0", 1.0), ("4", "3", 0.0), ("3 or 4", "3", 0.0), ("3.5", "3", 0.0),
    ("many", "3", 0.0), ("twelve", "12", 1.0),
    ("between 11 and 100", "between 11 and 100", 1.0),  # RSVQA ranges: exact match
    ("11", "between 11 and 100", 0.0),
])
def test_accuracy_count(answer, ref, expected):
  assert one("accuracy", wrap(answer), ex("vqa_count", ref)) == expected


@pytest.mark.parametrize("task,answer,ref,expected", [
    ("vqa_rural_urban", "Urban", "urban", 1.0), ("vqa_rural_urban", "rural", "urban", 0.0),
    ("vqa_area", "0m2", "0m2", 1.0), ("vqa_area", "10m2", "0m2", 0.0),
    ("identify", "A ship.", "a ship", 1.0),
    ("caption", "A harbour with ships.", None, 0.0), ("caption", "", None, 0.0),
    ("chat", "anything", "", 0.0),
])
def test_accuracy_other_tasks(task, answer, ref, expected):
  assert one("accuracy", wrap(answer), ex(task, ref)) == expected


def test_accuracy_missing_keys():
  assert one("accuracy", wrap("yes"), {}) == 0.0
  assert one("accuracy", wrap("yes"), {"answer": "yes"}) == 1.0  # no task: the answer says yes/no
  assert one("accuracy", wrap("3"), {"task": "vqa_count", "answer": 3}) == 1.0  # an int reference
  assert one("accuracy", wrap(TRUE_TEXT), {"task": "ground"}) == 0.0
  assert one("accuracy", wrap("x"), None) == 0.0


# ---------------------------------------------------------------- grounding


def test_ground_exact_box():
  assert one("accuracy", wrap(TRUE_TEXT), GROUND) == pytest.approx(1.0)
  assert one("accuracy", wrap("(120,40),(300,200)"), GROUND) == pytest.approx(1.0)  # no special tokens
  assert one("accuracy", wrap("[120, 40, 300, 200]"), GROUND) == pytest.approx(1.0)  # list, 0-1000
  assert one("accuracy", wrap("[96, 24, 240, 120]"), GROUND, box_format="pixels") == pytest.approx(1.0)
  assert one("accuracy", wrap("[0.12, 0.04, 0.3, 0.2]"), GROUND, box_format="norm1") == pytest.approx(1.0)
  assert one("accuracy", TRUE_TEXT, GROUND) == pytest.approx(1.0)  # bare answer


def test_ground_box_after_grid_rounding_scores_high():
  # An awkward box on a non-square image: the truth written on the 0-1000 grid loses up to half a step.
  truth = [37.3, 91.6, 173.9, 260.2]
  e = {"task": "ground", "boxes": [{"label": "tank", "box": truth}], "width": 641, "height": 479}
  text = bx.box_to_text(truth, 641, 479)
  assert one("accuracy", wrap(text), e) > 0.95
  assert one("iou_threshold", wrap(text), e) == 1.0


@pytest.mark.parametrize("box_text", [
    "(500,500),(900,900)",  # far from the truth
    "(0,600),(100,700)",
    "[600, 600, 990, 990]",
    "(120,250),(300,400)",  # right column, below the truth: touches nothing
])
def test_ground_wrong_box_scores_zero(box_text):
  # The original TinyRS built the "truth" from the prediction's own numbers, so any box scored ~1.
  assert one("accuracy", wrap(box_text), GROUND) < 0.01
  assert one("iou_threshold", wrap(box_text), GROUND) == 0.0


def test_ground_partial_overlap_is_continuous():
  # Same height, half the width shifted right: IoU = 1/3 exactly, in pixels.
  half = (300 - 120) // 2
  v = one("accuracy", wrap(f"({120 + half},40),({300 + half},200)"), GROUND)
  assert v == pytest.approx(1 / 3, abs=1e-6)


@pytest.mark.parametrize("answer", [
    "", "the ship", "(300,200),(120,40)", "(120,40),(120,200)", "[300,200,120,40]", "(1e9,1),(2,3)",
    "(99999999999,40),(300,200)", "[nan, nan, nan, nan]", "[inf, 0, 1000, 1000]", "(120,40),(300",
    "<|box_start|>(a,b),(c,d)<|box_end|>",
])
def test_ground_bad_boxes_score_zero(answer):
  assert one("accuracy", wrap(answer), GROUND) == 0.0
  assert one("iou_threshold", wrap(answer), GROUND) == 0.0


def test_ground_truth_from_answer_text_when_boxes_missing():
  e = {**GROUND, "boxes": None}
  assert one("accuracy", wrap("(120,40),(300,200)"), e) == pytest.approx(1.0)
  assert one("accuracy", wrap("(500,500),(900,900)"), e) == 0.0
  assert one("accuracy", wrap("(120,40),(300,200)"), {**e, "width": None}) == 0.0  # no size: no truth


def test_ground_first_box_counts():
  assert one("accuracy", wrap("(500,500),(900,900) (120,40),(300,200)"), GROUND) == 0.0
  assert one("accuracy", wrap("(120,40),(300,200) (500,500),(900,900)"), GROUND) == pytest.approx(1.0)


def test_box_distance_against_numpy():
  """1 - |centre_pred - centre_true| / (reach * diagonal), clipped to [0, 1], from the pixel boxes."""
  def expected(pred_grid, reach=0.5):
    pred = np.asarray(pred_grid, float) * [W, H, W, H] / 1000
    d = np.linalg.norm((pred[:2] + pred[2:]) / 2 - (np.add(TRUE_BOX[:2], TRUE_BOX[2:])) / 2)
    return float(np.clip(1 - d / (reach * np.hypot(W, H)), 0, 1))
  for grid in ([120, 40, 300, 200], [150, 40, 330, 200], [600, 500, 700, 600], [900, 900, 1000, 1000]):
    text = wrap(f"({grid[0]},{grid[1]}),({grid[2]},{grid[3]})")
    assert one("box_distance", text, GROUND) == pytest.approx(expected(grid), abs=1e-9)
    assert one("box_distance", text, GROUND, reach=0.25) == pytest.approx(expected(grid, 0.25), abs=1e-9)
  assert one("box_distance", wrap("(120,40),(300,200)"), GROUND) == pytest.approx(1.0)
  assert one("box_distance", wrap("(900,900),(1000,1000)"), GROUND, reach=0.1) == 0.0  # beyond reach
  shifted = one("box_distance", wrap("(150,40),(330,200)"), GROUND)  # IoU < 1, still close: between 0 and 1
  assert 0.0 < shifted < 1.0 and one("accuracy", wrap("(600,500),(700,600)"), GROUND) == 0.0 < one(
      "box_distance", wrap("(600,500),(700,600)"), GROUND)  # dense where IoU is 0
  assert one("box_distance", wrap("no box here"), GROUND) == 0.0
  assert one("box_distance", wrap("(120,40),(300,200)"), ex("vqa_presence", "yes")) == 0.0  # not grounding
  for fmt in ("qwen1000", "pixels"):  # no image size: no diagonal to measure against
    assert one("box_distance", wrap("(120,40),(300,200)"), {**GROUND, "width": None}, box_format=fmt) == 0.0
  with pytest.raises(ValueError, match="reach"):
    one("box_distance", wrap("(120,40),(300,200)"), GROUND, reach=0)


def test_iou_threshold_boundary():
  # Widen the box to the right keeping height: IoU = 180 / new_width on the grid.
  def score(x2, **kw):
    return one("iou_threshold", wrap(f"(120,40),({x2},200)"), GROUND, **kw)
  assert score(480) == 1.0  # IoU = 180/360 = 0.5 exactly: counts as a hit (>=)
  assert score(481) == 0.0  # just below 0.5
  assert score(481, threshold=0.4) == 1.0
  assert one("iou_threshold", wrap("yes"), ex("vqa_presence", "yes")) == 0.0  # not a grounding example
  with pytest.raises(ValueError, match="threshold"):
    score(480, threshold=1.5)


# ---------------------------------------------------------------- overlong


@pytest.mark.parametrize("length,truncated,expected", [
    (0, False, 0.0), (100, False, 0.0), (192, False, 0.0),  # L_max 256, L_cache 64: free up to 192
    (224, False, -0.5), (200, False, -8 / 64), (256, False, -1.0),
    (257, False, -1.0), (10_000, False, -1.0),
    (256, True, -1.0), (100, True, 0.0),
])
def test_overlong_regimes(length, truncated, expected):
  e = {"completion_length": length, "max_completion_length": 256, "truncated": truncated}
  assert one("overlong", "x", e) == pytest.approx(expected)


def test_overlong_options_and_missing():
  e = {"completion_length": 150, "max_completion_length": 200}
  assert one("overlong", "", e) == 0.0  # cache 50: free up to 150
  assert one("overlong", "", e, cache_length=100) == pytest.approx(-0.5)
  assert one("overlong", "", e, cache_length=0) == 0.0  # hard limit only
  assert one("overlong", "", {**e, "completion_length": 201}, cache_length=0) == -1.0
  assert one("overlong", "", {}) == 0.0
  assert builtin.overlong_penalty(224, 256) == -0.5 and builtin.overlong_penalty(224, 256, cache_length=1000) == (
      pytest.approx(-224 / 256))  # a cache longer than L_max is capped at L_max
  assert one("overlong", "", {"completion_length": np.int32(190), "max_completion_length": np.int64(200)}) == (
      pytest.approx(-0.8))
  assert one("overlong", "", {"completion_length": float("nan"), "max_completion_length": 200}) == 0.0
  assert one("overlong", "", {"completion_length": 200, "max_completion_length": 200, "truncated": np.True_}) == -1


# ---------------------------------------------------------------- gold completions of the synthetic data


def test_synthetic_cot_completions_score_full_marks():
  from tinyrs_jax.data import synthetic
  seen = set()
  for index in range(12):
    scene = synthetic.make_scene(0, index)
    for record in synthetic.scene_records(scene, 0, "cot", f"images/{index}.png", "train"):
      if record["task"] == "caption":
        continue
      gold = record["conversations"][-1]["value"]
      meta = {k: record.get(k) for k in ("task", "answer", "boxes", "width", "height")}
      assert one("format", gold, meta) == 1.0, gold
      # Tiny synthetic vehicles (8 x 4 px) lose a few IoU points to the 0-1000 grid; the rest is exact.
      assert one("accuracy", gold, meta) > (0.9 if record["task"] == "ground" else 0.999), (record["task"], gold)
      seen.add(record["task"])
  assert {"classify", "vqa_presence", "vqa_count", "vqa_compare", "ground"} <= seen


# ---------------------------------------------------------------- registry and compute_rewards


def test_builtins_registered():
  assert {"format", "accuracy", "iou_threshold", "box_distance", "overlong"} <= set(rw.reward_names())
  with pytest.raises(KeyError, match="accuracy"):  # the message lists the known names
    rw.get_reward("acuracy")


def test_compute_rewards_weights_and_components():
  completions = [wrap("airport"), "airport", wrap("forest")]
  examples = [ex("classify", "airport")] * 3
  total, parts = rw.compute_rewards(completions, examples, {"accuracy": 1.0, "format": 0.5, "overlong": 0.0})
  assert set(parts) == {"accuracy", "format"}  # zero weight: not computed
  assert total.dtype == np.float32 and total.shape == (3,)
  np.testing.assert_allclose(parts["accuracy"], [1, 1, 0])
  np.testing.assert_allclose(parts["format"], [1, 0, 1])
  np.testing.assert_allclose(total, [1.5, 1.0, 0.5])
  total, parts = rw.compute_rewards(completions, examples, {"format": 1.0}, options={"format": {"think_tag": "x"}})
  np.testing.assert_allclose(total, [0, 0, 0])
  empty, _ = rw.compute_rewards([], [], {"accuracy": 1.0})
  assert empty.shape == (0,)


def test_compute_rewards_validation():
  with pytest.raises(KeyError, match="format"):
    rw.compute_rewards(["x"], [{}], {"nope": 1.0})
  with pytest.raises(KeyError, match="nope"):
    rw.compute_rewards(["x"], [{}], {"format": 1.0}, options={"nope": {}})
  with pytest.raises(ValueError, match="nonzero"):
    rw.compute_rewards(["x"], [{}], {"format": 0.0})
  with pytest.raises(ValueError, match="finite"):
    rw.compute_rewards(["x"], [{}], {"format": float("nan")})
  with pytest.raises(ValueError, match="examples"):
    rw.compute_rewards(["x", "y"], [{}], {"format": 1.0})
  with pytest.raises(ValueError, match="'accuracy'.*unexpected keyword"):
    rw.compute_rewards(["x"], [{}], {"accuracy": 1.0}, options={"accuracy": {"bogus": 1}})


USER_MODULE = textwrap.dedent("""
    from tinyrs_jax.rewards import register_reward

    @register_reward("test_user_length")
    def length(completions, examples, scale=1.0):
      return [min(len(c) / 10.0, 1.0) * scale for c in completions]

    @register_reward("test_user_short")
    def short(completions, examples):
      return [1.0]

    @register_reward("test_user_nan")
    def nan(completions, examples):
      return [float("nan")] * len(completions)

    @register_reward("test_user_raises")
    def raises(completions, examples):
      raise ZeroDivisionError("boom")
""")


def test_user_reward_module(tmp_path, monkeypatch):
  (tmp_path / "my_rewards_for_test.py").write_text(USER_MODULE)
  (tmp_path / "broken_rewards_for_test.py").write_text("import definitely_not_a_module\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  [module] = rw.load_reward_modules(" my_rewards_for_test, ")
  assert module.__name__ == "my_rewards_for_test"
  assert rw.load_reward_modules(["my_rewards_for_test"]) == [module]  # idempotent
  assert {"test_user_length", "test_user_nan"} <= set(rw.reward_names())
  total, parts = rw.compute_rewards(["12345", "x" * 50], [{}, {}], {"test_user_length": 2.0, "format": 1.0},
                                    options={"test_user_length": {"scale": 0.5}})
  np.testing.assert_allclose(parts["test_user_length"], [0.25, 0.5])
  np.testing.assert_allclose(total, [0.5, 1.0])
  with pytest.raises(ValueError, match="'test_user_short'.*shape"):
    rw.compute_rewards(["a", "b"], [{}, {}], {"test_user_short": 1.0})
  with pytest.raises(ValueError, match="'test_user_nan'.*non-finite"):
    rw.compute_rewards(["a"], [{}], {"test_user_nan": 1.0})
  with pytest.raises(ValueError, match="'test_user_raises'.*ZeroDivisionError: boom"):
    rw.compute_rewards(["a"], [{}], {"test_user_raises": 1.0})
  with pytest.raises(ImportError, match="broken_rewards_for_test"):
    rw.load_reward_modules("broken_rewards_for_test")
  with pytest.raises(ImportError, match="no_such_reward_module"):
    rw.load_reward_modules(["no_such_reward_module"])


def test_register_conflicts():
  with pytest.raises(ValueError, match="already registered"):
    rw.register_reward("format")(lambda completions, examples: [0.0] * len(completions))
  with pytest.raises(ValueError, match="non-empty"):
    rw.register_reward("")


def test_import_is_host_only():
  code = ("import sys, tinyrs_jax.rewards as r; assert 'accuracy' in r.reward_names(); "
          "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'torch', 'flax')]; print('BAD', bad)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "BAD []" in out.stdout


# ---------------------------------------------------------------- fuzzing: every reward, any text

FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "<reasoning>", "</reasoning>", "<|box_start|>",
             "<|box_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "(", ")", "[", "]", ",", ".", "-", " ",
             "\n", "0", "1", "5", "999", "1000", "99999999", "1e309", "nan", "inf", "yes", "no", "three",
             "airport", "é", "٣", "²", "\x00", "\U0001F6F0"]
TEXTS = st.one_of(st.text(max_size=200), st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join))
EXAMPLES = [GROUND, {**GROUND, "boxes": []}, ex("classify", "airport"), ex("vqa_presence", "yes"),
            ex("vqa_count", "3"), ex("vqa_count", "between 11 and 100"), ex("caption"), {},
            {"task": "ground", "answer": "(1,2),(3", "width": 0, "height": None},
            {"task": "ground", "boxes": [{"box": [float("nan"), 0, 1, 1]}], "answer": TRUE_TEXT, "width": W,
             "height": H, "completion_length": 10 ** 30, "max_completion_length": 7, "truncated": True}]


@settings(max_examples=300, deadline=None)
@given(TEXTS)
def test_fuzz_every_reward(text):
  for name in ("format", "accuracy", "iou_threshold", "box_distance", "overlong"):
    for options in ({}, {"box_format": "pixels"}, {"box_format": "norm1"}) if name in (
        "accuracy", "iou_threshold", "box_distance") else ({},):
      values = reward(name, [text] * len(EXAMPLES), EXAMPLES, **options)
      for v in values:
        assert math.isfinite(v)
        assert (-1.0 <= v <= 0.0) if name == "overlong" else (0.0 <= v <= 1.0)
  total, parts = rw.compute_rewards([text], [GROUND], {"format": 1, "accuracy": 1, "iou_threshold": 1,
                                                        "box_distance": 1, "overlong": 1})
  assert np.isfinite(total).all()


@settings(max_examples=200, deadline=None)
@given(TEXTS)
def test_fuzz_parsers(text):
  assert isinstance(scoring.normalize_answer(text), str)
  assert scoring.parse_yes_no(text) in ("yes", "no", None)
  n = scoring.parse_int(text)
  assert n is None or (isinstance(n, int) and 0 <= n < 10 ** 15)
  for fmt in scoring.BOX_FORMATS:
    box = scoring.parse_box(text, W, H, fmt)
    assert box is None or (all(math.isfinite(v) for v in box) and box[0] < box[2] and box[1] < box[3])
  span = scoring.answer_span(text)
  assert isinstance(span, str) and span in text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-5, 1100), min_size=4, max_size=4), st.integers(1, 4000), st.integers(1, 4000))
def test_fuzz_ground_iou_in_range_and_exact_box_high(coords, width, height):
  e = {"task": "ground", "boxes": [{"label": "x", "box": [10, 10, 0.6 * width, 0.7 * height]}],
       "width": width, "height": height}
  v = one("accuracy", wrap("({},{}),({},{})".format(*coords)), e)
  assert 0.0 <= v <= 1.0
  exact = bx.box_to_text(e["boxes"][0]["box"], width, height)
  if width >= 50 and height >= 50:
    assert one("accuracy", wrap(exact), e) > 0.95
