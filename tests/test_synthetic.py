"""The synthetic aerial-scene generator: determinism, coverage of every task, exact boxes, answers = facts."""
from __future__ import annotations

import filecmp
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tinyrs_jax.data import boxes as boxes_lib
from tinyrs_jax.data import readers, synthetic
from tinyrs_jax.data.records import SkipCounter

N, SEED = 24, 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("syn") / "a")
  synthetic.generate(out, N, SEED)
  return out


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_same_seed_same_bytes_via_cli(data_dir, tmp_path):
  other = str(tmp_path / "b")
  subprocess.run([sys.executable, "-m", "tinyrs_jax.data.synthetic", f"--out_dir={other}", f"--num_examples={N}",
                  f"--seed={SEED}"], check=True, capture_output=True,
                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert _files(data_dir) == _files(other)
  match, mismatch, errors = filecmp.cmpfiles(data_dir, other, _files(data_dir), shallow=False)
  assert not mismatch and not errors and len(match) == N + 13  # images + 12 JSONL files + info.json


def test_other_seed_differs_and_scene_does_not_depend_on_n(data_dir, tmp_path):
  synthetic.generate(str(tmp_path / "c"), 3, SEED + 1)
  a = open(os.path.join(data_dir, "images", "000000.png"), "rb").read()
  assert a != open(tmp_path / "c" / "images" / "000000.png", "rb").read()
  synthetic.generate(str(tmp_path / "d"), 2, SEED)
  assert a == open(tmp_path / "d" / "images" / "000000.png", "rb").read()


def test_layout_and_every_task_in_every_stage(data_dir):
  n_val, n_test = synthetic.num_val_scenes(N), synthetic.num_test_scenes(N)
  assert (n_val, n_test) == (2, 2)
  scenes_of = {}
  for stage in synthetic.STAGES:
    for split in synthetic.SPLITS:
      rows = _jsonl(os.path.join(data_dir, stage, f"{split}.jsonl"))
      # captions join the instruct and cot training data only; held-out files ask the tasks
      extra = {"caption"} if stage in ("instruct", "cot") and split == "train" else set()
      assert {r["task"] for r in rows} == set(synthetic.STAGE_TASKS[stage]) | extra, (stage, split)
      for r in rows:
        assert r["image"].startswith("../images/") and r["conversations"][0]["value"].startswith("<image>\n")
        assert os.path.exists(os.path.join(data_dir, stage, r["image"]))
        assert r["id"].startswith(f"{stage}-{split}-")
      scenes = {r["image"] for r in rows}
      assert len(scenes) == {"train": N - n_val - n_test, "val": n_val, "test": n_test}[split]
      scenes_of.setdefault(split, set()).update(scenes)
    recs = readers.load_records("llava", os.path.join(data_dir, stage, "train.jsonl"), skips=SkipCounter(strict=True),
                                require_assistant=stage != "grpo")
    assert recs and all(r.task in set(synthetic.STAGE_TASKS[stage]) | {"caption"} for r in recs)
  assert len(os.listdir(os.path.join(data_dir, "images"))) == N
  # the splits are disjoint sets of scenes, test last: nothing tuned on val sees a test image
  assert not (scenes_of["train"] & scenes_of["val"]) and not (scenes_of["val"] & scenes_of["test"])
  assert not (scenes_of["train"] & scenes_of["test"])
  assert max(scenes_of["val"]) < min(scenes_of["test"])
  assert [synthetic.split_of(i, 2000) for i in (0, 1599, 1600, 1799, 1800, 1999)] == [
      "train", "train", "val", "val", "test", "test"]  # the demo's 1600 / 200 / 200


def test_stage_formats(data_dir):
  cot = [r for r in _jsonl(os.path.join(data_dir, "cot", "train.jsonl")) if r["task"] != "caption"]
  for r in cot:
    m = re.fullmatch(r"<think>(.+?)</think><answer>(.+?)</answer>", r["conversations"][1]["value"], re.DOTALL)
    assert m and m.group(2) == r["answer"]
    assert "<think>" in r["conversations"][0]["value"]
  grpo = _jsonl(os.path.join(data_dir, "grpo", "train.jsonl"))
  assert all(len(r["conversations"]) == 1 and r["answer"] for r in grpo)
  assert all("<answer>" in r["conversations"][0]["value"] for r in grpo)
  for r in _jsonl(os.path.join(data_dir, "pretrain", "train.jsonl")):
    assert r["answer"] is None and len(r["conversations"][1]["value"].split()) > 15


def test_objects_drawn_exactly_in_their_boxes():
  for index in range(40):
    scene = synthetic.make_scene(SEED, index)
    image = synthetic.render(scene)
    changed = np.any(image != scene.background, axis=-1)
    inside = np.zeros_like(changed)
    for o in scene.objects:
      x1, y1, x2, y2 = o.box
      assert 0 <= x1 < x2 <= scene.width and 0 <= y1 < y2 <= scene.height
      inside[y1:y2, x1:x2] = True
      region = changed[y1:y2, x1:x2]
      alpha = o.sprite[..., 3] > 0
      # Drawn pixels are the shape's, they differ from the ground, and the shape fills a fair part of the box.
      assert not (region & ~alpha).any() and region[alpha].mean() > 0.9 and alpha.mean() > 0.2, (index, o.kind)
      # The shape touches all four sides of its box (the box is tight).
      assert alpha[0].any() and alpha[-1].any() and alpha[:, 0].any() and alpha[:, -1].any(), (index, o.kind)
    assert not changed[~inside].any()  # nothing drawn outside the boxes
    for a in scene.objects:  # no overlaps
      for b in scene.objects:
        if a is not b:
          assert boxes_lib.iou(a.box, b.box) == 0


def test_answers_match_scene_facts(data_dir):
  scenes = {i: synthetic.make_scene(SEED, i) for i in range(N)}
  checked = set()
  for stage in ("instruct", "cot", "grpo"):
    for split in synthetic.SPLITS:
      for r in _jsonl(os.path.join(data_dir, stage, f"{split}.jsonl")):
        if r["task"] == "caption":
          continue  # captions: test_captions_mention_counts
        scene = scenes[int(r["image"].split("/")[-1][:-4])]
        assert (r["width"], r["height"]) == (scene.width, scene.height)
        png = Image.open(os.path.join(data_dir, stage, r["image"]))
        assert png.size == (scene.width, scene.height)
        question = r["conversations"][0]["value"]
        task, answer = r["task"], r["answer"]
        checked.add(task)
        if task == "classify":
          assert answer == scene.scene_class and all(c in question for c in synthetic.SCENE_CLASSES)
          continue
        kinds = [k for k in synthetic.OBJECT_KINDS if f" {synthetic.PLURALS[k]} " in question + " "
                 or f" {k} " in question]
        if task == "vqa_count":
          (kind,) = kinds
          assert answer == str(scene.count(kind))
          assert sorted(tuple(b["box"]) for b in r["boxes"]) == sorted(o.box for o in scene.of_kind(kind))
        elif task == "vqa_presence":
          (kind,) = kinds
          assert answer == ("yes" if scene.count(kind) else "no")
        elif task == "vqa_compare":
          m = re.search(r"more (.+?) than (.+?) in", question)
          a, b = (k for p in m.groups() for k in synthetic.OBJECT_KINDS if synthetic.PLURALS[k] == p)
          assert answer == ("yes" if scene.count(a) > scene.count(b) else "no")
        elif task == "ground":
          ((label, parsed),) = boxes_lib.parse_boxes(answer)
          (target,) = r["boxes"]
          obj = next(o for o in scene.objects if list(o.box) == target["box"])
          assert label.endswith(obj.kind) or label.startswith(f"the {obj.kind} nearest")
          assert answer == boxes_lib.box_to_text(obj.box, scene.width, scene.height, label=label)
          assert label in question
        for b in r.get("boxes", []):
          x1, y1, x2, y2 = b["box"]
          assert 0 <= x1 < x2 <= scene.width and 0 <= y1 < y2 <= scene.height
  assert checked == {"classify", "vqa_presence", "vqa_count", "vqa_compare", "ground"}


def _captions(data_dir, stage):
  return [r for r in _jsonl(os.path.join(data_dir, stage, "train.jsonl")) if r["task"] == "caption"]


def test_captions_mention_counts(data_dir):
  for r in _captions(data_dir, "pretrain")[:10] + _captions(data_dir, "instruct")[:5] + _captions(data_dir, "cot")[:5]:
    scene = synthetic.make_scene(SEED, int(r["image"].split("/")[-1][:-4]))
    text = r["conversations"][1]["value"]
    assert scene.scene_class in text
    for kind in synthetic.OBJECT_KINDS:
      n = scene.count(kind)
      if n:
        assert f"{synthetic.NUMBER_WORDS[n]} {kind if n == 1 else synthetic.PLURALS[kind]}" in text.lower()


def test_class_balance_and_presence_balance():
  classes = [synthetic.make_scene(0, i).scene_class for i in range(400)]
  counts = {c: classes.count(c) for c in synthetic.SCENE_CLASSES}
  assert min(counts.values()) > 25, counts


def test_instruct_and_cot_train_on_plain_captions_too(data_dir):
  """As the real recipe's instruct data does: a caption for every CAPTION_EVERY-th training scene, asked and
  answered plainly (no reasoning turn) in both stages, so that the tasks do not make the model forget them."""
  train_scenes = N - synthetic.num_val_scenes(N) - synthetic.num_test_scenes(N)
  for stage in ("instruct", "cot"):
    caps = _captions(data_dir, stage)
    assert len(caps) == len(range(0, train_scenes, synthetic.CAPTION_EVERY)), stage
    for r in caps:
      assert r["answer"] is None and len(r["conversations"]) == 2
      assert "<think>" not in r["conversations"][0]["value"] + r["conversations"][1]["value"]
      assert r["conversations"][0]["value"].split("\n", 1)[1] in synthetic.CAPTION_PROMPTS


def test_comparison_reasoning_says_zero_not_no(data_dir):
  """A count of 0 in the comparison's reasoning is the number "zero": it said "I count the buildings: no." """
  seen_zero = False
  for r in _jsonl(os.path.join(data_dir, "cot", "train.jsonl")):
    if r["task"] != "vqa_compare":
      continue
    scene = synthetic.make_scene(SEED, int(r["image"].split("/")[-1][:-4]))
    counts = re.findall(r"I count the (.+?): (\w+)\.", r["conversations"][1]["value"])
    assert len(counts) == 2, r["conversations"][1]["value"]
    for plural, word in counts:
      kind = next(k for k in synthetic.OBJECT_KINDS if synthetic.PLURALS[k] == plural)
      assert word == synthetic.COUNT_WORDS[scene.count(kind)]
      seen_zero |= word == "zero"
  assert seen_zero


def test_small_objects_visible_at_the_demo_budget():
  """At the demo's 112² pixel budget every object is several pixels across (vehicles were 3 px, tanks 5)."""
  smallest = {}
  for index in range(150):
    scene = synthetic.make_scene(0, index)
    f = 112 / min(scene.width, scene.height)  # the demo's resize (max_pixels 112²) of the shorter side, about
    for o in scene.objects:
      side = min(o.box[2] - o.box[0], o.box[3] - o.box[1]) * f
      smallest[o.kind] = min(smallest.get(o.kind, 1e9), side)
  assert smallest["vehicle"] >= 3.9 and smallest["storage tank"] >= 9, smallest


def test_demo_evaluation_reads_the_split_asked_for(tmp_path, monkeypatch):
  """configs/eval.py:demo evaluates the validation split unless data.demo_split says test (launch/demo.sh's
  reported table); the benchmark files follow the split, so the fingerprint does too."""
  import importlib.util
  from tinyrs_jax.evaluation import evaluator
  monkeypatch.setenv("TINYRS_CACHE", str(tmp_path))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location("_eval_cfg", os.path.join(root, "configs", "eval.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  paths = {}
  for split in ("", "val", "test"):
    c = module.get_config("demo")
    c.data.demo_examples = 6
    if split:
      c.data.demo_split = split
    evaluator.demo_assets(c)
    paths[split] = (c.benchmarks.synthetic.path, c.benchmarks.synthetic_caption.path)
  assert paths[""] == paths["val"]
  assert paths["val"][0].endswith(os.path.join("instruct", "val.jsonl"))
  assert paths["test"] == tuple(p.replace("val.jsonl", "test.jsonl") for p in paths["val"])
  ids = {r["id"].split("-")[1] for r in _jsonl(paths["test"][0]) + _jsonl(paths["test"][1])}
  assert ids == {"test"}
  c = module.get_config("demo")
  c.data.demo_examples, c.data.demo_split = 6, "tset"
  with pytest.raises(ValueError, match="demo_split"):
    evaluator.demo_assets(c)
