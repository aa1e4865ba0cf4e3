"""The evaluation's two rule sets and its metrics, on hand-computed cases (tinyrs_jax/evaluation/rules.py,
metrics.py): what each rule set calls correct, Acc@0.5/0.7 at their boundaries, the size buckets at their
thresholds, grounding denominators, multiple choice, and the aggregation's counts."""
import pytest

from tinyrs_jax.evaluation import metrics, rules


def ex(task, answer=None, **kw):
  return {"task": task, "answer": answer, **kw}


@pytest.mark.parametrize("output,answer,strict,tinyrs", [
    ("residential", "residential", True, True),
    ("Residential.", "residential", True, True),
    ("<think>grey roofs</think><answer>airport</answer>", "airport", True, True),
    ("", "dense residential", False, True),  # tinyrs: the empty string is a substring of every answer
    ("residential", "dense residential", False, True),  # tinyrs: a partial name is a substring
    ("airport, because of the runway", "airport", False, True),  # tinyrs: cut at the first comma
    ("airport. It has a runway", "airport", False, True),  # tinyrs: cut at the first period
    ("<reasoning>a runway so airport", "airport", False, False),  # unclosed: graded whole in both
    ("<reasoning>runway</reasoning>airport", "airport", True, True),  # the original's tag
    ("<think>runway</think> airport", "airport", True, True),
    ("Dense Residential", "dense residential", True, True),
    ("forest", "airport", False, False),
    ("Airport\n", "airport", True, True),  # stripped
    ("<answer>Airport", "airport", False, True),  # tinyrs: an unclosed answer tag runs to the end
    ("<reasoning>runway</reasoning>\n<answer>Airport</answer>", "airport", True, True),
])
def test_classify_rules(output, answer, strict, tinyrs):
  row = rules.score(output, ex("classify", answer))
  assert row["correct_strict"] is strict
  assert row["correct_tinyrs"] is tinyrs


@pytest.mark.parametrize("task,output,answer,strict,tinyrs", [
    ("vqa_presence", "Yes, there is one.", "yes", True, True),
    ("vqa_presence", "yes and no", "yes", False, False),  # strict: hedging; tinyrs: 'yesandno' not in 'yes'
    ("vqa_presence", "n", "no", False, True),
    ("vqa_presence", "", "no", False, True),
    ("vqa_count", "3 ships", "3", True, False),  # tinyrs: '3ships' is not a substring of '3'
    ("vqa_count", "1", "10", False, True),  # tinyrs: '1' is a substring of '10'
    ("vqa_count", "three", "3", True, False),
    ("vqa_rural_urban", "Urban", "urban", True, True),
])
def test_vqa_rules(task, output, answer, strict, tinyrs):
  row = rules.score(output, ex(task, answer))
  assert row["correct_strict"] is strict
  assert row["correct_tinyrs"] is tinyrs


@pytest.mark.parametrize("output,strict,tinyrs", [
    ("B", True, True), ("(B) forest", True, False), ("b", True, True), ("Answer: B", True, False),
    ("forest", True, True),  # strict: exactly one option's text; tinyrs: 'forest' is in 'bforest' ("B. forest")
    ("", False, True), ("A", False, False), ("a forest", False, False),
    ("E", False, True),  # tinyrs: 'e' is a substring of 'bforest'
    ("B, forest", True, False),  # tinyrs: no comma cut for LHRS-Bench; 'b,forest' is not in 'bforest'
])
def test_multiple_choice_rules(output, strict, tinyrs):
  # the reference as the original's files write it: the reader's raw answer, else "<letter>. <option>"
  row = rules.score(output, ex("mc", "B", extra={"choices": ["water", "forest", "desert", "farmland"]}))
  assert row["correct_strict"] is strict
  assert row["correct_tinyrs"] is tinyrs


def ground(pred_text, truth=(0, 0, 100, 100)):
  # a 1000 x 1000 image: Qwen's 0-1000 grid is the pixel grid
  return rules.score(pred_text, ex("ground", boxes=[{"label": "x", "box": list(truth)}], width=1000, height=1000))


def test_grounding_iou_boundaries():
  half = ground("<|box_start|>(0,0),(100,50)<|box_end|>")  # IoU exactly 0.5
  assert half["iou"] == pytest.approx(0.5) and half["correct_strict"] and half["correct_tinyrs"]
  below = ground("<|box_start|>(0,0),(100,49)<|box_end|>")
  assert below["iou"] == pytest.approx(0.49) and not below["correct_strict"]
  assert ground("(0,0),(100,70)")["iou"] == pytest.approx(0.7)
  rows = [dict(r, task="ground", index=i) for i, r in enumerate(
      [half, below, ground("(0,0),(100,70)"), ground("(0,0),(100,69)")])]
  m = metrics.aggregate(rows)
  assert m["ground/acc@0.5"]["strict"] == pytest.approx(3 / 4)
  assert m["ground/acc@0.7"]["strict"] == pytest.approx(1 / 4)
  assert m["ground/miou"]["strict"] == pytest.approx((0.5 + 0.49 + 0.7 + 0.69) / 4)


def test_no_plus_one_convention():
  # with a +1 convention this would be (11*11)/(21*11) = 0.524 -> a hit; without it, 10*10/(20*10) = 0.5
  r = rules.score("(0,0),(20,10)", ex("ground", boxes=[{"label": "x", "box": [0, 0, 10, 10]}], width=1000,
                                       height=1000))
  assert r["iou"] == pytest.approx(0.5)


def test_box_scaling_to_pixels():
  # 0-1000 grid -> pixels of an 800 x 400 image
  r = rules.score("(100,100),(500,500)", ex("ground", boxes=[{"label": "x", "box": [80, 40, 400, 200]}],
                                             width=800, height=400))
  assert r["pred_box"] == [80, 40, 400, 200] and r["iou"] == pytest.approx(1.0)


@pytest.mark.parametrize("side,bucket", [(32, "small"), (None, "medium"), (96, "medium"), (97, "large")])
def test_size_buckets_at_thresholds(side, bucket):
  box = (0, 0, side, side) if side else (0, 0, 1025, 1)  # area 1025: just above small
  assert rules.size_bucket(box) == bucket
  assert rules.size_bucket((0, 0, 1024, 1)) == "small"
  assert rules.size_bucket((0, 0, 9216, 1)) == "medium" and rules.size_bucket((0, 0, 9217, 1)) == "large"


def test_unparseable_box_strict_miss_tinyrs_dropped():
  rows = [dict(ground("(0,0),(100,100)"), task="ground"), dict(ground("I cannot tell"), task="ground"),
          dict(ground(""), task="ground"), dict(ground("(0,0),(100,20)"), task="ground")]
  assert rows[1]["parsed"] is False and rows[1]["correct_strict"] is False and rows[1]["correct_tinyrs"] is None
  m = metrics.aggregate(rows)
  assert m["ground/acc@0.5"] == {"strict": 0.25, "tinyrs": 0.5, "n_strict": 4, "n_tinyrs": 2}
  assert m["ground/parsed"]["strict"] == 0.5
  assert m["ground/miou"]["strict"] == pytest.approx(1.2 / 4) and m["ground/miou"]["tinyrs"] == pytest.approx(0.6)


def test_size_bucket_metrics():
  rows = []
  for i, (truth, pred) in enumerate([((0, 0, 32, 32), "(0,0),(32,32)"), ((0, 0, 32, 32), "(0,0),(3,3)"),
                                     ((0, 0, 90, 90), "(0,0),(90,90)"), ((0, 0, 200, 200), "nothing")]):
    rows.append(dict(ground(pred, truth), task="ground", index=i))
  m = metrics.aggregate(rows)
  assert m["ground/acc@0.5/small"]["strict"] == 0.5 and m["ground/acc@0.5/small"]["n_strict"] == 2
  assert m["ground/acc@0.5/medium"]["strict"] == 1.0
  assert m["ground/acc@0.5/large"] == {"strict": 0.0, "tinyrs": 0.0, "n_strict": 1, "n_tinyrs": 0}


def test_aggregate_accuracy_tasks_and_types():
  rows = []
  for i, (task, out, ans, qt) in enumerate([("classify", "forest", "forest", []), ("classify", "", "water", []),
                                            ("vqa_presence", "yes", "yes", ["presence"]),
                                            ("vqa_compare", "no", "yes", ["comp"])]):
    rows.append({"index": i, "task": task, "question_types": qt, **rules.score(out, ex(task, ans))})
  rows.append({"index": 9, "task": "caption", **rules.score("a field", ex("caption"))})  # no accuracy
  m = metrics.aggregate(rows, caption_metrics=False)
  assert m["accuracy"] == {"strict": 0.5, "tinyrs": 0.75, "n_strict": 4, "n_tinyrs": 4}
  assert m["accuracy/classify"]["strict"] == 0.5 and m["accuracy/classify"]["tinyrs"] == 1.0
  assert m["type/presence"]["strict"] == 1.0 and m["type/comp"]["strict"] == 0.0
  assert "ground/acc@0.5" not in m


def test_confusion_counts():
  rows = [{"task": "classify", "reference": r, **rules.score(o, ex("classify", r))}
          for r, o in [("forest", "forest"), ("forest", "water"), ("water", "water"), ("water", "a lake")]]
  classes, cols, counts = metrics.confusion(rows)
  assert classes == ["forest", "water"] and cols == ["forest", "water", "other"]
  assert counts == [[1, 1, 0], [0, 1, 1]]


def test_markdown_table_lists_both_rule_sets():
  results = {"aid": {"metrics": {"accuracy": {"strict": 0.5, "tinyrs": 0.75, "n_strict": 4, "n_tinyrs": 4}}}}
  md = metrics.markdown_table(results)
  assert "| aid | accuracy | 0.5000 | 0.7500 | 4 |" in md and "strict" in md and "tinyrs" in md


def test_rules_never_raise_on_junk():
  for junk in (None, b"bytes", "<answer>", "</answer><answer>", "(" * 1000, "[1,2,3,4]" * 100, "\x00"):
    for task in ("classify", "vqa_count", "mc", "ground", "caption"):
      rules.score(junk, ex(task, "B" if task == "mc" else "3", boxes=[{"label": "x", "box": [0, 0, 5, 5]}],
                           width=10, height=10))


def test_multiple_choice_raw_reference():
  row = rules.score("3", ex("mc", "C", extra={"choices": ["1", "2", "3 ships"], "raw_answer": "C. 3 ships"}))
  assert row["correct_strict"] is False and row["correct_tinyrs"] is True


@pytest.mark.parametrize("output,tinyrs_iou", [
    ("(60,0),(0,100)", 0.0),  # reversed: the original reads it, IoU 0, a miss that counts
    ("<|box_start|>(0,0),(100,100)<|box_end|>", 1.0),
    ("(0,0),(100,100) then (0,0),(50,50)", 1.0),  # the first counts
    ("[0, 0, 50, 100]", 0.5),  # the reasoning models' list form, spaces allowed after commas
    ("(0.0,0.0),(100.0,50.0)", 0.5),  # decimals as written
    ("( 0,0),(100,100)", None),  # the original's grammar allows no spaces: dropped
    ("(-1,0),(100,100)", None),  # nor signs
    ("I cannot tell", None),
])
def test_tinyrs_column_reads_boxes_as_the_original(output, tinyrs_iou):
  row = ground(output)
  assert row["iou_tinyrs"] == (None if tinyrs_iou is None else pytest.approx(tinyrs_iou))
  assert row["correct_tinyrs"] == (None if tinyrs_iou is None else tinyrs_iou >= 0.5)


def test_reversed_box_counts_in_the_tinyrs_denominator():
  rows = [dict(ground(o), task="ground") for o in ("(0,0),(100,100)", "(100,100),(0,0)", "no box")]
  assert rows[1]["parsed"] is False and rows[1]["correct_strict"] is False  # strict: no valid box, a miss
  m = metrics.aggregate(rows)
  assert m["ground/acc@0.5"] == {"strict": 1 / 3, "tinyrs": 0.5, "n_strict": 3, "n_tinyrs": 2}


def test_first_box_in_text_order_counts():
  # a bare box written before a tagged one is the first (it was the tagged one before)
  row = ground("(0,0),(100,100) <|box_start|>(500,500),(600,600)<|box_end|>")
  assert row["iou"] == 1.0 and row["iou_tinyrs"] == 1.0


def test_decimal_grid_coordinates_kept():
  row = rules.score("(0,0),(100.4,100.4)", ex("ground", boxes=[{"label": "x", "box": [0, 0, 100, 100]}],
                                               width=1000, height=1000))
  assert row["pred_box"] == [0, 0, 100.4, 100.4]
  assert row["iou"] == pytest.approx(100 * 100 / (100.4 * 100.4))


def test_ground_without_a_true_box_is_unusable_not_a_miss():
  rows = [dict(ground("(0,0),(100,100)"), task="ground"),
          dict(rules.score("(0,0),(100,100)", ex("ground", width=1000, height=1000)), task="ground")]
  assert rows[1]["correct_strict"] is None and rows[1]["no_true_box"]
  m = metrics.aggregate(rows)
  assert m["ground/acc@0.5"]["n_strict"] == 1 and m["ground/acc@0.5"]["strict"] == 1.0
  assert metrics.unscored(rows) == {"no_true_box": 1}


def multi(output, truths):
  return dict(rules.score(output, ex("ground_multi", boxes=[{"label": "x", "box": list(t)} for t in truths],
                                     width=1000, height=1000)), task="ground_multi")


def test_ground_multi_one_to_one_matching():
  truths = [(0, 0, 100, 100), (200, 200, 300, 300), (500, 500, 600, 600)]
  # two predictions on the first truth (one may match), one on the second, one nowhere
  out = ("<|box_start|>(0,0),(100,100)<|box_end|><|box_start|>(0,0),(100,90)<|box_end|>"
         "<|box_start|>(200,200),(300,300)<|box_end|><|box_start|>(900,900),(950,950)<|box_end|>")
  row = multi(out, truths)
  assert (row["n_pred"], row["n_true"], row["matched"]) == (4, 3, 2)
  # a maximum matching, not a greedy one: p0 overlaps t0 and t1 at >= 0.5, p1 only t0
  assert rules.match_boxes([(0, 0, 10, 10), (0, 0, 10, 10)], [(0, 0, 10, 10), (0, 0, 10, 6)]) == 2
  assert rules.match_boxes([(0, 0, 10, 6), (0, 0, 10, 10)], [(0, 0, 10, 10), (50, 50, 60, 60)]) == 1
  rows = [row, multi("nothing", truths[:2]), multi("(0,0),(100,100)", truths[:1])]
  m = metrics.aggregate(rows)
  assert m["ground_multi/precision"] == {"strict": 3 / 5, "tinyrs": 3 / 5, "n_strict": 5, "n_tinyrs": 5}
  assert m["ground_multi/recall"] == {"strict": 3 / 6, "tinyrs": 3 / 6, "n_strict": 6, "n_tinyrs": 6}
  assert m["ground_multi/rows"]["strict"] == 3 and not metrics.unscored(rows)


def test_vrsbench_cumulative_iou_and_unique_split():
  # 1000 x 1000: pixels = grid. Areas: truth 100x100 = 10000 each.
  cases = [("(0,0),(100,100)", True),  # inter 10000, union 10000
           ("(0,0),(100,50)", False),  # inter 5000, union 10000
           ("nothing", False)]  # strict: inter 0, union 10000; tinyrs: dropped
  rows = [dict(ground(o), task="ground", unique=u) for o, u in cases]
  m = metrics.aggregate(rows)
  assert m["ground/cum_iou"] == {"strict": 15000 / 30000, "tinyrs": 15000 / 20000, "n_strict": 3, "n_tinyrs": 2}
  assert m["ground/miou"]["strict"] == pytest.approx(1.5 / 3)
  assert m["ground/acc@0.5/unique"]["strict"] == 1.0 and m["ground/acc@0.5/unique"]["n_strict"] == 1
  assert m["ground/acc@0.5/non_unique"] == {"strict": 0.5, "tinyrs": 1.0, "n_strict": 2, "n_tinyrs": 1}
  assert m["ground/cum_iou/non_unique"]["strict"] == 5000 / 20000


def test_unscored_rows_listed_in_results_md():
  rows = [{"task": "chat", **rules.score("hi", ex("chat"))}, {"task": "caption", **rules.score("x", ex("caption"))}]
  assert metrics.unscored(rows) == {"no_rule": 1, "no_reference": 1}
  md = metrics.markdown_table({"b": {"metrics": {}, "unscored": metrics.unscored(rows)}})
  assert "b: 1 tasks no rule scores" in md and "b: 1 records without a reference" in md


def test_fingerprints_cover_record_contents_and_scoring_version(monkeypatch):
  """An edited benchmark file (same number of records) changes the answers' fingerprint; a scoring change (the
  version constant or a scoring setting) changes the scores' fingerprint, which alone means re-scoring."""
  import dataclasses

  import ml_collections

  from tinyrs_jax.data.records import Record
  from tinyrs_jax.evaluation import results
  recs = [Record(id="a", image="x.png", messages=[{"role": "user", "content": "<image>What?"},
                                                   {"role": "assistant", "content": "forest"}],
                 task="classify", answer="forest")]
  digest = results.records_digest(recs)
  assert results.records_digest([dataclasses.replace(recs[0])]) == digest
  assert results.records_digest([dataclasses.replace(recs[0], answer="water")]) != digest
  assert results.records_digest([dataclasses.replace(recs[0], boxes=(("x", (0, 0, 1, 1)),))]) != digest
  cfg = ml_collections.ConfigDict(dict(answer_tag="answer", think_tags="think", box_format="qwen1000", batch_size=8))
  fp = results.scoring_fingerprint(cfg)
  assert results.scoring_fingerprint(ml_collections.ConfigDict(dict(cfg.to_dict(), batch_size=16))) == fp
  assert results.scoring_fingerprint(ml_collections.ConfigDict(dict(cfg.to_dict(), box_format="pixels"))) != fp
  monkeypatch.setattr(rules, "SCORING_VERSION", rules.SCORING_VERSION + 1)
  assert results.scoring_fingerprint(cfg) != fp
