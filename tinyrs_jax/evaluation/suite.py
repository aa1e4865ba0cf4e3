"""The built-in benchmarks, as config entries (configs/eval.py puts them under `config.benchmarks`).

Each entry: the reader (`format`, tinyrs_jax/data/readers/), where the files are (`path`, and the reader
options `split`, `image_dir`, `data_dir`, `prefix` where that reader takes them), the task when the files do not
say it (`task`), which question types to keep (`question_types`, e.g. RSVQA's "presence,comp"), the prompt
template (`prompt`, "{question}" is the record's question text; "" = eval.prompt) and `limit` (-1: all).
The question's wording: eval.prompt_style `tinyrs` (the default) gives records whose original wording is known
(DIOR-RSVG, RSVQA, the original's evaluation JSON) the original work's prompt (`original_prompt`); `ours` keeps
the readers' (e.g. RSVQA's appended "Answer yes or no."). A benchmark's `prompt` template applies on top.
A benchmark runs when its path is set (and it is named in eval.run, when that is given):

    python -m tinyrs_jax.main --config=configs/eval.py --workdir=runs/eval --config.init.workdir=runs/grpo \
      --config.benchmarks.aid.path=/data/AID --config.benchmarks.dior_rsvg.path=/data/DIOR-RSVG

The original work's suite (aybora/TinyRS eval): aid, meter_ml, nwpu_resisc45, siri_whu, whu_rs19 (class folders,
or the original's evaluation JSON with format=tinyrs_eval), rsvqa_hr / rsvqa_lr (their question types),
dior_rsvg (test split), lhrs_bench. Also: ucm and eurosat through TensorFlow Datasets (path = the TFDS name), the
VRSBench evaluation files, GeoChat-Bench's JSONL files, and `synthetic` (our generator's validation split, every
task; what the demo evaluates) and `synthetic_caption` (its captions).
"""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from tinyrs_jax.data.records import IMAGE_PLACEHOLDER

FIELDS = dict(format="", path="", split="", image_dir="", data_dir="", prefix="", task="", question_types="",
              prompt="", limit=-1)

# name: (format, overrides) — the original suite first
BUILTIN = {
    "aid": ("image_folder", dict(task="classify")),
    "meter_ml": ("tinyrs_eval", dict(task="classify")),
    "nwpu_resisc45": ("image_folder", dict(task="classify")),
    "siri_whu": ("image_folder", dict(task="classify")),
    "whu_rs19": ("image_folder", dict(task="classify")),
    "rsvqa_hr": ("rsvqa", dict(split="test", prefix="USGS", question_types="presence,comp")),
    "rsvqa_lr": ("rsvqa", dict(split="test", prefix="LR", question_types="presence,comp,rural_urban")),
    "dior_rsvg": ("dior_rsvg", dict(split="test")),
    "lhrs_bench": ("lhrs_bench", {}),
    "ucm": ("tfds", dict(task="classify", split="train")),  # path: uc_merced (TFDS has one split)
    "eurosat": ("tfds", dict(task="classify", split="train")),  # path: eurosat/rgb
    "vrsbench_cap": ("vrsbench", {}),
    "vrsbench_vqa": ("vrsbench", {}),
    "vrsbench_ref": ("vrsbench", {}),
    "geochat_aid": ("geochat_bench", dict(task="classify")),
    "geochat_ucm": ("geochat_bench", dict(task="classify")),
    "geochat_lrben": ("geochat_bench", {}),
    "geochat_hrben": ("geochat_bench", {}),
    "geochat_referring": ("geochat_bench", {}),
    "synthetic": ("llava", {}),  # the demo's validation split (data.demo fills the path): every task
    "synthetic_caption": ("llava", {}),  # the demo's caption validation split (pretraining's)
}
ORIGINAL_SUITE = ("aid", "meter_ml", "nwpu_resisc45", "siri_whu", "whu_rs19", "rsvqa_hr", "rsvqa_lr", "dior_rsvg",
                  "lhrs_bench")


def entry(format: str, **overrides) -> ml_collections.ConfigDict:
  unknown = set(overrides) - set(FIELDS)
  if unknown:
    raise ValueError(f"unknown benchmark fields {sorted(unknown)}; known: {sorted(FIELDS)}")
  return ml_collections.ConfigDict({**FIELDS, "format": format, **overrides})


def builtin_benchmarks() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({name: entry(fmt, **kw) for name, (fmt, kw) in BUILTIN.items()})


# ------------------------------------------------------------------------------------------------- prompts

PROMPT_STYLES = ("tinyrs", "ours")
# The original work's prompts for Qwen2-VL models (aybora/TinyRS eval/src/evaluation/lm_prediction_call.py, the
# Qwen2-VL branch; rs_evaluation.py `convt_qa`): query = prefix + " " + question + " " + suffix per task type,
# then "<image>\n" removed. Classification has no prefix, VQA neither prefix nor suffix ("" + " " + q + " "),
# grounding the prefix and suffix below, LHRS-Bench the question alone. Spaces kept exactly as it builds them.
ORIGINAL_VG_PREFIX = "Output the bounding box of the following object in the image. <|object_ref_start|>"
ORIGINAL_VG_SUFFIX = "<|object_ref_end|>"


def original_prompt(task: str, extra: Mapping[str, Any]) -> str | None:
  """The original's user turn for a record (the image first, then its text), or None where the record does not
  carry its raw question (`extra["raw_question"]`, set by the dior_rsvg, rsvqa and tinyrs_eval readers) or the
  task has no original wording (captions, our synthetic tasks, LHRS-Bench's qa.json: they keep ours). The
  dior_rsvg reader's raw question is the object's description (the XML has no question text); exact parity with
  the original's inputs needs its own evaluation JSON (format tinyrs_eval), whose questions are used as written."""
  q = extra.get("raw_question")
  if not isinstance(q, str) or not q.strip():
    return None
  q = q.replace("<image>\n", "").replace(IMAGE_PLACEHOLDER, "")
  if task == "classify":
    text = " " + q
  elif task.startswith("vqa"):
    text = " " + q + " "
  elif task == "ground":
    text = ORIGINAL_VG_PREFIX + " " + q + " " + ORIGINAL_VG_SUFFIX
  elif task == "mc":
    text = q
  else:
    return None
  return IMAGE_PLACEHOLDER + text
