"""Readers for the remote-sensing formats users bring, by name: `read_records(format, path, ...)`.

Every reader yields `records.Record`s and reports bad input through a `SkipCounter` (strict: raise; lenient,
the default: skip, count by reason). A problem with one record skips that record; a problem that makes the
whole file unreadable (missing annotation file, JSON list that does not parse, bad DIOR-RSVG XML or split file)
raises DataError in both modes, because nothing after it could be trusted.

Formats (the registry `READERS`):
  llava         LLaVA-style conversations: a JSON list or JSONL (one object a line), chosen by the first
                non-blank character ('[' = list). Fields: id, image (one path, relative to `image_root`, default
                the annotation file's folder), conversations [{from: human|gpt|system, value}] (or OpenAI-style
                messages [{role, content}]); optional task, answer, boxes [{label, box: [x1, y1, x2, y2]}] in
                pixels, width, height. Other fields go to Record.extra. Our synthetic data is this format.
  geochat       GeoChat-Instruct (and VRSBench training) JSON: llava records whose text carries GeoChat boxes
                `{<x1><y1><x2><y2>|<θ>}` (0-100 grid), several joined by `<delim>`, referred phrases
                `<p>…</p>`, and task tags `[refer]`, `[grounding]`, `[identify]` (also `[vqa]`, `[caption]`).
  vrsbench      VRSBench evaluation JSON (a list of {image_id, question, ground_truth, type, unique, obj_corner,
                size_group, question_id}); boxes in `ground_truth`/`question` use the GeoChat syntax, 0-100.
  dior_rsvg     DIOR-RSVG root: Annotations/*.xml (VOC, one per image; each <object> has <name>, <bndbox>
                xmin/ymin/xmax/ymax pixels and <description>), JPEGImages/, and {train,val,test}.txt whose
                lines are indices into the list of all objects, enumerated over the XML files in file-name order
                and, within a file, in document order (26,991 / 3,829 / 7,500 triplets in the release).
  rsvqa         RSVQA-LR / -HR: {LR|USGS}_split_{train|val|test|test_phili}_{questions|answers|images}.json, each
                a dict with one list ("questions", "answers", "images"); images are `{id}.tif`.
  image_folder  root/ClassName/*.jpg (AID, UC Merced, NWPU-RESISC45, WHU-RS19, SIRI-WHU style).
  tfds          a prepared TensorFlow Datasets classification set (eurosat/rgb, resisc45, uc_merced, …) read
                through `tfds.data_source`, lazily: listing reads labels only; Record.image is a `TfdsImage`
                (an `images.LazyImage`) that reads and decodes its example when the pipeline loads it.
  lhrs_bench    LHRS-Bench's qa.json: {"data": [{filename, qa_pairs: [{question, choices, answer, type: [ids]}]}],
                "qtype": {"1 identity": …, …}}; images in imgs_png/ or imgs_jpg/ beside it (`image_dir` overrides).
                One task "mc" record per question: answer = the option letter (a stored letter or option text is
                mapped to it); extra: choices (texts without letters), question_types (names from qtype),
                type_ids, question_id ("<entry>-<question>", 1-based, unless the file has one), filename.
  geochat_bench GeoChat-Bench JSONL, the kind from the file name: aid / UCmerced {question_id "Class/name",
                image, text (lists "Classes: …"), ground_truth} -> classify (the class is the question id's
                folder, as the official scorer takes it, shown as spelled in the class list); lrben / hrben
                {question_id, image, text, category} -> vqa_* by category (answers come from RSVQA's answers file,
                `answers_file` or found in `data_dir`; extra question_type); referring {question_id, image_id
                (+.png), question (the phrase), ground_truth (pixel polygons [[x, y] x 4] per object), type,
                dataset, obj_ids, size_group} -> ground (ground_multi for several objects), boxes = the polygons'
                axis-aligned hulls clipped to the image (noted "polygon_to_box", "clipped_box");
                region_captioning {…, question = a GeoChat box on the 0-100 grid, ground_truth = caption} ->
                identify; grounding_description {image_id, description} -> ground_multi.
  tinyrs_eval   the original work's evaluation JSON (ScoreRS/VHM lineage): a list of {image, image_path?,
                conversations [question, answer], size? ([height, width]), type?}; images in image_path
                (absolute, or relative to the JSON's folder) or, without it, in the folder named after the JSON
                (AID.json -> AID/); `image_dir` overrides. Task: `task`, else inferred: an answer holding a
                "[x1, y1, x2, y2]" pixel box -> ground (Record.boxes from it; the answer text stays raw), an RSVQA
                `type` -> that task, a list of LHRS-Bench type ids -> mc, the suite's file names (cls_* ->
                classify, RSVQA_HR-comp_RSVQA.json -> vqa_compare, …), else vqa.

Conventions, decided once:
  - The image placeholder. `<image>` followed by a newline becomes `<image>` alone, so the chat template's
    `<|vision_end|>` is directly followed by the text, as in Hugging Face's Qwen2-VL processor when an image
    content item is followed by a text item. Any other whitespace is kept. A record with an image but no
    placeholder gets one at the start of its first user turn (noted "added_image_placeholder").
  - Boxes. Record.boxes are pixels of the image; in message text every box becomes Qwen2-VL's own form
    `<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>` on the 0-1000 grid
    (`boxes.box_to_text`). A box that overhangs the image by more than 1 px is an error ("box_outside_image").
  - GeoChat/VRSBench angles. Qwen2-VL has no oriented boxes: the axis-aligned box is kept exactly as given
    and the angle is dropped; a nonzero angle is counted (SkipCounter note "dropped_box_angle").
  - GeoChat task tags are removed from the text (Qwen2-VL does not know them) and become Record.task:
    [refer] -> ground, [grounding] -> ground_multi, [identify] -> identify. `<p>x</p>` becomes
    `<|object_ref_start|>x<|object_ref_end|>`.
  - Multiple choice (task "mc"): the prompt is the question, then "Choices: A. … B. …" (LHRS-Bench's layout), then
    an instruction to answer with the option letter; Record.answer is the letter.
  - Grounding size buckets (extra size_group, the evaluation's S/M/L): small if the pixel box's area <= 32²,
    medium if <= 96², else large.
  - Class names are shown humanized (underscores and CamelCase split, lower case: "BaseballField" ->
    "baseball field"); `class_names=` overrides them. The answer is the shown name.

Layout: this `__init__` holds the API (`read_records`, `load_records`, `reader_names`, the registry `READERS`);
`_common` the registry's `register_reader` and the helpers all formats share; one module per format family
registers its readers: `conversations` (llava, geochat), `vrsbench`, `lhrs_bench`, `geochat_bench`, `tinyrs_eval`,
`dior_rsvg`, `rsvqa`, `classification` (image_folder, tfds); `choices` holds the multiple-choice helpers the
benchmark readers share. `python -m tinyrs_jax.data.readers`
(`__main__`) reads one file and prints its counts.
"""
from __future__ import annotations

import os
from typing import Iterator

from tinyrs_jax.data import images as images_lib
# One module per format family; importing it registers its readers. Their public names are importable from here.
from tinyrs_jax.data.readers._common import (IMAGE_EXTENSIONS, READERS, classification_prompt, humanize_class_name,
                                             normalize_placeholder, register_reader)
from tinyrs_jax.data.readers.choices import (LHRS_TYPE_NAMES, MC_INSTRUCTION, OPTION_LETTERS, answer_letter,
                                             mc_prompt, parse_choices)
from tinyrs_jax.data.readers.classification import TfdsImage, read_image_folder, read_tfds
from tinyrs_jax.data.readers.conversations import (GEOCHAT_GRID, GEOCHAT_TAG_TASKS, convert_geochat_text,
                                                   read_geochat, read_llava)
from tinyrs_jax.data.readers.geochat_bench import (GEOCHAT_BENCH_ANSWERS, GEOCHAT_BENCH_IMAGE_DIRS,
                                                   GEOCHAT_BENCH_KINDS, GEOCHAT_CATEGORY_ALIASES,
                                                   GEOCHAT_GROUNDED_DESCRIPTION_PROMPT, GEOCHAT_IDENTIFY_PROMPT,
                                                   GEOCHAT_REFER_PROMPT, read_geochat_bench)
from tinyrs_jax.data.readers.lhrs_bench import LHRS_BENCH_IMAGE_DIRS, read_lhrs_bench
from tinyrs_jax.data.readers.dior_rsvg import (DIOR_RSVG_PROMPT, MEDIUM_AREA, SMALL_AREA, read_dior_rsvg,
                                               size_group)
from tinyrs_jax.data.readers.rsvqa import RSVQA_HINTS, RSVQA_TYPE_TASKS, read_rsvqa
from tinyrs_jax.data.readers.tinyrs_eval import read_tinyrs_eval
from tinyrs_jax.data.readers.vrsbench import read_vrsbench
from tinyrs_jax.data.records import (BOX_TOLERANCE_PX, IMAGE_PLACEHOLDER, TASKS, DataError, Record, SkipCounter,
                                     check_box, validate_record)


def reader_names() -> list[str]:
  return sorted(READERS)


def read_records(format: str, path: str, *, skips: SkipCounter | None = None, verify_images: bool = False,
                 **options) -> Iterator[Record]:
  """Records of `path` in `format`. `verify_images` fully decodes every image (slow; catches corrupt files)."""
  if format not in READERS:
    raise KeyError(f"unknown data format {format!r}; known: {reader_names()}")
  skips = skips if skips is not None else SkipCounter(strict=False, name=os.path.basename(str(path)))
  for record in READERS[format](path, skips=skips, **options):
    if verify_images and record.image is not None:
      try:
        images_lib.load_image(record.image, name=record.image if isinstance(record.image, str) else record.id)
      except DataError as e:
        skips.skip(DataError(e.detail, source=f"{record.source} (image {e.source})", line=record.line,
                             field="image", reason=e.reason))
        continue
    yield record


def load_records(format: str, path: str, **kw) -> list[Record]:
  return list(read_records(format, path, **kw))
