"""The built-in benchmarks, as config entries (configs/eval.py puts them under `config.benchmarks`).

Each entry: the reader (`format`, tinyrs_jax/data/readers/), where the files are (`path`, and the reader
options `split`, `image_dir`, `data_dir`, `prefix` where that reader takes them), the task when the files do not
say it (`task`), which question types to keep (`question_types`, e.g. RSVQA's "presence,comp"), the prompt
template (`prompt`, "{question}" is the record's question text; "" = eval.prompt) and `limit` (-1: all).
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

import ml_collections

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
