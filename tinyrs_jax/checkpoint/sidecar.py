"""The files that travel beside a model's weights, and what marks a folder as one of our workdirs.

Both checkpoint formats need these: an HF folder export (hf.save_hf) copies the tokenizer / processor files
next to its safetensors, and a workdir (orbax_io) keeps a copy of them under <workdir>/tokenizer, named by its
marker file. Neither format module imports the other; both import this one.

  SIDE_FILES                 the tokenizer / processor / generation files of a usable checkpoint folder
  MARKER                     <workdir>/tinyrs_model.json: the model config and the tokenizer folder; marks "ours"
  find_checkpoint(path)      (workdir, step or None) when `path` is a workdir or one of its checkpoints/<step>
"""
from __future__ import annotations

import json
import os
import shutil

# Files next to the weights that belong to a usable checkpoint folder (copied on export when present).
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
              "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
              "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
              "generation_config.json")

MARKER = "tinyrs_model.json"
TOKENIZER_DIR = "tokenizer"  # inside the workdir, so the tokenizer moves with it
CHECKPOINTS_DIR = "checkpoints"  # <workdir>/checkpoints/<step>: the orbax CheckpointManager's folder


def copy_side_files(src_dir: str, dst_dir: str, *, remove_stale: bool = False) -> None:
  """Copies the SIDE_FILES present in `src_dir` into `dst_dir` (nothing when both are the same folder);
  `remove_stale` deletes those `src_dir` lacks from `dst_dir` (left from an earlier copy)."""
  if os.path.realpath(src_dir) == os.path.realpath(dst_dir):
    return
  for name in SIDE_FILES:
    src, out = os.path.join(src_dir, name), os.path.join(dst_dir, name)
    if os.path.exists(src):
      shutil.copyfile(src, out)
    elif remove_stale and os.path.exists(out):
      os.remove(out)


# ------------------------------------------------------------------------------------ workdir marker

def save_tokenizer(workdir: str, src_dir: str, image_cfg=None) -> str:
  """Copies the tokenizer / processor files of `src_dir` into <workdir>/tokenizer; `image_cfg` (an
  ImageProcessorConfig: the limits trained with) replaces the source's preprocessor_config.json. Returns the
  folder relative to the workdir, as the marker records it."""
  dst = os.path.join(workdir, TOKENIZER_DIR)
  os.makedirs(dst, exist_ok=True)
  copy_side_files(src_dir, dst, remove_stale=True)
  if image_cfg is not None:
    image_cfg.save(dst)
  return TOKENIZER_DIR


def tokenizer_path(workdir: str, marker: dict) -> str | None:
  """The marker's tokenizer folder as a path: relative to the workdir (older markers hold absolute paths)."""
  t = marker.get("tokenizer_dir")
  return os.path.join(os.path.abspath(workdir), t) if t else None


def write_marker(workdir: str, model_cfg, tokenizer_dir: str | None = None, extra: dict | None = None):
  from tinyrs_jax.models import presets  # on use: the models package imports flax, this module only os/json
  os.makedirs(workdir, exist_ok=True)
  payload = {"format": "tinyrs_jax", "config": presets.to_hf_dict(model_cfg), "tokenizer_dir": tokenizer_dir,
             **(extra or {})}
  tmp = os.path.join(workdir, MARKER + ".tmp")
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2)
  os.replace(tmp, os.path.join(workdir, MARKER))


def read_marker(workdir: str) -> dict:
  with open(os.path.join(workdir, MARKER)) as f:
    return json.load(f)


def marker_config(workdir: str, marker: dict | None = None):
  """The model config (presets.Qwen2VLConfig) a workdir's marker records."""
  from tinyrs_jax.models import presets
  marker = read_marker(workdir) if marker is None else marker
  return presets.from_hf_dict(marker["config"], source=os.path.join(workdir, MARKER))


def find_checkpoint(path: str) -> tuple[str, int | None] | None:
  """(workdir, step) when `path` is one of our workdirs (step None: the latest) or one of its
  checkpoints/<step> folders (that step); None for anything else (an HF folder, say)."""
  path = os.path.abspath(path)
  if os.path.exists(os.path.join(path, MARKER)):
    return path, None
  parent = os.path.dirname(path)
  if os.path.basename(parent) == CHECKPOINTS_DIR and os.path.exists(os.path.join(os.path.dirname(parent), MARKER)):
    return os.path.dirname(parent), int(os.path.basename(path))
  return None


def is_our_checkpoint(path: str) -> bool:
  return find_checkpoint(path) is not None
