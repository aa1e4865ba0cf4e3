"""Each reader on small fixture files written in the real format (built from literals in tmp_path)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from tinyrs_jax.data import readers
from tinyrs_jax.data.records import IMAGE_PLACEHOLDER, SkipCounter

BOX = "<|box_start|>"


def _png(path, w=100, h=80, color=(10, 120, 30)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((h, w, 3), color, np.uint8)).save(path)
  return path


def _strict():
  return SkipCounter(strict=True)


# ----------------------------------------------------------------------------------------------- LLaVA

LLAVA = [
    {"id": "P0003_0004", "image": "imgs/a.png",
     "conversations": [{"from": "human", "value": "<image>\nClassify the scene."},
                       {"from": "gpt", "value": "Airport"}]},
    {"id": "multi", "image": "imgs/a.png",
     "conversations": [{"from": "system", "value": "Be brief."},
                       {"from": "human", "value": "What is this?\n<image>"},
                       {"from": "gpt", "value": "A field."},
                       {"from": "human", "value": "Any ships?"},
                       {"from": "gpt", "value": "No."}]},
    {"id": "text-only", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]},
    {"id": "ours", "image": "imgs/a.png", "task": "ground", "answer": "x", "source_dataset": "demo",
     "boxes": [{"label": "ship", "box": [10, 20, 30, 40]}],
     "conversations": [{"from": "human", "value": "<image>\nFind the ship."}, {"from": "gpt", "value": "x"}]},
    {"id": "openai-style", "image": "imgs/a.png",
     "messages": [{"role": "user", "content": "<image>\nHi"}, {"role": "assistant", "content": "<think>a</think><answer>b</answer>"}]},
]


@pytest.mark.parametrize("layout", ["json", "jsonl"])
def test_llava(tmp_path, layout):
  _png(tmp_path / "imgs" / "a.png")
  path = tmp_path / f"data.{layout}"
  path.write_text(json.dumps(LLAVA) if layout == "json" else "\n".join(json.dumps(r) for r in LLAVA) + "\n")
  recs = readers.load_records("llava", str(path), skips=_strict())
  assert [r.id for r in recs] == ["P0003_0004", "multi", "text-only", "ours", "openai-style"]
  first = recs[0]
  assert first.image == str(tmp_path / "imgs" / "a.png")
  # The newline after <image> is dropped, so the vision block is directly followed by the text.
  assert first.messages == [{"role": "user", "content": "<image>Classify the scene."},
                            {"role": "assistant", "content": "Airport"}]
  assert first.task == "chat" and first.source == str(path) and first.line == 1
  multi = recs[1]
  assert [m["role"] for m in multi.messages] == ["system", "user", "assistant", "user", "assistant"]
  assert multi.messages[1]["content"] == "What is this?\n<image>"
  assert multi.prompt_messages == multi.messages[:4]
  assert recs[2].image is None
  ours = recs[3]
  assert ours.task == "ground" and ours.answer == "x" and ours.boxes == (("ship", (10.0, 20.0, 30.0, 40.0)),)
  assert ours.image_size == (100, 80) and ours.extra == {"source_dataset": "demo"}
  assert recs[4].task == "reason"  # think/answer targets with no task field


def test_llava_missing_placeholder_is_added(tmp_path):
  _png(tmp_path / "a.png")
  path = tmp_path / "d.json"
  path.write_text(json.dumps([{"image": "a.png", "conversations": [
      {"from": "human", "value": "Classify."}, {"from": "gpt", "value": "forest"}]}]))
  skips = _strict()
  (rec,) = readers.load_records("llava", str(path), skips=skips)
  assert rec.messages[0]["content"] == "<image>Classify." and skips.notes["added_image_placeholder"] == 1
  assert rec.id == "d.json:1"


def test_llava_image_root_and_lines(tmp_path):
  _png(tmp_path / "elsewhere" / "a.png")
  path = tmp_path / "d.jsonl"
  path.write_text("\n" + json.dumps({**LLAVA[0], "image": "a.png"}) + "\n")
  (rec,) = readers.load_records("llava", str(path), image_root=str(tmp_path / "elsewhere"), skips=_strict())
  assert rec.line == 2 and rec.image == str(tmp_path / "elsewhere" / "a.png")


# --------------------------------------------------------------------------------------------- GeoChat

def test_geochat(tmp_path):
  _png(tmp_path / "P0001.png", w=200, h=100)
  data = [
      {"id": "r", "image": "P0001.png", "conversations": [
          {"from": "human", "value": "<image>\n[refer] give me the location of <p>small vehicle</p>"},
          {"from": "gpt", "value": "{<10><20><30><40>|<45>}"}]},
      {"id": "g", "image": "P0001.png", "conversations": [
          {"from": "human", "value": "<image>\n[grounding] Describe the image in detail"},
          {"from": "gpt", "value": "Two <p>ships</p> {<0><0><10><10>|<0>}<delim>{<50><50><60><70>|<0>} are docked."}]},
      {"id": "i", "image": "P0001.png", "conversations": [
          {"from": "human", "value": "<image>\n[identify] What is this {<25><25><75><75>|<90>}"},
          {"from": "gpt", "value": "A storage tank."}]},
      {"id": "v", "image": "P0001.png", "conversations": [
          {"from": "human", "value": "<image>\nIs there a bridge?"}, {"from": "gpt", "value": "No"}]},
  ]
  path = tmp_path / "GeoChat_Instruct.json"
  path.write_text(json.dumps(data))
  skips = _strict()
  refer, ground, ident, plain = readers.load_records("geochat", str(path), skips=skips)
  assert refer.task == "ground" and refer.extra["geochat_tag"] == "refer"
  assert refer.messages[0]["content"] == ("<image>give me the location of "
                                          "<|object_ref_start|>small vehicle<|object_ref_end|>")
  # 0-100 grid -> pixels of the 200x100 image -> 0-1000 text; the angle is dropped and counted.
  assert refer.boxes == (("small vehicle", (20.0, 20.0, 60.0, 40.0)),)
  assert refer.messages[1]["content"] == "<|box_start|>(100,200),(300,400)<|box_end|>"
  assert refer.answer == refer.messages[1]["content"]
  assert ground.task == "ground_multi" and ground.answer is None
  assert ground.messages[1]["content"] == (
      "Two <|object_ref_start|>ships<|object_ref_end|><|box_start|>(0,0),(100,100)<|box_end|>"
      "<|box_start|>(500,500),(600,700)<|box_end|> are docked.")
  assert [b for _, b in ground.boxes] == [(0.0, 0.0, 20.0, 10.0), (100.0, 50.0, 120.0, 70.0)]
  assert ident.task == "identify" and BOX in ident.messages[0]["content"] and "[identify]" not in ident.messages[0]["content"]
  assert plain.task == "chat" and plain.boxes == ()
  assert skips.notes["dropped_box_angle"] == 2


# -------------------------------------------------------------------------------------------- VRSBench

def test_vrsbench(tmp_path):
  _png(tmp_path / "Images_val" / "00001_0000.png", w=512, h=512)
  data = [
      {"image_id": "00001_0000.png", "question": "[refer] The large white ship on the left.",
       "ground_truth": "{<10><20><30><50>}", "question_id": 7, "type": "ship", "unique": True,
       "obj_corner": "top-left", "size_group": "medium"},
      {"image_id": "00001_0000.png", "question": "How many ships are there?", "ground_truth": "2",
       "question_id": 8, "type": "object quantity"},
      {"image_id": "00001_0000.png", "question": "[caption] Describe the image in detail.",
       "ground_truth": "A harbour with two ships.", "question_id": 9},
  ]
  path = tmp_path / "VRSBench_EVAL_referring.json"
  path.write_text(json.dumps(data))
  refer, vqa, cap = readers.load_records("vrsbench", str(path), skips=_strict())
  assert refer.task == "ground" and refer.id == "7"
  assert refer.image == str(tmp_path / "Images_val" / "00001_0000.png")
  assert refer.boxes == (("The large white ship on the left.", (51.2, 102.4, 153.6, 256.0)),)
  assert refer.messages[1]["content"] == "<|box_start|>(100,200),(300,500)<|box_end|>"
  assert refer.extra == {"question_id": 7, "type": "ship", "unique": True, "obj_corner": "top-left",
                         "size_group": "medium"}
  assert vqa.task == "vqa" and vqa.answer == "2"
  assert cap.task == "caption" and cap.answer is None and "[caption]" not in cap.messages[0]["content"]



def test_vrsbench_box_in_the_question_is_not_truth(tmp_path):
  """A box written in the question is context: the true boxes are the ground truth's only (it used to be
  `found_q + found`, making the question's box the one scored)."""
  _png(tmp_path / "Images_val" / "a.png", w=100, h=100)
  data = [{"image_id": "a.png", "question": "[refer] The car next to {<0><0><10><10>}.",
           "ground_truth": "{<50><50><70><70>}", "question_id": 1, "unique": False}]
  path = tmp_path / "VRSBench_EVAL_referring.json"
  path.write_text(json.dumps(data))
  (refer,) = readers.load_records("vrsbench", str(path), skips=_strict())
  assert refer.task == "ground" and [b for _, b in refer.boxes] == [(50.0, 50.0, 70.0, 70.0)]


# ------------------------------------------------------------------------------------------- DIOR-RSVG

def _dior_xml(filename, objects, w=800, h=800):
  objs = "".join(
      f"<object><name>{n}</name><pose>Unspecified</pose><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
      f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox><description>{d}</description></object>"
      for n, b, d in objects)
  return (f"<annotation><filename>{filename}</filename><source><database>DIOR</database></source>"
          f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def _dior_tree(root):
  os.makedirs(root / "Annotations")
  for name in ("00001.jpg", "00002.jpg"):
    _png(root / "JPEGImages" / name, w=800, h=800)
  (root / "Annotations" / "00001.xml").write_text(_dior_xml("00001.jpg", [
      ("vehicle", (10, 10, 30, 30), "the small vehicle on the top left"),
      ("storagetank", (400, 400, 600, 600), "The large   storage tank\n in the middle")]))
  (root / "Annotations" / "00002.xml").write_text(_dior_xml("00002.jpg", [
      ("airplane", (100, 200, 180, 260), "an airplane near the runway")]))
  (root / "train.txt").write_text("1\n")
  (root / "test.txt").write_text("0\n2\n")


def test_dior_rsvg(tmp_path):
  _dior_tree(tmp_path)
  first, second = readers.load_records("dior_rsvg", str(tmp_path), split="test", skips=_strict())
  assert first.id == "dior_rsvg:0" and second.id == "dior_rsvg:2"
  assert first.task == "ground" and first.boxes == (("vehicle", (10.0, 10.0, 30.0, 30.0)),)
  assert first.image == str(tmp_path / "JPEGImages" / "00001.jpg") and first.image_size == (800, 800)
  assert first.messages[1]["content"] == ("<|object_ref_start|>the small vehicle on the top left<|object_ref_end|>"
                                          "<|box_start|>(12,12),(38,38)<|box_end|>")
  assert first.extra["size_group"] == "small" and second.extra["size_group"] == "medium"
  assert second.source.endswith("00002.xml") and second.line == 1
  (train,) = readers.load_records("dior_rsvg", str(tmp_path), split="train", skips=_strict())
  assert train.extra["description"] == "The large storage tank in the middle"
  assert train.extra["size_group"] == "large"


# ----------------------------------------------------------------------------------------------- RSVQA

def _rsvqa_tree(root, prefix="LR", split="test"):
  os.makedirs(root / "Images_LR")
  for i in (0, 1):
    Image.fromarray(np.full((256, 256, 3), 50 * (i + 1), np.uint8)).save(root / "Images_LR" / f"{i}.tif")
  questions = [
      {"id": 0, "date_added": 1.0, "img_id": 0, "people_id": 0, "type": "presence",
       "question": "Is there a building?", "answers_ids": [0], "active": True},
      {"id": 1, "date_added": 1.0, "img_id": 0, "people_id": 0, "type": "comp",
       "question": "Are there more roads than water areas?", "answers_ids": [1], "active": True},
      {"id": 2, "date_added": 1.0, "img_id": 1, "people_id": 0, "type": "rural_urban",
       "question": "Is it a rural or an urban area", "answers_ids": [2], "active": True},
      {"id": 3, "date_added": 1.0, "img_id": 1, "people_id": 0, "type": "count",
       "question": "How many buildings are there?", "answers_ids": [3], "active": True},
      {"id": 4, "date_added": 1.0, "img_id": 1, "people_id": 0, "type": "presence",
       "question": "Is there a road?", "answers_ids": [4], "active": False},
  ]
  answers = [{"id": i, "date_added": 1.0, "question_id": i, "people_id": 0, "answer": a, "active": True}
             for i, a in enumerate(["yes", "no", "rural", "between 11 and 100", "yes"])]
  images = [{"id": i, "people_id": 0, "original_name": f"tile_{i}", "active": True,
             "questions_ids": [q["id"] for q in questions if q["img_id"] == i]} for i in (0, 1)]
  for kind, rows in (("questions", questions), ("answers", answers), ("images", images)):
    (root / f"{prefix}_split_{split}_{kind}.json").write_text(json.dumps({kind: rows}))


def test_rsvqa(tmp_path):
  _rsvqa_tree(tmp_path)
  skips = _strict()
  recs = readers.load_records("rsvqa", str(tmp_path), split="test", skips=skips)
  assert [r.task for r in recs] == ["vqa_presence", "vqa_compare", "vqa_rural_urban", "vqa_count"]
  assert [r.answer for r in recs] == ["yes", "no", "rural", "between 11 and 100"]
  assert recs[0].image == str(tmp_path / "Images_LR" / "0.tif")
  assert recs[0].messages[0]["content"] == "<image>Is there a building? Answer yes or no."
  raw = recs[1].extra["raw_question"]  # the question as the files write it (prompt_style tinyrs builds on it)
  assert recs[1].extra == {"question_type": "comp", "question_id": 1, "img_id": 0, "raw_question": raw}
  assert "Answer yes or no" not in raw
  assert recs[0].id == "rsvqa_LR_test_0"
  assert skips.notes["inactive_question"] == 1
  plain = readers.load_records("rsvqa", str(tmp_path), split="test", answer_hints=False, skips=_strict())
  assert plain[3].messages[0]["content"] == "<image>How many buildings are there?"


# ------------------------------------------------------------------------------------ class folders + TFDS

def test_image_folder(tmp_path):
  _png(tmp_path / "AnnualCrop" / "a1.jpg")
  _png(tmp_path / "AnnualCrop" / "a2.png")
  _png(tmp_path / "baseball_diamond" / "b1.tif")
  (tmp_path / "baseball_diamond" / "notes.txt").write_text("not an image")
  recs = readers.load_records("image_folder", str(tmp_path), skips=_strict())
  assert [(r.id, r.answer) for r in recs] == [("AnnualCrop/a1.jpg", "annual crop"), ("AnnualCrop/a2.png", "annual crop"),
                                              ("baseball_diamond/b1.tif", "baseball diamond")]
  prompt = recs[0].messages[0]["content"]
  assert prompt.startswith(IMAGE_PLACEHOLDER) and "annual crop, baseball diamond" in prompt
  assert all(r.task == "classify" for r in recs)
  renamed = readers.load_records("image_folder", str(tmp_path), class_names={"AnnualCrop": "crops"})
  assert renamed[0].answer == "crops"


@pytest.mark.parametrize("name", ["eurosat/rgb", "resisc45", "uc_merced"])
def test_tfds(name):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    names = tfds.builder(name).info.features["label"].names
    recs = readers.load_records("tfds", name, split="train", skips=_strict())
  assert len(recs) == 4
  for r in recs:
    assert r.image.dtype == np.uint8 and r.image.ndim == 3 and r.image.shape[-1] == 3
    assert r.task == "classify" and r.answer == readers.humanize_class_name(names[r.extra["label"]])
    assert r.answer in r.messages[0]["content"] and r.messages[1]["content"] == r.answer
  assert readers.humanize_class_name("HerbaceousVegetation") == "herbaceous vegetation"


def test_unknown_format():
  with pytest.raises(KeyError, match="known"):
    list(readers.read_records("nope", "x"))
