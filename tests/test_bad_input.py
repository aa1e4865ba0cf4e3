"""Bad input: strict mode raises DataError naming file, line and field; lenient mode skips and counts by reason."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from tinyrs_jax.data import images, readers
from tinyrs_jax.data.records import DataError, Record, SkipCounter, check_box, validate_record


def _png(path, w=64, h=48):
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
  return str(path)


def _record(image="a.png", value="<image>\nWhat is it?", answer="A field.", **kw):
  turns = [{"from": "human", "value": value}]
  if answer is not None:
    turns.append({"from": "gpt", "value": answer})
  return {"id": "x", "image": image, "conversations": turns, **kw}


def _write_jsonl(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(path)


# Each case: (rows of a JSONL file after one good record, expected reason, expected field, bad line).
CASES = {
    "missing_image": ([_record(image="missing.png")], "missing_image", "image"),
    "malformed_json": (['{"id": "broken", "conversations": ['], "bad_json", None),
    "box_outside": ([_record(boxes=[{"label": "ship", "box": [10, 10, 70, 20]}])], "box_outside_image", "boxes[0]"),
    "empty_box": ([_record(boxes=[{"label": "ship", "box": [10, 10, 5, 20]}])], "bad_box", "boxes[0]"),
    "no_assistant": ([_record(answer=None)], "no_assistant_turn", "messages"),
    "bad_role": ([{"id": "r", "conversations": [{"from": "alien", "value": "hi"}]}], "bad_role",
                 "conversations[0].from"),
    "no_conversations": ([{"id": "c", "image": "a.png"}], "no_messages", "conversations"),
    "two_placeholders": ([_record(value="<image><image>hi")], "bad_placeholder", "messages"),
    "unknown_task": ([_record(task="dance")], "bad_task", "task"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_llava_bad_record_strict_and_lenient(tmp_path, case):
  rows, reason, field = CASES[case]
  _png(tmp_path / "a.png")
  path = _write_jsonl(tmp_path / "d.jsonl", [_record()] + rows + [_record()])
  with pytest.raises(DataError) as e:
    list(readers.read_records("llava", path, skips=SkipCounter(strict=True)))
  err = e.value
  assert err.source == path and err.line == 2 and err.field == field and err.reason == reason
  assert f"{path}:2" in str(err)
  if field:
    assert f"[field {field}]" in str(err)
  skips = SkipCounter(strict=False)
  recs = list(readers.read_records("llava", path, skips=skips))
  assert [r.line for r in recs] == [1, 3]
  assert dict(skips.skipped) == {reason: 1}
  skips.log_counts()


def test_default_is_lenient(tmp_path):
  _png(tmp_path / "a.png")
  path = _write_jsonl(tmp_path / "d.jsonl", [_record(), "{not json", _record(image="gone.png")])
  assert len(list(readers.read_records("llava", path))) == 1


def test_prompt_only_records_allowed_when_asked(tmp_path):
  _png(tmp_path / "a.png")
  path = _write_jsonl(tmp_path / "d.jsonl", [_record(answer=None)])
  (rec,) = readers.read_records("llava", path, require_assistant=False, skips=SkipCounter(strict=True))
  assert not rec.has_assistant_turn and rec.prompt_messages == rec.messages


def test_missing_annotation_file_raises_in_both_modes(tmp_path):
  for strict in (True, False):
    with pytest.raises(DataError, match="does not exist") as e:
      list(readers.read_records("llava", str(tmp_path / "nope.jsonl"), skips=SkipCounter(strict=strict)))
    assert e.value.reason == "missing_file"


def test_bad_json_list_names_line(tmp_path):
  path = tmp_path / "d.json"
  path.write_text('[\n{"id": 1},\n{"id": 2,,}\n]')
  with pytest.raises(DataError) as e:
    list(readers.read_records("llava", str(path), skips=SkipCounter(strict=False)))
  assert e.value.line == 3 and e.value.reason == "bad_json"


# ------------------------------------------------------------------------------------------ image files

def _truncated(tmp_path):
  good = _png(tmp_path / "good.png", 200, 200)
  data = open(good, "rb").read()
  path = tmp_path / "truncated.png"
  path.write_bytes(data[: len(data) // 2])
  return str(path)


def _corrupt(tmp_path):
  path = tmp_path / "corrupt.jpg"
  path.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
  return str(path)


@pytest.mark.parametrize("make", [_truncated, _corrupt])
def test_bad_image_file(tmp_path, make):
  path = make(tmp_path)
  with pytest.raises(DataError) as e:
    images.load_image(path)
  assert e.value.source == path and e.value.field == "image" and e.value.reason == "corrupt_image"
  assert path in str(e.value)
  # Through a reader: verify_images decodes every image; strict raises, lenient skips by reason.
  rows = [_record(image="good2.png"), _record(image=os.path.basename(path))]
  _png(tmp_path / "good2.png")
  jsonl = _write_jsonl(tmp_path / "d.jsonl", rows)
  with pytest.raises(DataError) as e:
    list(readers.read_records("llava", jsonl, verify_images=True, skips=SkipCounter(strict=True)))
  assert e.value.line == 2 and e.value.field == "image" and path in str(e.value)
  skips = SkipCounter(strict=False)
  assert len(list(readers.read_records("llava", jsonl, verify_images=True, skips=skips))) == 1
  assert dict(skips.skipped) == {"corrupt_image": 1}


def test_missing_image_file():
  with pytest.raises(DataError, match="does not exist") as e:
    images.load_image("/nonexistent/x.png")
  assert e.value.reason == "missing_image" and e.value.source == "/nonexistent/x.png"


# ------------------------------------------------------------------------------ pixel formats and bands

def test_grayscale_and_rgba(tmp_path):
  gray = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
  Image.fromarray(gray).save(tmp_path / "g.png")
  out = images.load_image(str(tmp_path / "g.png"))
  assert out.shape == (48, 64, 3) and out.dtype == np.uint8
  assert (out[..., 0] == gray).all() and (out[..., 2] == gray).all()
  rgba = np.zeros((10, 20, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: alpha is dropped, colour kept
  Image.fromarray(rgba).save(tmp_path / "a.png")
  out = images.load_image(str(tmp_path / "a.png"))
  assert out.shape == (10, 20, 3) and (out[..., 0] == 200).all() and (out[..., 1] == 0).all()


def test_16bit_percentile_stretch(tmp_path):
  rng = np.random.default_rng(0)
  a = rng.integers(1000, 3000, size=(40, 50, 3)).astype(np.uint16)
  tifffile.imwrite(tmp_path / "x.tif", a)
  out = images.load_image(str(tmp_path / "x.tif"))
  assert out.dtype == np.uint8 and out.shape == (40, 50, 3)
  for c in range(3):  # 2nd/98th percentiles map to the ends; ~2 % of pixels are clipped at each end
    lo, hi = np.percentile(a[..., c], [2, 98])
    assert (out[..., c][a[..., c] <= lo] == 0).all() and (out[..., c][a[..., c] >= hi] == 255).all()
    assert 0.01 < (out[..., c] == 0).mean() < 0.04
  # Float with NaN: NaN -> 0; a flat band -> 0.
  f = np.stack([np.linspace(0, 1, 100).reshape(10, 10)] * 2 + [np.full((10, 10), 7.0)], -1)
  f[0, 0, 0] = np.nan
  out = images.to_rgb_uint8(f)
  assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and (out[..., 2] == 0).all()
  # 16-bit single band written by PIL (mode I;16) is stretched and replicated.
  Image.fromarray(rng.integers(0, 60000, size=(20, 30)).astype(np.uint16)).save(tmp_path / "g16.png")
  out = images.load_image(str(tmp_path / "g16.png"))
  assert out.shape == (20, 30, 3) and (out[..., 0] == out[..., 1]).all() and out.max() == 255


def test_multiband_geotiff(tmp_path):
  bands = np.stack([np.full((32, 40), 100 * (b + 1), np.uint16) for b in range(13)])  # planar, 13 bands
  bands[:, 0, 0] = 0  # give every band a range to stretch
  tifffile.imwrite(tmp_path / "s2.tif", bands)
  out = images.load_image(str(tmp_path / "s2.tif"))
  assert out.shape == (32, 40, 3)
  expected = images.load_image(bands[[3, 2, 1]].transpose(1, 2, 0).copy())  # B4, B3, B2
  assert (out == expected).all()
  five = np.random.default_rng(0).integers(0, 255, (5, 32, 40)).astype(np.uint8)
  tifffile.imwrite(tmp_path / "five.tif", five)
  with pytest.raises(DataError, match="5-band image") as e:
    images.load_image(str(tmp_path / "five.tif"))
  assert e.value.reason == "unsupported_bands" and str(tmp_path / "five.tif") in str(e.value)
  out = images.load_image(str(tmp_path / "five.tif"), bands=(4, 2, 0))
  assert (out == five[[4, 2, 0]].transpose(1, 2, 0)).all()
  with pytest.raises(DataError, match="bands"):
    images.load_image(str(tmp_path / "five.tif"), bands=(9, 1, 0))
  assert images.image_size(str(tmp_path / "s2.tif")) == (40, 32)


def test_multiband_rsvqa_image_refused_in_lenient_verify(tmp_path):
  os.makedirs(tmp_path / "Images_LR")
  tifffile.imwrite(tmp_path / "Images_LR" / "0.tif", np.zeros((6, 16, 16), np.uint16))
  q = [{"id": 0, "img_id": 0, "type": "presence", "question": "Is there water?", "answers_ids": [0], "active": True},
       {"id": 1, "img_id": 0, "type": "count", "question": "How many?", "answers_ids": [9], "active": True}]
  a = [{"id": 0, "question_id": 0, "answer": "no", "active": True}]
  im = [{"id": 0, "active": True, "questions_ids": [0, 1]}]
  for kind, rows in (("questions", q), ("answers", a), ("images", im)):
    (tmp_path / f"LR_split_val_{kind}.json").write_text(json.dumps({kind: rows}))
  skips = SkipCounter(strict=False)
  assert list(readers.read_records("rsvqa", str(tmp_path), split="val", verify_images=True, skips=skips)) == []
  assert dict(skips.skipped) == {"unsupported_bands": 1, "missing_answer": 1}
  with pytest.raises(DataError) as e:
    list(readers.read_records("rsvqa", str(tmp_path), split="val", skips=SkipCounter(strict=True)))
  assert e.value.field == "answers_ids" and e.value.line == 2


# ---------------------------------------------------------------------------------- other readers' errors

def test_dior_rsvg_bad_xml_is_fatal_and_bad_object_skipped(tmp_path):
  os.makedirs(tmp_path / "Annotations")
  os.makedirs(tmp_path / "JPEGImages")
  _png(tmp_path / "JPEGImages" / "00001.jpg", 100, 100)
  good = ("<annotation><filename>00001.jpg</filename><size><width>100</width><height>100</height></size>"
          "<object><name>ship</name><bndbox><xmin>90</xmin><ymin>10</ymin><xmax>150</xmax><ymax>20</ymax></bndbox>"
          "<description>a ship</description></object>"
          "<object><name>ship</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
          "<description>another ship</description></object></annotation>")
  (tmp_path / "Annotations" / "00001.xml").write_text(good)
  (tmp_path / "test.txt").write_text("0\n1\n")
  xml = str(tmp_path / "Annotations" / "00001.xml")
  with pytest.raises(DataError) as e:
    list(readers.read_records("dior_rsvg", str(tmp_path), skips=SkipCounter(strict=True)))
  assert e.value.source == xml and e.value.line == 1 and e.value.reason == "box_outside_image"
  assert e.value.field == "object/bndbox"
  skips = SkipCounter(strict=False)
  (rec,) = readers.read_records("dior_rsvg", str(tmp_path), skips=skips)
  assert rec.id == "dior_rsvg:1" and dict(skips.skipped) == {"box_outside_image": 1}
  (tmp_path / "Annotations" / "00000.xml").write_text("<annotation><object>")
  for strict in (True, False):
    with pytest.raises(DataError, match="malformed XML"):
      list(readers.read_records("dior_rsvg", str(tmp_path), skips=SkipCounter(strict=strict)))


def test_geochat_box_outside_and_missing_image(tmp_path):
  _png(tmp_path / "a.png")
  rows = [{"id": "1", "image": "a.png", "conversations": [
              {"from": "human", "value": "<image>\n[refer] where is <p>it</p>"},
              {"from": "gpt", "value": "{<10><20><130><40>|<0>}"}]},
          {"id": "2", "image": "b.png", "conversations": [
              {"from": "human", "value": "<image>\n[refer] where is <p>it</p>"},
              {"from": "gpt", "value": "{<10><20><30><40>|<0>}"}]}]
  path = tmp_path / "g.json"
  path.write_text(json.dumps(rows))
  skips = SkipCounter(strict=False)
  assert list(readers.read_records("geochat", str(path), skips=skips)) == []
  assert dict(skips.skipped) == {"box_outside_image": 1, "missing_image": 1}
  with pytest.raises(DataError) as e:
    list(readers.read_records("geochat", str(path), skips=SkipCounter(strict=True)))
  assert e.value.line == 1 and e.value.field == "conversations[1]"


def test_check_box_tolerance_and_validate():
  assert check_box((-0.5, 0, 100.8, 50), 100, 50) == (0.0, 0.0, 100.0, 50.0)  # rounding overhang clipped
  with pytest.raises(DataError, match="outside"):
    check_box((0, 0, 102, 50), 100, 50)
  with pytest.raises(DataError, match="four numbers"):
    check_box((0, 0, 1), 100, 50)
  rec = Record(id="r", image=None, messages=[{"role": "user", "content": "<image>hi"},
                                             {"role": "assistant", "content": "x"}], source="f.jsonl", line=4)
  with pytest.raises(DataError, match="f.jsonl:4"):
    validate_record(rec)
