"""The evaluation suite's readers on fixture files in the distributed layout (tests/fixtures/eval/<format>/), their
bad-input reporting, the lazy TFDS images, and the grounding size buckets."""
from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinyrs_jax.data import images as images_lib
from tinyrs_jax.data import readers
from tinyrs_jax.data.records import TASKS, DataError, SkipCounter

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
MC = "Answer with the letter of the correct option."


def _strict():
  return SkipCounter(strict=True)


def _copy(tmp_path, name):
  return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def _expect_error(fmt, path, field, reason, line, **kw):
  """Strict mode raises naming the file, the line and the field; lenient mode counts the reason and goes on."""
  with pytest.raises(DataError) as e:
    readers.load_records(fmt, str(path), skips=_strict(), **kw)
  assert e.value.source == str(path) and e.value.line == line and e.value.field == field
  assert e.value.reason == reason and f"{path}:{line} [field {field}]" in str(e.value)
  skips = SkipCounter(strict=False)
  records = readers.load_records(fmt, str(path), skips=skips, **kw)
  assert skips.skipped[reason] == 1 and skips.total_skipped == 1
  return records


def test_mc_task_is_documented():
  assert "mc" in TASKS and "letter" in TASKS["mc"]


# ----------------------------------------------------------------------------------------------- LHRS-Bench

def test_lhrs_bench():
  root = FIXTURES / "lhrs_bench"
  recs = readers.load_records("lhrs_bench", str(root / "qa.json"), skips=_strict())
  assert [r.id for r in recs] == ["lhrs_bench/1-1", "lhrs_bench/1-2", "lhrs_bench/2-1"]
  assert all(r.task == "mc" for r in recs)
  assert [r.answer for r in recs] == ["B", "C", "A"]
  first = recs[0]
  assert first.image == str(root / "imgs_png" / "1001.png") and first.source == str(root / "qa.json")
  assert first.messages == [
      {"role": "user", "content": "<image>What is the color of the roof of the largest building?\n"
                                  f"Choices: A. Red B. Blue C. Gray D. Green {MC}"},
      {"role": "assistant", "content": "B"}]
  assert first.extra == {"choices": ["Red", "Blue", "Gray", "Green"], "question_types": ["color"],
                         "type_ids": ["2"], "question_id": "1-1", "filename": "1001.png"}
  assert recs[1].extra["question_types"] == ["quantity", "reasoning"] and recs[1].line == 1
  assert recs[2].extra["choices"] == ["0.5m", "10m", "30m"] and recs[2].line == 2
  jpg = readers.load_records("lhrs_bench", str(root / "qa.json"), image_dir=str(root / "imgs_jpg"), skips=_strict())
  assert jpg[0].image == str(root / "imgs_jpg" / "1001.jpg")  # .png named, the JPEG copy found


def test_lhrs_bench_stored_forms(tmp_path):
  """Options as a list or one per line, answers as option text or "(C)": all become letters."""
  root = _copy(tmp_path, "lhrs_bench")
  data = json.loads((root / "qa.json").read_text())
  data["data"][0]["qa_pairs"] = [
      {"question": "Q1?", "choices": ["A. Red", "B. Blue", "C. Gray"], "answer": "Gray", "type": ["2"]},
      {"question": "Q2?", "choices": "A. yes\nB. no", "answer": "(B)", "type": "11"},
      {"question": "Q3?", "choices": ["harbor", "airport"], "answer": "b. airport", "type": []}]
  (root / "qa.json").write_text(json.dumps(data))
  q1, q2, q3, _ = readers.load_records("lhrs_bench", str(root / "qa.json"), skips=_strict())
  assert q1.answer == "C" and q1.extra["choices"] == ["Red", "Blue", "Gray"]
  assert q1.messages[0]["content"] == f"<image>Q1?\nChoices: A. Red B. Blue C. Gray {MC}"
  assert q2.answer == "B" and q2.extra["choices"] == ["yes", "no"] and q2.extra["question_types"] == ["reasoning"]
  assert q2.messages[0]["content"] == f"<image>Q2?\nChoices: A. yes\nB. no {MC}"  # a string is shown as stored
  assert q3.answer == "B" and q3.extra["question_types"] == []


@pytest.mark.parametrize("change,field,reason", [
    (lambda qa: qa.pop("question"), "qa_pairs[1].question", "missing_field"),
    (lambda qa: qa.update(answer="E"), "qa_pairs[1].answer", "bad_answer"),
    (lambda qa: qa.update(answer="Purple"), "qa_pairs[1].answer", "bad_answer"),
    (lambda qa: qa.update(choices="no options here"), "qa_pairs[1].choices", "bad_choices"),
    (lambda qa: qa.update(type=["12"]), "qa_pairs[1].type", "bad_type"),
])
def test_lhrs_bench_bad_question(tmp_path, change, field, reason):
  root = _copy(tmp_path, "lhrs_bench")
  data = json.loads((root / "qa.json").read_text())
  change(data["data"][0]["qa_pairs"][1])
  (root / "qa.json").write_text(json.dumps(data))
  recs = _expect_error("lhrs_bench", root / "qa.json", field, reason, line=1)
  assert [r.id for r in recs] == ["lhrs_bench/1-1", "lhrs_bench/2-1"]


def test_lhrs_bench_missing_image(tmp_path):
  root = _copy(tmp_path, "lhrs_bench")
  for folder in ("imgs_png", "imgs_jpg"):
    (root / folder / "1002.png").unlink(missing_ok=True)
    (root / folder / "1002.jpg").unlink(missing_ok=True)
  recs = _expect_error("lhrs_bench", root / "qa.json", "filename", "missing_image", line=2)
  assert len(recs) == 2


def test_lhrs_bench_wrong_layout_is_fatal():
  with pytest.raises(DataError, match="tinyrs_eval"):
    readers.load_records("lhrs_bench", str(FIXTURES / "tinyrs_eval" / "LHRS-Bench.json"),
                         skips=SkipCounter(strict=False))


def test_parse_choices_and_letters():
  assert readers.parse_choices("A. 0.5 m, B. 10 m, C. U.S. road") == (["0.5 m", "10 m", "U.S. road"],
                                                                     "A. 0.5 m, B. 10 m, C. U.S. road")
  assert readers.parse_choices({"B": "no", "A": "yes"}) == (["yes", "no"], "A. yes B. no")
  with pytest.raises(ValueError):
    readers.parse_choices(["only one"])
  assert readers.answer_letter("c", ["x", "y", "z"]) == "C"
  assert readers.answer_letter("A. x", ["x", "y"]) == "A"
  with pytest.raises(ValueError):
    readers.answer_letter("D", ["x", "y"])


# -------------------------------------------------------------------------------------------- GeoChat-Bench

def test_geochat_bench_scene():
  root = FIXTURES / "geochat_bench"
  skips = _strict()
  airport, medium = readers.load_records("geochat_bench", str(root / "aid.jsonl"), skips=skips)
  assert airport.id == "aid/Airport/airport_1" and airport.task == "classify" and airport.answer == "Airport"
  # aid.jsonl names .png files; AID ships .jpg: the existing file is used and the substitution counted.
  assert airport.image == str(root / "AID" / "Airport" / "airport_1.jpg")
  assert skips.notes["image_extension_substituted"] == 2
  assert airport.messages[0]["content"].startswith("<image>Classify the image within one of the given classes.")
  assert "Classes: Airport, BareLand" in airport.messages[0]["content"]
  # The class is the question id's folder (the official scorer's); ground_truth's "gt" glitch does not matter.
  assert medium.answer == "MediumResidential" and medium.extra["ground_truth"] == "MediumResidentialgt"
  assert medium.extra["class_key"] == "MediumResidential" and "Beach" in medium.extra["classes"]
  (ucm,) = readers.load_records("geochat_bench", str(root / "UCmerced.jsonl"), skips=_strict())
  assert ucm.answer == "baseball diamond"  # spelled as in the prompt's class list
  assert ucm.image == str(root / "UCMerced_LandUse" / "Images" / "baseballdiamond" / "baseballdiamond03.tif")
  assert ucm.messages[1] == {"role": "assistant", "content": "baseball diamond"}


def test_geochat_bench_vqa(tmp_path):
  root = FIXTURES / "geochat_bench"
  recs = readers.load_records("geochat_bench", str(root / "lrben.jsonl"), skips=_strict())
  assert [r.task for r in recs] == ["vqa_presence", "vqa_compare", "vqa_rural_urban", "vqa_count"]
  assert [r.answer for r in recs] == ["yes", "no", "rural", "between 11 and 100"]  # from LR_split_test_answers.json
  assert [r.extra["question_type"] for r in recs] == ["presence", "comp", "rural_urban", "count"]
  assert recs[0].id == "lrben/0" and recs[0].image == str(root / "Images_LR" / "0.tif")
  assert recs[0].messages[0]["content"] == "<image>Is there a road?\nAnswer the question using a single word or phrase."
  # The JSONL carries no answers: moved away from the answers file, it needs answers_file= or data_dir=.
  moved = tmp_path / "bench"
  moved.mkdir()
  shutil.copy(root / "lrben.jsonl", moved / "lrben.jsonl")
  shutil.copytree(root / "Images_LR", moved / "Images_LR")
  path = str(moved / "lrben.jsonl")
  with pytest.raises(DataError, match="answers_file") as e:
    readers.load_records("geochat_bench", path, skips=_strict())
  assert (e.value.source, e.value.line, e.value.field) == (path, 1, "question_id")
  skips = SkipCounter(strict=False)
  assert readers.load_records("geochat_bench", path, skips=skips) == []
  assert skips.skipped["missing_answer"] == 4
  with_dir = readers.load_records("geochat_bench", path, data_dir=str(root), skips=_strict())
  assert [r.answer for r in with_dir] == ["yes", "no", "rural", "between 11 and 100"]
  named = readers.load_records("geochat_bench", path, answers_file=str(root / "LR_split_test_answers.json"),
                               skips=_strict())
  assert [r.answer for r in named] == ["yes", "no", "rural", "between 11 and 100"]
  prompts = readers.load_records("geochat_bench", path, require_answer=False, skips=_strict())
  assert all(r.answer is None and not r.has_assistant_turn for r in prompts)


def test_geochat_bench_referring_and_region():
  root = FIXTURES / "geochat_bench"
  skips = _strict()
  single, multi = readers.load_records("geochat_bench", str(root / "referring.jsonl"), skips=skips)
  assert single.task == "ground" and single.image == str(root / "final_images_llava" / "P0003_0004.png")
  assert single.image_size == (32, 32)
  assert single.boxes == (("the small vehicle at the top left", (2.0, 2.0, 10.0, 8.0)),)  # pixels, as stored
  assert single.messages[0]["content"] == ("<image>Give me the location of <|object_ref_start|>the small vehicle "
                                           "at the top left<|object_ref_end|>")
  assert single.answer == single.messages[1]["content"] == (
      "<|object_ref_start|>the small vehicle at the top left<|object_ref_end|><|box_start|>(62,62),(312,250)"
      "<|box_end|>")
  assert single.extra == {"question_id": 0, "type": "ref", "dataset": "SOTA", "obj_ids": [12], "size_group": "small"}
  # Two objects -> ground_multi; a rotated polygon becomes its axis-aligned hull (counted).
  assert multi.task == "ground_multi"
  assert [b for _, b in multi.boxes] == [(16.0, 14.0, 26.0, 24.0), (4.0, 20.0, 8.0, 26.0)]
  assert skips.notes["polygon_to_box"] == 1
  (region,) = readers.load_records("geochat_bench", str(root / "region_captioning.jsonl"), skips=_strict())
  assert region.task == "identify" and region.answer == "a large white storage tank"
  assert region.boxes == (("a large white storage tank", (8.0, 8.0, 24.0, 16.0)),)  # 0-100 grid of a 32 px image
  assert region.messages[0]["content"] == ("<image>What is the object present at "
                                           "<|box_start|>(250,250),(750,500)<|box_end|>")


def test_geochat_bench_grounding_description():
  root = FIXTURES / "geochat_bench"
  skips = _strict()
  (rec,) = readers.load_records("geochat_bench", str(root / "grounding_description.jsonl"), skips=skips)
  assert rec.task == "ground_multi" and rec.answer is None and rec.id == "grounding_description/1"
  assert [(label, box) for label, box in rec.boxes] == [("a storage tank", (16.0, 14.08, 25.92, 24.0)),
                                                       ("a small vehicle", (1.92, 1.92, 9.92, 8.0))]
  assert rec.messages[1]["content"] == (
      "The image shows <|object_ref_start|>a storage tank<|object_ref_end|><|box_start|>(500,440),(810,750)"
      "<|box_end|> near <|object_ref_start|>a small vehicle<|object_ref_end|><|box_start|>(60,60),(310,250)"
      "<|box_end|> on the left.")
  assert skips.notes["dropped_box_angle"] == 1


def test_geochat_bench_task_override_and_kind():
  root = FIXTURES / "geochat_bench"
  recs = readers.load_records("geochat_bench", str(root / "lrben.jsonl"), task="vqa", skips=_strict())
  assert {r.task for r in recs} == {"vqa"}
  with pytest.raises(DataError, match="unknown task"):
    readers.load_records("geochat_bench", str(root / "lrben.jsonl"), task="nope", skips=SkipCounter(strict=False))


@pytest.mark.parametrize("row,field,reason", [
    ({"question_id": 9, "question": "a ship", "ground_truth": [[[0, 0], [40, 0], [40, 40], [0, 40]]]},
     "image_id", "missing_field"),
    ({"question_id": 9, "image_id": "P9999", "question": "a ship", "ground_truth": [[[0, 0], [4, 0], [4, 4], [0, 4]]]},
     "image_id", "missing_image"),
    ({"question_id": 9, "image_id": "P0003_0004", "question": "a ship", "ground_truth": [[[40, 40], [50, 40]]]},
     "ground_truth[0]", "bad_box"),
    ({"question_id": 9, "image_id": "P0003_0004", "question": "a ship", "ground_truth": [[[60, 60], [70, 60], [70, 70],
                                                                                         [60, 70]]]},
     "ground_truth[0]", "bad_box"),  # entirely outside the 32x32 image: nothing left after clipping
])
def test_geochat_bench_bad_referring(tmp_path, row, field, reason):
  root = _copy(tmp_path, "geochat_bench")
  with open(root / "referring.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
  recs = _expect_error("geochat_bench", root / "referring.jsonl", field, reason, line=3)
  assert len(recs) == 2


def test_geochat_bench_bad_jsonl_line(tmp_path):
  root = _copy(tmp_path, "geochat_bench")
  with open(root / "aid.jsonl", "a") as f:
    f.write('{"question_id": "Beach/beach_1", "image": \n')
  skips = SkipCounter(strict=False)
  assert len(readers.load_records("geochat_bench", str(root / "aid.jsonl"), skips=skips)) == 2
  assert skips.skipped["bad_json"] == 1


# --------------------------------------------------------------------------- the original work's evaluation JSON

def test_tinyrs_eval_classification_and_vqa():
  root = FIXTURES / "tinyrs_eval"
  (cls,) = readers.load_records("tinyrs_eval", str(root / "cls_AID.json"), skips=_strict())
  assert cls.task == "classify" and cls.answer == "airport" and cls.id == "cls_AID:1"
  assert cls.image == str(root / "cls_AID" / "airport_1.jpg")  # no image_path: the folder named after the JSON
  assert cls.messages[0]["content"].startswith("<image>Classify the image within one of the given classes: airport")
  (as_vqa,) = readers.load_records("tinyrs_eval", str(root / "cls_AID.json"), task="vqa", skips=_strict())
  assert as_vqa.task == "vqa"
  comp, pres = readers.load_records("tinyrs_eval", str(root / "RSVQA_LR-comp_RSVQA.json"), skips=_strict())
  assert comp.image == str(root / "RSVQA_LR" / "0.tif")  # image_path relative to the JSON's folder
  assert (comp.task, comp.answer, comp.extra["question_type"]) == ("vqa_compare", "no", "comp")  # by file name
  assert (pres.task, pres.answer, pres.extra["question_type"]) == ("vqa_presence", "yes", "presence")  # by type


def test_tinyrs_eval_grounding():
  root = FIXTURES / "tinyrs_eval"
  sized, unsized = readers.load_records("tinyrs_eval", str(root / "VG_DOIR_RSVG_test.json"), skips=_strict())
  assert sized.task == unsized.task == "ground"
  assert sized.image == str(root / "DIOR_RSVG" / "00001.jpg")
  # size is [height, width] (the original's scorer unpacks h, w = size); the image header agrees.
  assert sized.image_size == unsized.image_size == (32, 24)
  assert sized.boxes[0][1] == (4.0, 2.0, 20.0, 14.0) and sized.answer == "[4, 2, 20, 14]"
  assert sized.messages[-1]["content"] == "<|box_start|>(125,83),(625,583)<|box_end|>"
  assert sized.boxes[0][0].endswith("the vehicle on the left")
  assert sized.extra["size_group"] == "small" and sized.extra["size"] == [24, 32]
  assert unsized.boxes[0][1] == (0.0, 0.0, 32.0, 24.0)


def test_tinyrs_eval_lhrs_bench_copy():
  root = FIXTURES / "tinyrs_eval"
  first, second = readers.load_records("tinyrs_eval", str(root / "LHRS-Bench.json"), skips=_strict())
  assert first.task == second.task == "mc" and first.image == str(root / "LHRS-Bench" / "1001.png")
  assert first.answer == "B" and first.extra["question_types"] == ["color"]
  assert second.answer == "C" and second.extra["raw_answer"] == "C. 3"
  assert second.extra["question_types"] == ["quantity", "reasoning"]


def test_tinyrs_eval_image_dir_and_absolute_path(tmp_path):
  root = FIXTURES / "tinyrs_eval"
  (rec,) = readers.load_records("tinyrs_eval", str(root / "cls_AID.json"), image_dir=str(root / "cls_AID"),
                                skips=_strict())
  assert rec.image == str(root / "cls_AID" / "airport_1.jpg")
  data = json.loads((root / "cls_AID.json").read_text())
  data[0]["image_path"] = str(root / "cls_AID")
  (tmp_path / "elsewhere.json").write_text(json.dumps(data))
  (rec,) = readers.load_records("tinyrs_eval", str(tmp_path / "elsewhere.json"), task="classify", skips=_strict())
  assert rec.image == str(root / "cls_AID" / "airport_1.jpg")


def test_tinyrs_eval_prompt_only(tmp_path):
  """Evaluation may read prompts without answers (require_assistant=False): no answer, no box."""
  data = json.loads((FIXTURES / "tinyrs_eval" / "VG_DOIR_RSVG_test.json").read_text())
  for row in data:
    row["conversations"] = row["conversations"][:1]
  path = tmp_path / "VG_DOIR_RSVG_test.json"
  path.write_text(json.dumps(data))
  recs = readers.load_records("tinyrs_eval", str(path), image_dir=str(FIXTURES / "tinyrs_eval" / "DIOR_RSVG"),
                              require_assistant=False, task="ground", skips=_strict())
  assert [(r.task, r.answer, r.boxes, r.has_assistant_turn) for r in recs] == [("ground", None, (), False)] * 2
  with pytest.raises(DataError, match="no assistant turn"):
    readers.load_records("tinyrs_eval", str(path), image_dir=str(FIXTURES / "tinyrs_eval" / "DIOR_RSVG"),
                         skips=_strict())


@pytest.mark.parametrize("change,field,reason,kw", [
    (lambda r: r.update(image="missing.jpg"), "image", "missing_image", {}),
    (lambda r: r.pop("image"), "image", "missing_field", {}),
    (lambda r: r["conversations"][1].update(value="[4, 2, 40, 14]"), "conversations[1].value", "box_outside_image", {}),
    (lambda r: r["conversations"][1].update(value="no box"), "conversations[1].value", "bad_box", {"task": "ground"}),
    (lambda r: r.update(size=[24]), "size", "bad_size", {}),
    (lambda r: r.update(conversations=[]), "conversations", "no_messages", {}),
])
def test_tinyrs_eval_bad_record(tmp_path, change, field, reason, kw):
  root = _copy(tmp_path, "tinyrs_eval")
  path = root / "VG_DOIR_RSVG_test.json"
  data = json.loads(path.read_text())
  change(data[0])
  path.write_text(json.dumps(data))
  recs = _expect_error("tinyrs_eval", path, field, reason, line=1, **kw)
  assert [r.line for r in recs] == [2]


# ------------------------------------------------------------------------------------------------ size buckets

@pytest.mark.parametrize("box,group", [
    ((0, 0, 32, 32), "small"), ((0, 0, 1025, 1), "medium"),  # area 1024 = 32² is still small
    ((10, 10, 106, 106), "medium"), ((0, 0, 9217, 1), "large"),  # area 9216 = 96² is still medium
    ((0, 0, 1, 1), "small"), ((0, 0, 800, 800), "large")])
def test_size_group_boundaries(box, group):
  assert readers.size_group(box) == group


# ----------------------------------------------------------------------------------------------- lazy TFDS

class _Counter:
  def __init__(self, fn):
    self.fn, self.calls = fn, 0

  def __call__(self, *a, **kw):
    self.calls += 1
    return self.fn(*a, **kw)


def test_tfds_is_lazy(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  convert = _Counter(images_lib.to_rgb_uint8)
  monkeypatch.setattr(images_lib, "to_rgb_uint8", convert)
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    recs = readers.load_records("tfds", "eurosat/rgb", split="train", skips=_strict())
    assert len(recs) == 3 and convert.calls == 0  # listing decoded nothing
    image = recs[1].image
    assert isinstance(image, readers.TfdsImage) and isinstance(image, images_lib.LazyImage)
    reads = _Counter(readers.TfdsImage.read)
    monkeypatch.setattr(readers.TfdsImage, "read", lambda self: reads(self))
    # EuroSAT declares 64x64: planning needs no read at all.
    assert recs[1].image_size == (64, 64) and images_lib.image_size(image) == (64, 64) and reads.calls == 0
    pixels = images_lib.load_image(image)
    assert reads.calls == 1 and convert.calls == 1
    expected = tfds.data_source("eurosat/rgb", split="train")[1]["image"]
    np.testing.assert_array_equal(pixels, expected)
    clone = pickle.loads(pickle.dumps(image))  # records travel to data-loading workers
    assert clone == image and len(pickle.dumps(image)) < 400
    np.testing.assert_array_equal(images_lib.load_image(clone), expected)


def _png_bytes(w, h, value):
  buf = io.BytesIO()
  Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def test_tfds_encoded_images_read_header_then_decode(monkeypatch):
  """With a real prepared split the image field stays encoded (the decoder is skipped): the size comes from the
  header, the pixels from one decode when the pipeline loads the image."""
  tfds = pytest.importorskip("tensorflow_datasets")
  examples = [{"image": _png_bytes(20 + i, 10, 40 * i), "label": i, "filename": f"{i}.tif"} for i in range(3)]
  monkeypatch.setattr(readers.classification, "_open_tfds_source", lambda *a, **kw: examples)
  decode = _Counter(images_lib._decode_bytes)
  monkeypatch.setattr(images_lib, "_decode_bytes", decode)
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    recs = readers.load_records("tfds", "uc_merced", split="train", skips=_strict())
  assert [r.extra["label"] for r in recs] == [0, 1, 2] and all(r.image_size is None for r in recs)
  assert [images_lib.image_size(r.image) for r in recs] == [(20, 10), (21, 10), (22, 10)]
  assert recs[2].image.shape == (10, 22, 3) and decode.calls == 0
  pixels = images_lib.load_image(recs[2].image)
  assert decode.calls == 1 and pixels.shape == (10, 22, 3) and int(pixels[0, 0, 0]) == 80


def test_lazy_image_errors_name_the_image():
  class Broken(images_lib.LazyImage):
    def read(self):
      return b"not an image"

    def describe(self):
      return "broken#0"

  with pytest.raises(DataError, match="broken#0") as e:
    images_lib.load_image(Broken())
  assert e.value.reason == "corrupt_image"
  with pytest.raises(DataError, match="broken#0"):
    images_lib.image_size(Broken())


def test_prompt_style_tinyrs_uses_the_originals_prompts():
  """eval.prompt_style=tinyrs: the original work's Qwen2-VL prompts (prefix + " " + question + " " + suffix, then
  "<image>\\n" removed), built from the question as the files write it; `ours` keeps the readers' prompts."""
  from tinyrs_jax.evaluation import evaluator, suite
  root = FIXTURES / "tinyrs_eval"

  def prompts(fname, style):
    b = dict(format="tinyrs_eval", path=str(root / fname), task="", prompt="", limit=-1)
    records, _ = evaluator.load_benchmark("b", b, "{question}", -1, style)
    return [r.messages[-1]["content"] for r in records]

  assert prompts("VG_DOIR_RSVG_test.json", "tinyrs")[0] == (
      "<image>Output the bounding box of the following object in the image. <|object_ref_start|> Please provide "
      "the bounding box coordinate of the region this sentence describes: the vehicle on the left "
      "<|object_ref_end|>")
  assert prompts("RSVQA_LR-comp_RSVQA.json", "tinyrs") == ["<image> Are there more buildings than roads? ",
                                                            "<image> Is there a water area? "]
  assert prompts("cls_AID.json", "tinyrs")[0].startswith("<image> Classify the image")
  assert prompts("RSVQA_LR-comp_RSVQA.json", "ours") == ["<image>Are there more buildings than roads?",
                                                          "<image>Is there a water area?"]
  # RSVQA's own files: the question without our appended "Answer yes or no."
  assert suite.original_prompt("vqa_presence", {"raw_question": "Is there a road?"}) == "<image> Is there a road? "
  assert suite.original_prompt("caption", {"raw_question": "x"}) is None and suite.original_prompt("ground", {}) is None
  with pytest.raises(ValueError, match="prompt_style"):
    prompts("cls_AID.json", "theirs")


def test_prompt_style_defaults():
  import importlib.util
  spec = importlib.util.spec_from_file_location("eval_config", Path(__file__).parents[1] / "configs" / "eval.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  assert mod.get_config().eval.prompt_style == "tinyrs" and mod.get_config("demo").eval.prompt_style == "ours"
