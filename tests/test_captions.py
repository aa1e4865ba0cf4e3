"""Caption metrics: coco_tokenize against the Java PTBTokenizer's outputs, and caption_scores against hand-computed
BLEU / ROUGE-L and against pycocoevalcap's Cider called directly."""
import collections
import importlib.util
import math
import os
import random
import shutil
import subprocess
import sys

import pytest
from pycocoevalcap.cider.cider import Cider

from tinyrs_jax.evaluation import captions
from tinyrs_jax.evaluation.captions import PUNCTUATIONS, caption_scores, coco_tokenize

# (caption, what pycocoevalcap's PTBTokenizer returns for it): every expected string is the output of the
# CoreNLP 3.4.1 jar pycocoevalcap ships (test_coco_tokenize_matches_java reruns them when java is present).
TOKENIZE_CASES = [
    ("The image shows a large building, surrounded by trees.",
     "the image shows a large building surrounded by trees"),
    ("It's a building's roof; don't worry. They're here, we'll see, I'm sure.",
     "it 's a building 's roof do n't worry they 're here we 'll see i 'm sure"),
    ("Two-story houses, a 3.5-meter road and 1,000 cars; 10% of 3x3 grids... 45° angle.",
     "two-story houses a 3.5-meter road and 1,000 cars 10 % of 3x3 grids 45 ° angle"),
    # Java lower-cases -LRB- before pycocoevalcap compares it with its upper-case list: brackets stay words
    ("A river (blue) runs from the top-left [corner] to the {bottom}.",
     "a river -lrb- blue -rrb- runs from the top-left -lsb- corner -rsb- to the -lcb- bottom -rcb-"),
    ("\"Quoted\" 'single' buildings' roofs at 10:30, o'clock.",
     "quoted single buildings roofs at 10:30 o'clock"),
    ("Cars, trucks, etc. are parked near the U.S. embassy, e.g. on St. Mark's road.",
     "cars trucks etc. are parked near the u.s. embassy e.g. on st. mark 's road"),
    ("The runway is 2.5km long and 10m wide; there are -5 and +3 markings.",
     "the runway is 2.5 km long and 10m wide there are -5 and +3 markings"),
    ("It\u2019s a \u201ccurly\u201d \u2018quote\u2019 test \u2014 with an em dash \u2013 and an en dash.",
     "it 's a curly quote test with an em dash and an en dash"),
    ("What?! A cannot-miss view!! Isn't it great?",
     "what ?! a cannot-miss view !! is n't it great"),
    ("Roads and/or railways \u00bd of the area, 3 1/2 km away.",
     "roads and/or railways 1/2 of the area 3\u00a01/2 km away"),
    ("Grey centre, colour harbour.", "grey centre colour harbour"),  # no Americanisation in 3.4.1
    ("Area.The building", "area.the building"),
    ("Mass. and mass. Fig. 3 and the fig.", "mass. and mass fig. 3 and the fig"),
    # a single letter and a period ending a caption: "a" when the next caption starts with "The" (assumed)
    ("The building labeled A.", "the building labeled a"),
    ("   ", ""),
    ("", ""),
    ("...", ""),
]


@pytest.mark.parametrize("text,expected", TOKENIZE_CASES)
def test_coco_tokenize(text, expected):
  assert coco_tokenize(text) == expected


def test_coco_tokenize_newline_is_a_space_and_types():
  assert coco_tokenize("two planes\non the runway.") == "two planes on the runway"
  with pytest.raises(TypeError):
    coco_tokenize(None)


def _java_ptb(lines, tmp_path):
  """pycocoevalcap's PTBTokenizer pipeline, run on `lines` (one caption each) with the jar it ships."""
  import pycocoevalcap.tokenizer.ptbtokenizer as ptb
  jar = os.path.join(os.path.dirname(ptb.__file__), ptb.STANFORD_CORENLP_3_4_1_JAR)
  path = tmp_path / "captions.txt"
  path.write_bytes("\n".join(lines).encode())
  out = subprocess.run(["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                        "-lowerCase", str(path)], capture_output=True, check=True,
                       timeout=60 + len(lines) // 100).stdout.decode()
  return [" ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS)
          for line in out.split("\n")[:len(lines)]]


def _random_lines(n, seed=0):
  rng = random.Random(seed)
  words = ("the a image shows aerial view of large building roof roads river trees parking lot cars airport runway "
           "planes harbor grey centre residential area fields two 3 it's don't isn't they're I'm U.S. e.g. etc. "
           "vs. St. A B x km m ft 3.5 1,000 2.5km 10m 45\u00b0 90% 1/2 2-3 10:30 -5 3x3 two-story o'clock").split()
  punct = list(",.;:!?-()[]{}\"'/&*+=%") + ["...", "--", "\u2014", "\u2019", "\u201c", "\u201d", "\u2026"]
  lines = []
  for _ in range(n):
    toks = [rng.choice(words) if rng.random() < 0.75 else rng.choice(punct) for _ in range(rng.randint(1, 12))]
    lines.append("".join(t + rng.choice(["", " ", " ", " ", "  "]) for t in toks).strip())
  return lines


# Random lines compared with the jar: 300 in CI; `TINYRS_PTB_LINES=55000 python -m pytest tests/test_captions.py -k
# matches_java` reproduces the 55,000-line comparison (the same seed, the first 300 lines are CI's).
PTB_LINES = int(os.environ.get("TINYRS_PTB_LINES", "300"))


@pytest.mark.skipif(shutil.which("java") is None, reason="java is not on PATH (the Java PTBTokenizer comparison)")
def test_coco_tokenize_matches_java(tmp_path):
  texts = [t for t, _ in TOKENIZE_CASES] + _random_lines(PTB_LINES)
  # Each caption followed by one starting with "The": the next-line context coco_tokenize assumes.
  java = _java_ptb([x for t in texts for x in (t, "The end.")], tmp_path)[0::2]
  mismatches = [(t, j, coco_tokenize(t)) for t, j in zip(texts, java) if coco_tokenize(t) != j]
  assert not mismatches, mismatches[:5]


# ------------------------------------------------------------------------------------------------ BLEU
def _ngrams(tokens, n):
  return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _corpus_bleu(hyps, refs_list, max_n=4):
  """Corpus BLEU as pycocoevalcap's BleuScorer(option="closest") defines it, from token lists."""
  matches, counts = [0] * max_n, [0] * max_n
  hyp_len = ref_len = 0
  for hyp, refs in zip(hyps, refs_list):
    hyp_len += len(hyp)
    ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]  # closest length, ties -> shorter
    for n in range(1, max_n + 1):
      most = collections.Counter()
      for r in refs:
        most |= _ngrams(r, n)  # per n-gram, the largest count in any one reference
      matches[n - 1] += sum(min(c, most[g]) for g, c in _ngrams(hyp, n).items())
      counts[n - 1] += max(0, len(hyp) - n + 1)
  precisions = [(m + 1e-15) / (c + 1e-9) for m, c in zip(matches, counts)]
  bp = math.exp(1 - ref_len / hyp_len) if hyp_len < ref_len else 1.0
  bleus = [math.prod(precisions[:n]) ** (1 / n) * bp for n in range(1, max_n + 1)]
  return bleus, matches, counts, hyp_len, ref_len


BLEU_PREDS = ["Red car, on road.", "Planes on the runway now"]
BLEU_REFS = [["A red car is parked on the road.", "A red car near the road."],
             ["Planes on a runway.", "Two white planes on the runway."]]


def test_bleu_matches_hand_computation():
  hyps = [coco_tokenize(p).split() for p in BLEU_PREDS]
  refs = [[coco_tokenize(r).split() for r in rs] for rs in BLEU_REFS]
  assert hyps == [["red", "car", "on", "road"], ["planes", "on", "the", "runway", "now"]]
  bleus, matches, counts, hyp_len, ref_len = _corpus_bleu(hyps, refs)
  # By hand: closest reference lengths 6 (of 8, 6) and 4 (of 4, 6: a tie, the shorter one), so r = 10, c = 9;
  # clipped matches / n-grams for n = 1..4: 4/4 + 4/5, 1/3 + 3/4, 0/2 + 2/3, 0/1 + 1/2.
  assert (hyp_len, ref_len) == (9, 10)
  assert (matches, counts) == ([8, 4, 2, 1], [9, 7, 5, 3])
  expected4 = (8 / 9 * 4 / 7 * 2 / 5 * 1 / 3) ** 0.25 * math.exp(1 - 10 / 9)
  assert bleus[3] == pytest.approx(expected4, rel=1e-8)

  scores = caption_scores(BLEU_PREDS, BLEU_REFS)
  for n in range(4):
    assert scores[f"bleu{n + 1}"] == pytest.approx(bleus[n], rel=1e-8)
  assert scores["num_examples"] == 2


def test_identical_prediction_and_reference_score_one():
  caption = "The image shows a large white building with a parking lot and several cars next to a road."
  scores = caption_scores([caption], [[caption]])
  for n in range(1, 5):
    assert scores[f"bleu{n}"] == pytest.approx(1.0, abs=1e-6)
  assert scores["rouge_l"] == pytest.approx(1.0)
  assert scores["cider"] == 0.0  # CIDEr-D's document frequencies come from the corpus: one example scores 0


# ------------------------------------------------------------------------------------------------ ROUGE-L
def _lcs(a, b):
  table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
  for i, x in enumerate(a):
    for j, y in enumerate(b):
      table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
  return table[-1][-1]


def test_rouge_l_matches_hand_computation():
  pred, refs = "A red car on the road.", ["A red car is parked on the road.", "The road, near a car."]
  cand = coco_tokenize(pred).split()
  ref_tokens = [coco_tokenize(r).split() for r in refs]
  lcs = [_lcs(cand, r) for r in ref_tokens]
  assert lcs == [6, 2]  # "a red car on the road"; "the road" (or "a car")
  precision = max(l / len(cand) for l in lcs)  # 6/6
  recall = max(l / len(r) for l, r in zip(lcs, ref_tokens))  # 6/8
  beta = 1.2
  expected = (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)
  assert expected == pytest.approx(2.44 * 0.75 / (0.75 + 1.44))
  assert caption_scores([pred], [refs])["rouge_l"] == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------------------ CIDEr-D
CORPUS_PREDS = ["A large building surrounded by green trees.", "Two planes are parked on the runway.",
                "A river flows next to a road (and a bridge).", "Several cars in a parking lot.", ""]
CORPUS_REFS = [["A big building with trees around it.", "The image shows a large building and trees."],
               ["Two airplanes on the runway.", "There are two planes parked at the airport."],
               ["A river runs beside a road, crossed by a bridge."],
               ["Many cars are parked in a parking lot.", "A parking lot with several cars."],
               ["A harbor with ships."]]


def test_cider_wiring_matches_pycocoevalcap():
  gts = {i: [coco_tokenize(r) for r in refs] for i, refs in enumerate(CORPUS_REFS)}
  res = {i: [coco_tokenize(p)] for i, p in enumerate(CORPUS_PREDS)}
  expected, expected_each = Cider().compute_score(gts, res)
  scores = caption_scores(CORPUS_PREDS, CORPUS_REFS, per_example=True)
  assert scores["cider"] == pytest.approx(float(expected), rel=1e-12)
  assert scores["cider_per_example"] == pytest.approx([float(c) for c in expected_each], rel=1e-12)
  assert scores["cider_per_example"][-1] == 0.0  # the empty prediction: scored, 0, not dropped
  assert scores["num_examples"] == len(CORPUS_PREDS)
  assert "cider_per_example" not in caption_scores(CORPUS_PREDS, CORPUS_REFS)


def test_cider_d_hand_computed():
  """CIDEr-D from its definition, by hand, on two images with one reference each and no shared words (every
  n-gram's document frequency is 1 or 0, so every idf is log(2) - log(max(1, df)) = log 2 and the tf-idf vectors
  are log 2 times the n-gram counts; no length penalty, the lengths are equal):
    image 1, the prediction equals its reference: cosine 1 for n = 1..4 -> 10 * (1+1+1+1) / 4 = 10.
    image 2, "two planes at airport" for "two planes on runway": unigrams share 2 of 4 -> 2 / (2 * 2) = 1/2;
      bigrams share "two planes" of 3 -> 1/3; trigrams and 4-grams share none -> 10 * (1/2 + 1/3) / 4 = 25/12.
  Corpus CIDEr-D = (10 + 25/12) / 2 = 145/24."""
  scores = caption_scores(["Red roofs near trees.", "Two planes at airport."],
                          [["red roofs near trees"], ["two planes on runway"]], per_example=True)
  assert scores["cider_per_example"] == pytest.approx([10.0, 25 / 12], rel=1e-12)
  assert scores["cider"] == pytest.approx(145 / 24, rel=1e-12)


def test_cider_prefers_matching_captions():
  refs = ["a large building surrounded by trees", "two planes parked on the runway",
          "a river next to a road and a bridge", "several cars in a parking lot"]
  matched = caption_scores(refs, [[r] for r in refs])["cider"]
  mismatched = caption_scores(refs[1:] + refs[:1], [[r] for r in refs])["cider"]
  assert matched > 5.0 and mismatched < 1.0, (matched, mismatched)


# ------------------------------------------------------------------------------------------------ edges
def test_empty_predictions_are_scored_zero_and_nothing_is_printed(capsys):
  scores = caption_scores(["", ""], [["a ship in a harbor"], ["two planes"]], per_example=True)
  assert [scores[k] for k in ("bleu1", "bleu4", "rouge_l", "cider")] == pytest.approx([0, 0, 0, 0], abs=1e-6)
  assert scores["num_examples"] == 2 and scores["cider_per_example"] == [0.0, 0.0]
  caption_scores(BLEU_PREDS, BLEU_REFS)
  assert capsys.readouterr().out == ""  # pycocoevalcap's Bleu prints its totals when verbose


def test_bad_inputs():
  with pytest.raises(ValueError, match="at least one prediction"):
    caption_scores([], [])
  with pytest.raises(ValueError, match="2 predictions but 1 reference"):
    caption_scores(["a", "b"], [["a"]])
  with pytest.raises(TypeError, match=r"references\[0\] is a str"):
    caption_scores(["a car"], ["a car"])
  with pytest.raises(ValueError, match=r"references\[0\] is empty"):
    caption_scores(["a car"], [[]])
  with pytest.raises(ValueError, match=r"references\[1\] has no tokens"):
    caption_scores(["a car", "a ship"], [["a car"], ["...", "--"]])
  with pytest.raises(TypeError, match=r"predictions\[0\]"):
    caption_scores([None], [["a car"]])


def test_pretokenized_input():
  # tokenizer=None: strings are used as given (split on whitespace, rejoined with single spaces)
  assert caption_scores(["A red car."], [["a red car"]])["bleu1"] == pytest.approx(1.0)
  assert caption_scores(["A red car."], [["a red car"]], tokenizer=None)["bleu1"] < 0.5
  spaced = caption_scores(["two  planes"], [["two planes on the runway"]], tokenizer=None)
  assert spaced == caption_scores(["two planes"], [["two planes on the runway"]], tokenizer=None)


def test_imports_without_pycocoevalcap(monkeypatch):
  for name in [m for m in sys.modules if m == "pycocoevalcap" or m.startswith("pycocoevalcap.")]:
    monkeypatch.setitem(sys.modules, name, None)
  monkeypatch.setitem(sys.modules, "pycocoevalcap", None)
  spec = importlib.util.spec_from_file_location("_captions_without_pycocoevalcap", captions.__file__)
  fresh = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(fresh)  # the module itself imports without pycocoevalcap
  assert fresh.coco_tokenize("A car.") == "a car"
  with pytest.raises(ImportError, match=r'pip install -e "\.\[eval\]"'):
    fresh.caption_scores(["a car"], [["a car"]])


def test_punctuations_are_pycocoevalcaps():
  import pycocoevalcap.tokenizer.ptbtokenizer as ptb
  assert list(PUNCTUATIONS) == ptb.PUNCTUATIONS
