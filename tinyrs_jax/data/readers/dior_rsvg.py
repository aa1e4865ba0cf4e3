"""DIOR-RSVG: VOC XML annotations with a description per object, and split files that index all objects;
one grounding record per listed (image, description, box) triplet. `size_group` is the evaluation's S/M/L
bucket of a ground-truth box (also used by the original work's evaluation JSON)."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Iterator

from tinyrs_jax.data.readers._common import _box_to_text, _image_path, _size_of, register_reader
from tinyrs_jax.data.records import IMAGE_PLACEHOLDER, DataError, Record, SkipCounter, check_box, validate_record


DIOR_RSVG_PROMPT = "Output the bounding box of the object described as: {description}"
SMALL_AREA, MEDIUM_AREA = 32 ** 2, 96 ** 2  # the evaluation's S/M/L split by ground-truth box area


def size_group(box) -> str:
  """The evaluation's bucket of a pixel box by area, thresholds inclusive: small <= 32², medium <= 96², large."""
  area = (box[2] - box[0]) * (box[3] - box[1])
  return "small" if area <= SMALL_AREA else "medium" if area <= MEDIUM_AREA else "large"


@register_reader("dior_rsvg")
def read_dior_rsvg(path: str, *, skips: SkipCounter, split: str = "test", image_dir: str | None = None,
                   annotation_dir: str | None = None, split_file: str | None = None,
                   check_files: bool = True) -> Iterator[Record]:
  """DIOR-RSVG: one record per (image, description, box) triplet listed in the split file."""
  root = os.fspath(path)
  annotation_dir = annotation_dir or os.path.join(root, "Annotations")
  image_dir = image_dir or os.path.join(root, "JPEGImages")
  split_file = split_file or os.path.join(root, f"{split}.txt")
  if not os.path.exists(split_file):
    raise DataError("split file does not exist", source=split_file, reason="missing_file")
  wanted = set()
  with open(split_file, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if line.strip():
        try:
          wanted.add(int(line.strip()))
        except ValueError:
          raise DataError(f"not an object index: {line.strip()!r}", source=split_file, line=line_no,
                          reason="bad_split_file") from None
  if not os.path.isdir(annotation_dir):
    raise DataError("annotation folder does not exist", source=annotation_dir, reason="missing_file")
  index = 0
  for xml_name in sorted(n for n in os.listdir(annotation_dir) if n.lower().endswith(".xml")):
    xml_path = os.path.join(annotation_dir, xml_name)
    try:
      root_el = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
      # Fatal in both modes: the split indices count objects, so one unreadable file shifts all after it.
      raise DataError(f"malformed XML ({e})", source=xml_path, line=e.position[0], reason="bad_xml") from None
    objects = root_el.findall("object")
    for obj_no, obj in enumerate(objects, start=1):
      this_index, index = index, index + 1
      if this_index not in wanted:
        continue
      try:
        yield _dior_record(root_el, obj, obj_no, this_index, xml_path, image_dir, check_files)
      except DataError as e:
        skips.skip(e)
  if index <= max(wanted, default=-1):
    raise DataError(f"split lists object index {max(wanted)} but the annotations hold {index} objects",
                    source=split_file, reason="bad_split_file")


def _dior_record(root_el, obj, obj_no: int, index: int, xml_path: str, image_dir: str,
                 check_files: bool) -> Record:
  where = dict(source=xml_path, line=obj_no)  # line = the object's 1-based position in its file
  filename = (root_el.findtext("filename") or "").strip()
  if not filename:
    raise DataError("no <filename>", field="filename", reason="missing_field", **where)
  image = _image_path(filename, image_dir, xml_path, obj_no, check_files)
  try:
    size = (int(float(root_el.findtext("size/width"))), int(float(root_el.findtext("size/height"))))
  except (TypeError, ValueError):
    size = _size_of(image, {}, xml_path, obj_no)
  name = (obj.findtext("name") or "").strip()
  description = " ".join((obj.findtext("description") or "").split())
  if not description:
    raise DataError("object has no <description>", field="object/description", reason="missing_field", **where)
  try:
    box = tuple(float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
  except (TypeError, ValueError):
    raise DataError("object <bndbox> lacks numeric xmin/ymin/xmax/ymax", field="object/bndbox",
                    reason="bad_box", **where) from None
  box = check_box(box, *size, field="object/bndbox", **where)
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + DIOR_RSVG_PROMPT.format(description=description)},
              {"role": "assistant", "content": _box_to_text(box, *size, label=description)}]
  return validate_record(Record(
      id=f"dior_rsvg:{index}", image=image, messages=messages, task="ground", answer=messages[1]["content"],
      boxes=((name, box),), source=xml_path, line=obj_no, image_size=size,
      extra={"object_index": index, "category": name, "description": description, "size_group": size_group(box),
             "raw_question": description}))
