"""Evaluation benchmarks: `vrsbench`, `lhrs_bench` (multiple choice), `geochat_bench` (GeoChat-Bench's JSONL
files) and `tinyrs_eval` (the original work's evaluation JSON), with what they share: option letters and the
multiple-choice prompt (`parse_choices`, `answer_letter`, `mc_prompt`), and finding an image among folders and
extensions."""
from __future__ import annotations

import os
import re
from typing import Any, Iterator, Sequence

from tinyrs_jax.data.readers._common import (IMAGE_EXTENSIONS, _box_to_text, _image_path, _iter_json_objects,
                                             _load_json, _messages_from, _replace, _size_of, normalize_placeholder,
                                             register_reader)
from tinyrs_jax.data.readers.conversations import _GEO_BOX_RE, _GEO_GROUP_RE, _GEO_PHRASE_RE, _GEO_TAG_RE, \
    convert_geochat_text
from tinyrs_jax.data.readers.dior_rsvg import size_group
from tinyrs_jax.data.readers.rsvqa import RSVQA_TYPE_TASKS
from tinyrs_jax.data.records import (BOX_TOLERANCE_PX, IMAGE_PLACEHOLDER, TASKS, DataError, Record, SkipCounter,
                                     check_box, validate_record)


# ----------------------------------------------------------------------------------------------- VRSBench

@register_reader("vrsbench")
def read_vrsbench(path: str, *, skips: SkipCounter, image_dir: str | None = None,
                  check_files: bool = True) -> Iterator[Record]:
  """VRSBench evaluation JSON: referring (box answers), VQA and caption entries."""
  path = os.fspath(path)
  if image_dir is None:
    here = os.path.dirname(os.path.abspath(path))
    image_dir = next((d for d in (os.path.join(here, "Images_val"), os.path.join(here, "images")) if os.path.isdir(d)),
                     here)
  data = _load_json(path)
  if not isinstance(data, list):
    raise DataError("expected a JSON list of evaluation entries", source=path, reason="bad_json")
  for line, obj in enumerate(data, start=1):
    try:
      yield _vrsbench_record(obj, path, line, image_dir, check_files, skips)
    except DataError as e:
      skips.skip(e)


def _vrsbench_record(obj: Any, source: str, line: int, image_dir: str, check_files: bool,
                     skips: SkipCounter) -> Record:
  if not isinstance(obj, dict):
    raise DataError("entry is not an object", source=source, line=line, reason="bad_record")
  for key in ("image_id", "question", "ground_truth"):
    if not isinstance(obj.get(key), str):
      raise DataError(f"missing or non-string {key}", source=source, line=line, field=key, reason="missing_field")
  image = _image_path(obj["image_id"], image_dir, source, line, check_files)
  question, truth = obj["question"], obj["ground_truth"].strip()
  tag = _GEO_TAG_RE.search(question)
  question = _GEO_TAG_RE.sub("", question).strip()
  is_box = bool(_GEO_BOX_RE.fullmatch(truth)) or bool(_GEO_GROUP_RE.fullmatch(truth))
  qtype = str(obj.get("type", ""))
  if is_box:
    task = "ground"
  elif (tag and tag.group(1).lower() == "caption") or qtype.lower() == "caption" or "describe" in question.lower():
    task = "caption"
  else:
    task = "vqa"
  boxes: list = []
  size = None
  if is_box or _GEO_BOX_RE.search(question):
    size = _size_of(image, obj, source, line)
    phrase = _GEO_PHRASE_RE.findall(question)
    label = phrase[0] if phrase else question
    question, found_q = convert_geochat_text(question, *size, notes=skips, source=source, line=line,
                                             field="question")
    truth, found = convert_geochat_text(truth, *size, default_label=label, notes=skips, source=source, line=line,
                                        field="ground_truth")
    boxes = found_q + found
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + question},
              {"role": "assistant", "content": truth}]
  extra = {k: obj[k] for k in ("question_id", "type", "unique", "obj_corner", "size_group") if k in obj}
  record = Record(id=str(obj.get("question_id", f"vrsbench:{line}")), image=image, messages=messages, task=task,
                  answer=None if task == "caption" else truth, boxes=tuple(boxes), source=source, line=line,
                  image_size=size, extra=extra)
  return validate_record(record)


# ------------------------------------------------------------------------------ shared by the benchmark readers

OPTION_LETTERS = "ABCDEFGHIJKLMNOP"
MC_INSTRUCTION = "Answer with the letter of the correct option."
# LHRS-Bench's 11 question types by id (the names its `qtype` keys carry, "1 identity" ... "11 reasoning").
LHRS_TYPE_NAMES = {"1": "identity", "2": "color", "3": "orientation", "4": "shape", "5": "quantity", "6": "area",
                   "7": "distance", "8": "resolution", "9": "modality", "10": "location", "11": "reasoning"}
_OPTION_PREFIX_RE = re.compile(r"^\s*\(?([A-Pa-p])\s*[.):]\s*")
_LONE_LETTER_RE = re.compile(r"\(?([A-Pa-p])\)?[.):]?")
_LETTER_THEN_TEXT_RE = re.compile(r"\(?([A-Pa-p])\s*[.):]\s+\S")


def _existing_dir(base: str, names: Sequence[str]) -> str | None:
  return next((os.path.join(base, n) for n in names if os.path.isdir(os.path.join(base, n))), None)


def _image_any_extension(path: str, skips: SkipCounter | None) -> str:
  """`path`, or the file with the same stem and another image extension when only that one exists (GeoChat's
  aid.jsonl names .png files that AID ships as .jpg; LHRS-Bench ships PNG and JPEG copies)."""
  if os.path.exists(path):
    return path
  stem = os.path.splitext(path)[0]
  for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
    if os.path.exists(stem + ext):
      if skips is not None:
        skips.note("image_extension_substituted")
      return stem + ext
  return path


def _image_in(dirs: Sequence[str], relative: str, source: str, line: int, check_files: bool,
              skips: SkipCounter | None, field: str = "image") -> str:
  """The first of `dirs` holding `relative` (any image extension); a missing image names the first candidate."""
  if not isinstance(relative, str) or not relative.strip():
    raise DataError(f"{field} is {relative!r}, expected a file name", source=source, line=line, field=field,
                    reason="missing_field")
  relative = relative.strip()
  if os.path.isabs(relative):
    dirs = [""]
  candidates = [os.path.normpath(os.path.join(d, relative)) for d in dirs]
  if not check_files:
    return candidates[0]
  found = next((c for c in candidates if os.path.exists(c)), None)  # the exact name first, in any folder
  if found is not None:
    return found
  for candidate in candidates:
    found = _image_any_extension(candidate, skips)
    if os.path.exists(found):
      return found
  raise DataError(f"image file {candidates[0]} does not exist", source=source, line=line, field=field,
                  reason="missing_image")


def _norm_text(text: str) -> str:
  return " ".join(re.sub(r"[^\w\s]", " ", str(text).lower()).split())


def parse_choices(value: Any) -> tuple[list[str], str]:
  """Options as stored -> (option texts without their letters, the options as the prompt shows them).

  A string ("A. airport B. harbor C. ...", which LHRS-Bench's official script appends to the question verbatim) is
  split at the letters in order and shown as written; a list is lettered "A. x B. y ..."; a dict maps letters to
  texts."""
  if isinstance(value, dict):
    keys = sorted(value, key=lambda k: str(k).strip().upper())
    texts = [str(value[k]).strip() for k in keys]
    if [str(k).strip().upper().rstrip(".") for k in keys] != list(OPTION_LETTERS[:len(keys)]):
      raise ValueError(f"option keys {keys} are not A, B, C, ...")
  elif isinstance(value, (list, tuple)):
    texts = []
    for i, item in enumerate(value):
      text = str(item).strip()
      m = _OPTION_PREFIX_RE.match(text)
      if i < len(OPTION_LETTERS) and m and m.group(1).upper() == OPTION_LETTERS[i]:
        text = text[m.end():].strip()
      texts.append(text)
  elif isinstance(value, str):
    spans, pos = [], 0
    for letter in OPTION_LETTERS:
      m = re.compile(rf"(?:^|(?<=[\s,;]))\(?{letter}\s*[.):]").search(value, pos)
      if not m:
        break
      spans.append((m.start(), m.end()))
      pos = m.end()
    texts = [value[end:(spans[k + 1][0] if k + 1 < len(spans) else len(value))].strip().rstrip(",;").strip()
             for k, (_, end) in enumerate(spans)]
    shown = value.strip()
  else:
    raise ValueError(f"options are {type(value).__name__}, expected a string, list or dict")
  if not 2 <= len(texts) <= len(OPTION_LETTERS) or not all(texts):
    raise ValueError(f"cannot read 2-{len(OPTION_LETTERS)} lettered, non-empty options from {value!r}")
  if not isinstance(value, str):
    shown = " ".join(f"{OPTION_LETTERS[i]}. {t}" for i, t in enumerate(texts))
  return texts, shown


def answer_letter(answer: Any, choices: Sequence[str]) -> str:
  """The option letter of a stored answer: a letter ("B", "b", "(B)", "B."), a lettered option ("B. forest"), or
  exactly one option's text. Raises ValueError otherwise."""
  if not isinstance(answer, str) or not answer.strip():
    raise ValueError(f"answer {answer!r} is not a letter or an option text")
  text = answer.strip()
  m = _LONE_LETTER_RE.fullmatch(text) or _LETTER_THEN_TEXT_RE.match(text)
  if m:
    letter = m.group(1).upper()
  else:
    hits = [i for i, c in enumerate(choices) if _norm_text(c) == _norm_text(text)]
    if len(hits) != 1:
      raise ValueError(f"answer {answer!r} is neither an option letter nor exactly one option's text")
    letter = OPTION_LETTERS[hits[0]]
  if OPTION_LETTERS.index(letter) >= len(choices):
    raise ValueError(f"answer {letter} but only {len(choices)} options")
  return letter


def mc_prompt(question: str, shown_choices: str) -> str:
  """The question, its options on a "Choices:" line (LHRS-Bench's layout), and the instruction."""
  return f"{IMAGE_PLACEHOLDER}{question.strip()}\nChoices: {shown_choices} {MC_INSTRUCTION}"


# --------------------------------------------------------------------------------------------- LHRS-Bench

LHRS_BENCH_IMAGE_DIRS = ("imgs_png", "imgs_jpg", "images", "imgs")


@register_reader("lhrs_bench")
def read_lhrs_bench(path: str, *, skips: SkipCounter, image_dir: str | None = None,
                    check_files: bool = True) -> Iterator[Record]:
  """LHRS-Bench (qa.json): one multiple-choice record per question of every image entry."""
  path = os.fspath(path)
  data = _load_json(path)
  if isinstance(data, list):
    raise DataError("a JSON list, not LHRS-Bench's {\"data\": [...], \"qtype\": {...}}; the evaluation suite's "
                    "conversation-form copy (LHRS-Bench.json) reads with format 'tinyrs_eval'", source=path,
                    reason="bad_json")
  if not isinstance(data, dict) or not isinstance(data.get("data"), list):
    raise DataError('expected {"data": [...], "qtype": {...}}', source=path, field="data", reason="bad_json")
  type_names = _lhrs_type_names(data.get("qtype"), path)
  here = os.path.dirname(os.path.abspath(path))
  if image_dir is not None:
    dirs = [image_dir]
  else:
    dirs = [os.path.join(here, n) for n in LHRS_BENCH_IMAGE_DIRS if os.path.isdir(os.path.join(here, n))] or [here]
  for line, item in enumerate(data["data"], start=1):
    if not isinstance(item, dict) or not isinstance(item.get("qa_pairs"), list):
      skips.skip(DataError("entry is not an object with a qa_pairs list", source=path, line=line, field="qa_pairs",
                           reason="missing_field"))
      continue
    for number, qa in enumerate(item["qa_pairs"], start=1):
      try:
        yield _lhrs_record(item, qa, line, number, path, dirs, type_names, check_files, skips)
      except DataError as e:
        skips.skip(e)


def _lhrs_type_names(qtype: Any, source: str) -> dict[str, str]:
  """`qtype` keys "1 identity", ... -> {"1": "identity", ...}; absent -> the standard 11 names."""
  if qtype is None:
    return dict(LHRS_TYPE_NAMES)
  if not isinstance(qtype, dict):
    raise DataError(f"qtype is {type(qtype).__name__}, expected an object", source=source, field="qtype",
                    reason="bad_json")
  names = {}
  for key, value in qtype.items():
    parts = str(key).strip().split(None, 1)
    if len(parts) == 2:
      names[parts[0]] = parts[1].strip()
    elif parts:
      names[parts[0]] = str(value).strip() if isinstance(value, str) and value.strip() else parts[0]
  return names


def _lhrs_record(item: dict, qa: Any, line: int, number: int, source: str, dirs: Sequence[str],
                 type_names: dict[str, str], check_files: bool, skips: SkipCounter) -> Record:
  field = f"qa_pairs[{number - 1}]"
  where = dict(source=source, line=line)
  if not isinstance(qa, dict):
    raise DataError("question is not an object", field=field, reason="bad_record", **where)
  question = qa.get("question")
  if not isinstance(question, str) or not question.strip():
    raise DataError("missing or empty question", field=f"{field}.question", reason="missing_field", **where)
  try:
    choices, shown = parse_choices(qa.get("choices"))
  except ValueError as e:
    raise DataError(str(e), field=f"{field}.choices", reason="bad_choices", **where) from None
  try:
    letter = answer_letter(qa.get("answer"), choices)
  except ValueError as e:
    raise DataError(str(e), field=f"{field}.answer", reason="bad_answer", **where) from None
  type_ids = qa.get("type", [])
  type_ids = [type_ids] if isinstance(type_ids, (str, int)) else type_ids
  if not isinstance(type_ids, list):
    raise DataError(f"type is {type(type_ids).__name__}, expected a list of type ids", field=f"{field}.type",
                    reason="bad_type", **where)
  unknown = [t for t in type_ids if str(t).strip() not in type_names]
  if unknown:
    raise DataError(f"type ids {unknown} are not in qtype ({sorted(type_names)})", field=f"{field}.type",
                    reason="bad_type", **where)
  image = _image_in(dirs, item.get("filename"), source, line, check_files, skips, field="filename")
  question_id = str(qa.get("question_id", qa.get("id", f"{line}-{number}")))
  messages = [{"role": "user", "content": mc_prompt(normalize_placeholder(question).replace(IMAGE_PLACEHOLDER, ""),
                                                    shown)},
              {"role": "assistant", "content": letter}]
  return validate_record(Record(
      id=f"lhrs_bench/{question_id}", image=image, messages=messages, task="mc", answer=letter, source=source,
      line=line, extra={"choices": choices, "question_types": [type_names[str(t).strip()] for t in type_ids],
                        "type_ids": [str(t).strip() for t in type_ids], "question_id": question_id,
                        "filename": item.get("filename")}))


# ----------------------------------------------------------------------------------------- GeoChat-Bench

# File stem (lower case) -> kind, and where each kind's images usually are, relative to the JSONL's folder.
GEOCHAT_BENCH_KINDS = {"aid": "scene", "ucmerced": "scene", "lrben": "vqa", "hrben": "vqa", "referring": "referring",
                       "region_captioning": "region_captioning", "grounding_description": "grounding_description"}
GEOCHAT_BENCH_IMAGE_DIRS = {
    "aid": ("AID", "aid", "images"), "ucmerced": (os.path.join("UCMerced_LandUse", "Images"), "Images", "images"),
    "lrben": ("Images_LR", "images"), "hrben": ("Data", "images"),
    "referring": ("final_images_llava", "images"), "region_captioning": ("final_images_llava", "images"),
    "grounding_description": ("final_images_llava", "images")}
# The RSVQA answer file GeoChat's VQA question ids index (the JSONL files carry no answers).
GEOCHAT_BENCH_ANSWERS = {"lrben": "LR_split_test_answers.json", "hrben": "USGS_split_test_phili_answers.json"}
GEOCHAT_CATEGORY_ALIASES = {"comparison": "comp", "compare": "comp", "ruralurban": "rural_urban",
                            "rural_or_urban": "rural_urban", "counting": "count"}
GEOCHAT_REFER_PROMPT = "Give me the location of <|object_ref_start|>{phrase}<|object_ref_end|>"
GEOCHAT_IDENTIFY_PROMPT = "What is the object present at {box}"
GEOCHAT_GROUNDED_DESCRIPTION_PROMPT = "Describe the image in detail, with the box of each object you mention."


@register_reader("geochat_bench")
def read_geochat_bench(path: str, *, skips: SkipCounter, kind: str | None = None, task: str | None = None,
                       image_dir: str | None = None, data_dir: str | None = None, answers_file: str | None = None,
                       require_answer: bool = True, check_files: bool = True) -> Iterator[Record]:
  """One GeoChat-Bench JSONL file; its kind from the file name (aid, UCmerced, lrben, hrben, referring,
  region_captioning, grounding_description) unless `kind` says it (scene, vqa, referring, region_captioning,
  grounding_description). VQA answers come from the RSVQA answers file (`answers_file`, or found in `data_dir`,
  the JSONL's folder or next to the images). `task` overrides every record's task."""
  path = os.fspath(path)
  stem = os.path.splitext(os.path.basename(path))[0].lower()
  kinds = set(GEOCHAT_BENCH_KINDS.values())
  kind = kind or GEOCHAT_BENCH_KINDS.get(stem)
  if kind is not None and kind not in kinds:
    raise DataError(f"kind {kind!r} is not one of {sorted(kinds)}", source=path, reason="bad_option")
  if task is not None and task not in TASKS:
    raise DataError(f"unknown task {task!r}; known: {sorted(TASKS)}", source=path, field="task", reason="bad_task")
  here = os.path.dirname(os.path.abspath(path))
  image_dir = image_dir or _existing_dir(here, GEOCHAT_BENCH_IMAGE_DIRS.get(stem, ("images",))) or here
  answers = None
  for line, obj in _iter_json_objects(path, skips):
    try:
      if not isinstance(obj, dict):
        raise DataError(f"record is {type(obj).__name__}, expected an object", source=path, line=line,
                        reason="bad_record")
      this_kind = kind or _geochat_bench_kind(obj, path, line)
      if this_kind == "vqa" and answers is None:
        answers = _geochat_vqa_answers(stem, answers_file, data_dir, here, image_dir, path)
      record = _GEOCHAT_BENCH_BUILDERS[this_kind](obj, path, line, image_dir, check_files, skips,
                                                  answers=answers, require_answer=require_answer)
      if task is not None:
        record = _replace(record, task=task)
      yield record
    except DataError as e:
      skips.skip(e)


def _geochat_bench_kind(obj: dict, source: str, line: int) -> str:
  if "text" in obj and "category" in obj:
    return "vqa"
  if "text" in obj and "ground_truth" in obj:
    return "scene"
  if "description" in obj:
    return "grounding_description"
  if "question" in obj and isinstance(obj.get("ground_truth"), list):
    return "referring"
  if isinstance(obj.get("question"), str) and _GEO_BOX_RE.search(obj["question"]):
    return "region_captioning"
  raise DataError("cannot tell the record's kind from its fields; pass kind=", source=source, line=line,
                  reason="unknown_kind")


def _geochat_vqa_answers(stem: str, answers_file: str | None, data_dir: str | None, here: str, image_dir: str,
                         source: str) -> dict:
  """{question id: answer} from an RSVQA answers file, or {} when none is found (records then need inline
  answers)."""
  if answers_file is None:
    names = [GEOCHAT_BENCH_ANSWERS[stem]] if stem in GEOCHAT_BENCH_ANSWERS else list(GEOCHAT_BENCH_ANSWERS.values())
    folders = [d for d in (data_dir, here, os.path.dirname(os.path.normpath(image_dir)), image_dir) if d]
    answers_file = next((os.path.join(d, n) for d in folders for n in names if os.path.exists(os.path.join(d, n))),
                        None)
    if answers_file is None:
      return {}
  data = _load_json(answers_file)
  if not isinstance(data, dict) or not isinstance(data.get("answers"), list):
    raise DataError('expected {"answers": [...]}', source=answers_file, field="answers", reason="bad_json")
  table: dict = {}
  for row in data["answers"]:
    if isinstance(row, dict) and row.get("active", True) and isinstance(row.get("answer"), str):
      table.setdefault(row.get("question_id", row.get("id")), row["answer"].strip())
  return table


def _strip_placeholder(text: str) -> str:
  return normalize_placeholder(text).replace(IMAGE_PLACEHOLDER, "").strip()


def _require_str(obj: dict, key: str, source: str, line: int) -> str:
  value = obj.get(key)
  if not isinstance(value, str) or not value.strip():
    raise DataError(f"missing or empty {key}", source=source, line=line, field=key, reason="missing_field")
  return value


def _norm_class(name: str) -> str:
  return re.sub(r"[\s_\-]+", "", str(name)).lower()


def _geochat_scene(obj, source, line, image_dir, check_files, skips, **_) -> Record:
  text = _strip_placeholder(_require_str(obj, "text", source, line))
  truth = _require_str(obj, "ground_truth", source, line).strip()
  question_id = str(obj.get("question_id", f"{line}"))
  image = _image_in([image_dir], _require_str(obj, "image", source, line), source, line, check_files, skips)
  listed = re.search(r"classes:[ \t]*([^\n]*)", text, re.IGNORECASE)
  listed = listed.group(1) if listed else ""
  classes = [c.strip().rstrip(".").strip() for c in listed.split(",") if c.strip().rstrip(".").strip()]
  # The official scorer's class is the question id's folder ("Airport/airport_1"); ground_truth has known
  # glitches (AID's "MediumResidentialgt").
  key = question_id.split("/", 1)[0] if "/" in question_id else truth
  candidates = [key, truth] + ([truth[:-2]] if truth.lower().endswith("gt") else [])
  answer = next((c for cand in candidates for c in classes if _norm_class(c) == _norm_class(cand)), key)
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + text}, {"role": "assistant", "content": answer}]
  return validate_record(Record(
      id=f"{os.path.splitext(os.path.basename(source))[0]}/{question_id}", image=image, messages=messages,
      task="classify", answer=answer, source=source, line=line,
      extra={"question_id": obj.get("question_id"), "class_key": key, "ground_truth": truth, "classes": classes}))


def _geochat_vqa(obj, source, line, image_dir, check_files, skips, *, answers, require_answer, **_) -> Record:
  text = _strip_placeholder(_require_str(obj, "text", source, line))
  category = str(obj.get("category", obj.get("type", ""))).strip()
  qtype = re.sub(r"[\s/]+", "_", category.lower())
  qtype = GEOCHAT_CATEGORY_ALIASES.get(qtype.replace("_", ""), GEOCHAT_CATEGORY_ALIASES.get(qtype, qtype))
  question_id = obj.get("question_id")
  image = _image_in([image_dir], _require_str(obj, "image", source, line), source, line, check_files, skips)
  answer = next((obj[k] for k in ("ground_truth", "answer", "gt") if isinstance(obj.get(k), str)), None)
  if answer is None and answers:
    answer = answers.get(question_id)
    if answer is None and isinstance(question_id, str) and question_id.strip().isdigit():
      answer = answers.get(int(question_id))
  if answer is None and require_answer:
    raise DataError(f"no answer for question_id {question_id!r}: GeoChat-Bench's VQA files carry none; pass "
                    "answers_file= (RSVQA's LR_split_test_answers.json / USGS_split_test_phili_answers.json) or "
                    "data_dir= (the folder holding it)", source=source, line=line, field="question_id",
                    reason="missing_answer")
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + text}]
  if answer is not None:
    answer = str(answer).strip()
    messages.append({"role": "assistant", "content": answer})
  return validate_record(Record(
      id=f"{os.path.splitext(os.path.basename(source))[0]}/{question_id if question_id is not None else line}",
      image=image, messages=messages, task=RSVQA_TYPE_TASKS.get(qtype, "vqa"), answer=answer, source=source,
      line=line, extra={"question_id": question_id, "question_type": qtype, "category": category}),
      require_assistant=answer is not None)


def _geochat_image_id(obj: dict, source: str, line: int) -> str:
  image_id = str(obj.get("image_id") or obj.get("image") or "").strip()
  if not image_id:
    raise DataError("missing image_id", source=source, line=line, field="image_id", reason="missing_field")
  return image_id if os.path.splitext(image_id)[1].lower() in IMAGE_EXTENSIONS else image_id + ".png"


def _polygon_boxes(value: Any, size: tuple[int, int], source: str, line: int, field: str,
                   skips: SkipCounter) -> list[tuple[float, float, float, float]]:
  """Ground-truth polygons in pixels ([[x, y] x 4], 8 numbers, or an axis-aligned [x1, y1, x2, y2]; one or a list
  of them) -> their axis-aligned boxes, clipped to the image (noted "clipped_box"); a rotated polygon's box is its
  hull (noted "polygon_to_box")."""
  def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)

  def is_point(v):
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(is_number(c) for c in v)

  if isinstance(value, (list, tuple)) and value and (all(is_number(v) for v in value)
                                                     or all(is_point(v) for v in value)):
    value = [value]
  if not isinstance(value, (list, tuple)) or not value:
    raise DataError(f"ground truth {value!r} is not a list of polygons", source=source, line=line, field=field,
                    reason="bad_box")
  width, height = size
  boxes = []
  for i, poly in enumerate(value):
    if isinstance(poly, (list, tuple)) and all(is_point(p) for p in poly) and len(poly) >= 3:
      xs, ys = [float(p[0]) for p in poly], [float(p[1]) for p in poly]
      rotated = len({round(x, 3) for x in xs}) > 2 or len({round(y, 3) for y in ys}) > 2
    elif isinstance(poly, (list, tuple)) and len(poly) in (4, 8) and all(is_number(v) for v in poly):
      xs, ys = [float(v) for v in poly[0::2]], [float(v) for v in poly[1::2]]
      rotated = len(poly) == 8 and (len({round(x, 3) for x in xs}) > 2 or len({round(y, 3) for y in ys}) > 2)
    else:
      raise DataError(f"polygon {i} {poly!r} is not [[x, y], ...], 8 numbers or [x1, y1, x2, y2]", source=source,
                      line=line, field=f"{field}[{i}]", reason="bad_box")
    box = (min(xs), min(ys), max(xs), max(ys))
    clipped = (max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height)))
    if clipped != box and (box[0] < -BOX_TOLERANCE_PX or box[1] < -BOX_TOLERANCE_PX
                           or box[2] > width + BOX_TOLERANCE_PX or box[3] > height + BOX_TOLERANCE_PX):
      skips.note("clipped_box")
    if rotated:
      skips.note("polygon_to_box")
    boxes.append(check_box(clipped, width, height, source=source, line=line, field=f"{field}[{i}]"))
  return boxes


def _geochat_referring(obj, source, line, image_dir, check_files, skips, **_) -> Record:
  phrase = " ".join(_require_str(obj, "question", source, line).split())
  image = _image_in([image_dir], _geochat_image_id(obj, source, line), source, line, check_files, skips,
                    field="image_id")
  size = _size_of(image, obj, source, line)
  truth = obj.get("ground_truth")
  if isinstance(truth, str):
    text, found = convert_geochat_text(truth, *size, default_label=phrase, notes=skips, source=source, line=line,
                                       field="ground_truth")
    boxes = [b for _, b in found]
    if not boxes:
      raise DataError(f"no box in ground_truth {truth!r}", source=source, line=line, field="ground_truth",
                      reason="bad_box")
  else:
    boxes = _polygon_boxes(truth, size, source, line, "ground_truth", skips)
  answer = "".join(_box_to_text(b, *size, label=phrase if i == 0 else None) for i, b in enumerate(boxes))
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + GEOCHAT_REFER_PROMPT.format(phrase=phrase)},
              {"role": "assistant", "content": answer}]
  extra = {k: obj[k] for k in ("question_id", "type", "dataset", "obj_ids", "size_group") if k in obj}
  return validate_record(Record(
      id=f"referring/{obj.get('question_id', line)}", image=image, messages=messages,
      task="ground" if len(boxes) == 1 else "ground_multi", answer=answer,
      boxes=tuple((phrase, b) for b in boxes), source=source, line=line, image_size=size, extra=extra))


def _geochat_region_caption(obj, source, line, image_dir, check_files, skips, **_) -> Record:
  region = obj.get("question")
  caption = " ".join(_require_str(obj, "ground_truth", source, line).split())
  image = _image_in([image_dir], _geochat_image_id(obj, source, line), source, line, check_files, skips,
                    field="image_id")
  size = _size_of(image, obj, source, line)
  if isinstance(region, str) and _GEO_BOX_RE.search(region):
    text, found = convert_geochat_text(region.strip(), *size, default_label=caption, notes=skips, source=source,
                                       line=line, field="question")
    boxes = [b for _, b in found]
  else:
    boxes = _polygon_boxes(region, size, source, line, "question", skips)
    text = "".join(_box_to_text(b, *size) for b in boxes)
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + GEOCHAT_IDENTIFY_PROMPT.format(box=text)},
              {"role": "assistant", "content": caption}]
  extra = {k: obj[k] for k in ("question_id", "type", "dataset", "obj_ids", "size_group") if k in obj}
  return validate_record(Record(
      id=f"region_captioning/{obj.get('question_id', line)}", image=image, messages=messages, task="identify",
      answer=caption, boxes=tuple((caption, b) for b in boxes), source=source, line=line, image_size=size,
      extra=extra))


def _geochat_grounding_description(obj, source, line, image_dir, check_files, skips, **_) -> Record:
  description = _require_str(obj, "description", source, line).strip()
  image = _image_in([image_dir], _geochat_image_id(obj, source, line), source, line, check_files, skips,
                    field="image_id")
  size = _size_of(image, obj, source, line)
  text, found = convert_geochat_text(description, *size, notes=skips, source=source, line=line,
                                     field="description")
  messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + GEOCHAT_GROUNDED_DESCRIPTION_PROMPT},
              {"role": "assistant", "content": text.strip()}]
  return validate_record(Record(
      id=f"grounding_description/{obj.get('question_id', line)}", image=image, messages=messages,
      task="ground_multi", answer=None, boxes=tuple(found), source=source, line=line, image_size=size,
      extra={k: obj[k] for k in ("question_id", "image_id") if k in obj}))


_GEOCHAT_BENCH_BUILDERS = {"scene": _geochat_scene, "vqa": _geochat_vqa, "referring": _geochat_referring,
                           "region_captioning": _geochat_region_caption,
                           "grounding_description": _geochat_grounding_description}


# ------------------------------------------------------------------------ the original work's evaluation JSON

# A ground-truth pixel box as the original's scorer finds it: the first "[x1, y1, x2, y2]" of the answer.
_PIXEL_BOX_RE = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,"
                           r"\s*(-?\d+(?:\.\d+)?)\s*\]")
# Task (and RSVQA question type) by the suite's file names when the records do not say it: cls_AID.json,
# RSVQA_HR-comp_RSVQA.json, LHRS-Bench.json.
_TINYRS_FILE_TASKS = ((re.compile(r"^cls_", re.I), "classify", None),
                      *((re.compile(rf"^RSVQA_(?:LR|HR)-{t}(?:_|$)", re.I), task, t)
                        for t, task in RSVQA_TYPE_TASKS.items()),
                      (re.compile(r"^LHRS[-_]?Bench", re.I), "mc", None))
_TINYRS_KEYS = {"image", "image_path", "conversations", "size", "type", "id"}


@register_reader("tinyrs_eval")
def read_tinyrs_eval(path: str, *, skips: SkipCounter, task: str | None = None, image_dir: str | None = None,
                     check_files: bool = True, require_assistant: bool = True) -> Iterator[Record]:
  """The original work's evaluation JSON (ScoreRS/VHM lineage; cls_AID.json, RSVQA_*_RSVQA.json,
  VG_DOIR_RSVG_test.json, LHRS-Bench.json, ...). `task` None infers it per record (module docstring)."""
  path = os.fspath(path)
  if task is not None and task not in TASKS:
    raise DataError(f"unknown task {task!r}; known: {sorted(TASKS)}", source=path, field="task", reason="bad_task")
  data = _load_json(path)
  if not isinstance(data, list):
    raise DataError(f"expected a JSON list of records, found {type(data).__name__}", source=path, reason="bad_json")
  stem = os.path.splitext(os.path.basename(path))[0]
  file_task = next(((t, q) for pattern, t, q in _TINYRS_FILE_TASKS if pattern.search(stem)), (None, None))
  for line, obj in enumerate(data, start=1):
    try:
      yield _tinyrs_eval_record(obj, path, line, stem, task, file_task, image_dir, check_files, require_assistant,
                                skips)
    except DataError as e:
      skips.skip(e)


def _tinyrs_image(obj: dict, source: str, line: int, stem: str, image_dir: str | None, check_files: bool) -> str:
  """As the original's inference resolves it: image_path absolute -> image_path/image; relative -> next to the
  JSON; absent -> the folder named after the JSON (AID.json -> AID/). `image_dir` replaces the folder."""
  name = obj.get("image")
  if not isinstance(name, str) or not name.strip():
    raise DataError("missing or empty image", source=source, line=line, field="image", reason="missing_field")
  here = os.path.dirname(os.path.abspath(source))
  if image_dir is not None:
    folder = image_dir
  elif obj.get("image_path") is None:
    folder = os.path.join(here, stem)
  elif isinstance(obj["image_path"], str):
    folder = obj["image_path"] if os.path.isabs(obj["image_path"]) else os.path.join(here, obj["image_path"])
  else:
    raise DataError(f"image_path is {type(obj['image_path']).__name__}, expected a path", source=source, line=line,
                    field="image_path", reason="bad_image_field")
  return _image_path(name.strip(), folder, source, line, check_files)


def _tinyrs_size(obj: dict, source: str, line: int) -> tuple[int, int] | None:
  """`size` is [height, width] (the original's scorers unpack `h, w = size`) -> (width, height)."""
  size = obj.get("size")
  if size is None:
    return None
  if (not isinstance(size, (list, tuple)) or len(size) != 2
      or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in size)):
    raise DataError(f"size {size!r} is not [height, width]", source=source, line=line, field="size",
                    reason="bad_size")
  return int(size[1]), int(size[0])


def _tinyrs_eval_record(obj: Any, source: str, line: int, stem: str, task: str | None,
                        file_task: tuple[str | None, str | None],
                        image_dir: str | None, check_files: bool, require_assistant: bool,
                        skips: SkipCounter) -> Record:
  if not isinstance(obj, dict):
    raise DataError(f"record is {type(obj).__name__}, expected an object", source=source, line=line,
                    reason="bad_record")
  messages = _messages_from(obj, source, line)
  image = _tinyrs_image(obj, source, line, stem, image_dir, check_files)
  first_user = next((m for m in messages if m["role"] == "user"), None)
  if first_user is not None and not any(IMAGE_PLACEHOLDER in m["content"] for m in messages):
    first_user["content"] = IMAGE_PLACEHOLDER + first_user["content"]
    skips.note("added_image_placeholder")
  last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
  raw = messages[last]["content"].strip() if last is not None else None
  answer_field = f"conversations[{last}].value"
  size = _tinyrs_size(obj, source, line)
  qtype = obj.get("type")
  box_match = _PIXEL_BOX_RE.search(raw) if raw is not None else None
  if task is None:
    if box_match is not None:
      task = "ground"
    elif isinstance(qtype, str) and qtype in RSVQA_TYPE_TASKS:
      task = RSVQA_TYPE_TASKS[qtype]
    elif isinstance(qtype, list) and qtype and all(str(t) in LHRS_TYPE_NAMES for t in qtype):
      task = "mc"
    else:
      task = file_task[0] or "vqa"
  extra = {k: v for k, v in obj.items() if k not in _TINYRS_KEYS}
  extra.update({k: obj[k] for k in ("type", "size", "image_path") if k in obj})
  if isinstance(qtype, str):
    extra["question_type"] = qtype
  elif file_task[1] is not None and task == file_task[0]:
    extra["question_type"] = file_task[1]
  if isinstance(qtype, list) and all(str(t) in LHRS_TYPE_NAMES for t in qtype):
    extra["question_types"] = [LHRS_TYPE_NAMES[str(t)] for t in qtype]
  boxes: tuple = ()
  answer = raw
  if task == "ground" and raw is not None:
    if box_match is None:
      raise DataError(f"answer {raw!r} has no [x1, y1, x2, y2] box", source=source, line=line, field=answer_field,
                      reason="bad_box")
    size = size or _size_of(image, {}, source, line)
    box = check_box([float(v) for v in box_match.groups()], *size, source=source, line=line, field=answer_field)
    label = _strip_placeholder(first_user["content"]) if first_user else ""
    boxes = ((label, box),)
    messages[last] = {"role": "assistant", "content": _box_to_text(box, *size)}  # Qwen2-VL's form, for training
    extra["size_group"] = size_group(box)
  elif task == "mc" and raw is not None:
    m = _LONE_LETTER_RE.fullmatch(raw) or _LETTER_THEN_TEXT_RE.match(raw)
    if m:
      answer = m.group(1).upper()
      if answer != raw:
        extra["raw_answer"] = raw
  return validate_record(Record(
      id=str(obj.get("id", f"{stem}:{line}")), image=image, messages=messages, task=task, answer=answer,
      boxes=boxes, source=source, line=line, image_size=size, extra=extra), require_assistant=require_assistant)
