"""Batches for the trainers from the config: the data pipeline's static batches, or random ones.

Everything the trainer needs from an input is:
  next(it)            a static batch (see tinyrs_jax/models/batch.py) of this process's rows, NumPy arrays
  it.get_state()      a JSON-able dict; it.set_state(d) continues exactly after the batch it was taken at

This module is the config wiring (resolve_data, make_iterator, total_steps, EvalData, the GRPO prompts).
Where the batches go is elsewhere, and its names are importable from here as before:
  train/placement.py       host -> global placement: place_batch, to_global, check_batch_split, stack_microbatches
  train/random_batches.py  random_batch and RandomBatches (deterministic random batches)
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from tinyrs_jax.models.presets import Qwen2VLConfig
from tinyrs_jax.train.placement import (TEXT_KEYS, check_batch_split, global_shape, pad_batch,  # noqa: F401
                                        place_batch, slice_rows, stack_microbatches, to_global)
from tinyrs_jax.train.random_batches import RandomBatches, random_batch  # noqa: F401


# ------------------------------------------------------------------------------------ config -> inputs

ARRAY_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "loss_mask")
IMAGES_PER_ROW = 1  # image slots per batch row: a Record holds one image (data/records.py)


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What the config's data block resolves to (paths made concrete, demo assets built when asked)."""
  source: str  # "random" or "pipeline"
  tokenizer_dir: str | None = None
  train_path: str | None = None
  val_path: str | None = None


def resolve_data(config) -> DataSpec:
  d = config.data
  if d.source == "random":
    return DataSpec("random", d.get("tokenizer_dir") or None)
  if d.source != "pipeline":
    raise ValueError(f"unknown data.source {d.source!r}; use pipeline or random")
  if d.get("demo", False):
    from tinyrs_jax.data.demo_tokenizer import ensure_demo_assets
    data_dir, tok = ensure_demo_assets(None, int(d.get("demo_examples", 2000)), 0)
    stage = config.stage
    return DataSpec("pipeline", d.get("tokenizer_dir") or tok,
                    d.get("train") or os.path.join(data_dir, stage, "train.jsonl"),
                    d.get("val") or os.path.join(data_dir, stage, "val.jsonl"))
  if not d.get("train"):
    raise ValueError("set --config.data.train=<a JSON/JSONL conversations file> (or data.demo=True)")
  return DataSpec("pipeline", d.get("tokenizer_dir") or None, d.train, d.get("val") or None)


def arrays(batch: dict) -> dict[str, np.ndarray]:
  """The model's arrays of a pipeline batch (drops per-row metadata)."""
  return {k: batch[k] for k in ARRAY_KEYS if k in batch}


def reader_spec(config, path: str, prompts: bool = False) -> tuple:
  d = config.data
  options = {}
  if d.get("image_root"):
    options["image_root"] = d.image_root
  if prompts:  # RL prompts: records without an assistant turn are what we want (readers that can require one)
    import inspect
    from tinyrs_jax.data import readers
    reader = readers.READERS.get(d.get("format", "llava"))
    if reader is not None and "require_assistant" in inspect.signature(reader).parameters:
      options["require_assistant"] = False
  return (d.get("format", "llava"), path, options)


def make_processor(config, tokenizer_dir: str | None):
  from tinyrs_jax.data.processor import Processor
  if not tokenizer_dir:
    raise ValueError("no tokenizer folder: set --config.data.tokenizer_dir (or init.hf_dir with tokenizer files)")
  d = config.data
  return Processor.from_folder(tokenizer_dir, min_pixels=int(d.min_pixels), max_pixels=int(d.max_pixels))


def image_config(config, tokenizer_dir: str):
  """The image preprocessing the trainer uses: the folder's preprocessor_config.json with data.min/max_pixels."""
  from tinyrs_jax.data.image_processor import ImageProcessorConfig
  d = config.data
  return dataclasses.replace(ImageProcessorConfig.from_folder(tokenizer_dir), min_pixels=int(d.min_pixels),
                             max_pixels=int(d.max_pixels))


def _buckets(d, name, default):
  v = d.get(name, None)
  return tuple(int(x) for x in v) if v else tuple(default)


def pipeline_kwargs(config) -> dict:
  """The make_dataset settings every trainer's data uses (tools/aot builds its shapes from them too)."""
  from tinyrs_jax.models import batch as batch_lib
  d = config.data
  return dict(length_buckets=_buckets(d, "length_buckets", batch_lib.DEFAULT_LENGTH_BUCKETS),
              patch_buckets=_buckets(d, "patch_buckets", batch_lib.DEFAULT_PATCH_BUCKETS),
              max_images_per_row=IMAGES_PER_ROW, max_length=int(d.max_length),
              worker_count=int(d.get("num_workers", 0)),
              read_threads=int(d.get("read_threads", 1)))


def make_iterator(config, spec: DataSpec, split: str, model_cfg: Qwen2VLConfig, *, batch_size: int,
                  tokenizer_dir: str | None = None, process_index: int = 0, process_count: int = 1):
  """This process's training iterator over global batches of `batch_size` rows (its slice of each).

  It runs for ever (epochs reshuffled by the seed); the trainer decides the number of steps (total_steps).
  """
  d = config.data
  if spec.source == "random":
    seed = int(config.seed) + (0 if split == "train" else 7919)
    return RandomBatches(model_cfg, batch_size=batch_size, length=int(d.length), seed=seed,
                         grid=tuple(d.get("grid", (1, 4, 4))), process_index=process_index,
                         process_count=process_count)
  from tinyrs_jax.data import pipeline
  path = spec.train_path if split == "train" else spec.val_path
  return pipeline.make_dataset(reader_spec(config, path), make_processor(config, tokenizer_dir or spec.tokenizer_dir),
                               global_batch_size=batch_size, seed=int(config.seed), mode="sft", num_epochs=None,
                               shuffle=True, process_index=process_index, process_count=process_count,
                               bad_rows="resample", **pipeline_kwargs(config))


def total_steps(config, spec: DataSpec, global_batch: int, train_it=None) -> int:
  """config.total_steps when > 0, else num_epochs over the training records (whole optimizer steps)."""
  if int(config.get("total_steps", -1)) > 0:
    return int(config.total_steps)
  if spec.source == "random":
    raise ValueError("set config.total_steps (data.source=random has no epochs)")
  num_records = train_it.num_records  # records that passed the reader
  steps = int(float(config.num_epochs) * num_records // global_batch)
  if steps < 1:
    raise ValueError(f"{num_records} records x {config.num_epochs} epochs give no full batch of {global_batch}")
  return steps


def eval_batch_size(config) -> int:
  """eval.batch_size, or the training microbatch when 0."""
  return int(config.eval.get("batch_size", 0) or config.batch_size // int(config.get("grad_accum_steps", 1)))


def has_eval(config, spec: DataSpec) -> bool:
  if int(config.eval.get("num_batches", 0)) == 0:
    return False
  return spec.source == "random" or bool(spec.val_path)


class EvalData:
  """The validation batches, identical at every evaluation (records read once, no shuffling, padded rows)."""

  def __init__(self, config, spec: DataSpec, model_cfg: Qwen2VLConfig, *, tokenizer_dir: str | None = None,
               process_index: int = 0, process_count: int = 1):
    e = config.eval
    self.config, self.spec, self.model_cfg = config, spec, model_cfg
    self.batch_size = eval_batch_size(config)
    self.num_batches = int(e.get("num_batches", -1))
    self.pi, self.pc = process_index, process_count
    self.records = self.processor = None
    if spec.source == "pipeline":
      from tinyrs_jax.data import pipeline
      from tinyrs_jax.data.records import SkipCounter
      self.records = pipeline.load_source(reader_spec(config, spec.val_path), SkipCounter(name="eval"))
      self.processor = make_processor(config, tokenizer_dir or spec.tokenizer_dir)

  def __iter__(self):
    if self.spec.source == "random":
      it = make_iterator(self.config, self.spec, "val", self.model_cfg, batch_size=self.batch_size,
                         process_index=self.pi, process_count=self.pc)
      if self.num_batches < 0:
        raise ValueError("data.source=random: set eval.num_batches >= 0")
    else:
      from tinyrs_jax.data import pipeline
      it = pipeline.make_dataset(self.records, self.processor, global_batch_size=self.batch_size, seed=0,
                                 mode="sft", num_epochs=1, shuffle=False, process_index=self.pi,
                                 process_count=self.pc, bad_rows="pad", drop_remainder=False,
                                 **pipeline_kwargs(self.config))
    for i, b in enumerate(it):
      if 0 <= self.num_batches <= i:
        break
      yield arrays(b)
    if hasattr(it, "close"):
      it.close()


# ------------------------------------------------------------------------------------------- prompts (GRPO)

def read_prompt_records(config, spec: DataSpec) -> list:
  """The training prompts' records (read once; pass them to make_prompt_iterator)."""
  from tinyrs_jax.data import pipeline
  from tinyrs_jax.data.records import SkipCounter
  return pipeline.load_source(reader_spec(config, spec.train_path, prompts=True), SkipCounter(name="train"))


def make_prompt_iterator(config, spec: DataSpec, *, batch_size: int, tokenizer_dir: str | None = None,
                         process_index: int = 0, process_count: int = 1, records: list | None = None):
  """This process's share of global batches of `batch_size` left-padded prompts with their metadata (the
  pipeline's "prompt" mode), endless and shuffled by the seed; bad records are refilled (counted). `records`:
  already read ones (read_prompt_records), else data.train is read here."""
  if spec.source != "pipeline":
    raise ValueError("GRPO needs prompts with verifiable answers: data.source must be 'pipeline'")
  from tinyrs_jax.data import pipeline
  return pipeline.make_dataset(records if records is not None else reader_spec(config, spec.train_path, prompts=True),
                               make_processor(config, tokenizer_dir or spec.tokenizer_dir),
                               global_batch_size=batch_size,
                               seed=int(config.seed), mode="prompt", num_epochs=None, shuffle=True,
                               process_index=process_index, process_count=process_count, bad_rows="resample",
                               **pipeline_kwargs(config))


class EvalPrompts:
  """The validation prompts in file order, identical at every evaluation (records read once; bad records and
  the last batch's missing rows become padding rows, meta is_padding=True); at most `num_prompts` (-1: all)."""

  def __init__(self, config, spec: DataSpec, *, batch_size: int, num_prompts: int = -1,
               tokenizer_dir: str | None = None, process_index: int = 0, process_count: int = 1):
    from tinyrs_jax.data import pipeline
    from tinyrs_jax.data.records import SkipCounter
    if not spec.val_path:
      raise ValueError("held-out evaluation needs data.val (a prompts file with answers)")
    self.config, self.batch_size, self.num_prompts = config, batch_size, int(num_prompts)
    self.pi, self.pc = process_index, process_count
    self.records = pipeline.load_source(reader_spec(config, spec.val_path, prompts=True),
                                       SkipCounter(name="eval"))
    if self.num_prompts >= 0:
      self.records = self.records[:self.num_prompts]
    self.processor = make_processor(config, tokenizer_dir or spec.tokenizer_dir)

  def __len__(self) -> int:
    return len(self.records)

  def __iter__(self):
    from tinyrs_jax.data import pipeline
    it = pipeline.make_dataset(self.records, self.processor, global_batch_size=self.batch_size, seed=0,
                               mode="prompt", num_epochs=1, shuffle=False, process_index=self.pi,
                               process_count=self.pc, bad_rows="pad", drop_remainder=False,
                               **pipeline_kwargs(self.config))
    yield from it
    if hasattr(it, "close"):
      it.close()
