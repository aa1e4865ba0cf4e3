"""Batches for the trainers: the data pipeline's static batches, or random ones (tests, benchmarks, AOT).

Everything the trainer needs from an input is:
  next(it)            a static batch (see tinyrs_jax/models/batch.py) of this process's rows, NumPy arrays
  it.get_state()      a JSON-able dict; it.set_state(d) continues exactly after the batch it was taken at

`RandomBatches` is such an iterator of random batches (deterministic in seed and batch index).
`stack_microbatches` pads a list of static batches to common shapes and stacks them (gradient accumulation).
`to_global` turns this process's rows into global jax.Arrays sharded over the mesh.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import numpy as np

from tinyrs_jax import sharding as sharding_lib
from tinyrs_jax.models.presets import Qwen2VLConfig

TEXT_KEYS = ("input_ids", "attention_mask", "loss_mask")


def random_batch(cfg: Qwen2VLConfig, *, batch_size: int, length: int, grid: Sequence[int] = (1, 4, 4),
                 images_per_row: int = 1, seed: int = 0, answer_frac: float = 0.4,
                 pad_token_id: int | None = None) -> dict[str, np.ndarray]:
  """A static batch of random tokens: per row [vision_start, image tokens, vision_end] x images_per_row, a
  random-length prompt, then an answer (the supervised part), right-padded. Lengths vary per row."""
  rng = np.random.default_rng(seed)
  t, h, w = grid
  merge = cfg.vision.spatial_merge_size
  n_img_tok = t * h * w // (merge * merge)
  pad = cfg.pad_token_id if pad_token_id is None else pad_token_id
  pad = 0 if pad is None else pad
  specials = {cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id}
  lo, hi = 3, min(s for s in specials) - 1
  ids = np.full((batch_size, length), pad, np.int32)
  attn = np.zeros((batch_size, length), np.int32)
  loss = np.zeros((batch_size, length), np.int32)
  head = images_per_row * (n_img_tok + 2)
  if head + 4 > length:
    raise ValueError(f"length {length} too short for {images_per_row} images of {n_img_tok} tokens")
  for r in range(batch_size):
    n = int(rng.integers(max(head + 4, length * 3 // 4), length + 1))
    row = []
    for _ in range(images_per_row):
      row += [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img_tok + [cfg.vision_end_token_id]
    text = rng.integers(lo, hi, n - len(row))
    n_ans = max(1, int((n - len(row)) * answer_frac))
    ids[r, :n] = np.concatenate([np.asarray(row, np.int64), text])
    attn[r, :n] = 1
    loss[r, n - n_ans:n] = 1
  num_images = batch_size * images_per_row
  pixel_values = rng.standard_normal((num_images, t * h * w, cfg.vision.patch_dim)).astype(np.float32)
  grids = np.tile(np.asarray([[t, h, w]], np.int32), (num_images, 1))
  return {"input_ids": ids, "attention_mask": attn, "pixel_values": pixel_values, "image_grid_thw": grids,
          "loss_mask": loss}


class RandomBatches:
  """An endless, checkpointable iterator of `random_batch`es: batch k uses seed (seed, k)."""

  def __init__(self, cfg: Qwen2VLConfig, *, batch_size: int, length: int, seed: int = 0,
               process_index: int = 0, process_count: int = 1, **kw):
    if batch_size % process_count:
      raise ValueError(f"batch size {batch_size} not divisible by {process_count} processes")
    self.cfg, self.batch_size, self.length, self.seed, self.kw = cfg, batch_size, length, seed, kw
    self.process_index, self.process_count = process_index, process_count
    self.index = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    full = random_batch(self.cfg, batch_size=self.batch_size, length=self.length,
                        seed=self.seed * 1_000_003 + self.index, **self.kw)
    self.index += 1
    return slice_rows(full, self.process_index, self.process_count)

  def get_state(self) -> dict:
    return {"index": self.index}

  def set_state(self, state: dict) -> None:
    self.index = int(state["index"])


def slice_rows(batch: dict[str, np.ndarray], index: int, count: int) -> dict[str, np.ndarray]:
  """This process's contiguous share of the rows and of the image slots (slots follow rows in order)."""
  if count == 1:
    return batch
  out = {}
  for k, v in batch.items():
    n = v.shape[0] // count
    out[k] = v[index * n:(index + 1) * n]
  return out


def pad_batch(batch: dict[str, np.ndarray], *, length: int, slots: int, patches: int) -> dict[str, np.ndarray]:
  """Right-pads text to `length`, images to `slots` x `patches` (masked out: same result, bigger shapes)."""
  out = dict(batch)
  b, l = batch["input_ids"].shape
  if l < length:
    for k in TEXT_KEYS:
      if k in batch:
        out[k] = np.pad(batch[k], ((0, 0), (0, length - l)))
    # the pad id does not matter: those positions are masked everywhere
  pv, g = batch["pixel_values"], batch["image_grid_thw"]
  if pv.shape[0] < slots or pv.shape[1] < patches:
    out["pixel_values"] = np.pad(pv, ((0, slots - pv.shape[0]), (0, patches - pv.shape[1]), (0, 0)))
    out["image_grid_thw"] = np.pad(g, ((0, slots - g.shape[0]), (0, 0)))
  return out


def stack_microbatches(batches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """k static batches -> one with a leading microbatch axis of size k (padded to common shapes)."""
  length = max(b["input_ids"].shape[1] for b in batches)
  slots = max(b["pixel_values"].shape[0] for b in batches)
  patches = max(b["pixel_values"].shape[1] for b in batches)
  padded = [pad_batch(b, length=length, slots=slots, patches=patches) for b in batches]
  return {k: np.stack([p[k] for p in padded]) for k in padded[0]}


def check_batch_split(batch_size: int, data_axes: int, process_count: int, what: str = "batch") -> None:
  """Every process loads different rows, so the data axes (data x fsdp) must split the batch across processes:
  a batch axis replicated over several processes would hold different rows on each (silently wrong)."""
  if data_axes % process_count:
    raise ValueError(f"the mesh's data axes (data x fsdp = {data_axes}) must be a multiple of the process count "
                     f"({process_count}): each process loads its own rows, which a batch axis replicated across "
                     "processes cannot hold; give data or fsdp more devices (e.g. --config.mesh.data=-1)")
  if batch_size % data_axes:
    raise ValueError(f"{what} {batch_size} must be divisible by the data axes ({data_axes} = data x fsdp)")


def to_global(batch: dict[str, np.ndarray], shardings: dict) -> dict[str, jax.Array]:
  """This process's rows -> global arrays (rows of all processes concatenated in process order)."""
  return {k: sharding_lib.host_to_global(v, shardings[k], what=k) for k, v in batch.items()}


def place_batch(batch: dict[str, np.ndarray], mesh, grad_accum: int = 1) -> dict[str, jax.Array]:
  """This process's rows -> global arrays sharded as the train step expects, the shardings chosen for the
  GLOBAL shapes (a per-process row count the data axes do not divide must not turn into replication)."""
  from tinyrs_jax.train import state as state_lib
  shapes = {k: jax.ShapeDtypeStruct(s, batch[k].dtype) for k, s in global_shape(batch, grad_accum).items()}
  return to_global(batch, state_lib.batch_shardings(mesh, shapes, grad_accum))


def global_shape(batch: dict[str, np.ndarray], grad_accum: int = 1) -> dict[str, tuple]:
  """Global shapes of a process-local batch (its leading row/slot axis times the process count)."""
  lead = 1 if grad_accum > 1 else 0
  out = {}
  for k, v in batch.items():
    shape = list(v.shape)
    shape[lead] *= jax.process_count()
    out[k] = tuple(shape)
  return out


# ------------------------------------------------------------------------------------ config -> inputs

ARRAY_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "loss_mask")


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
    return DataSpec("pipeline", d.get("tokenizer_dir") or tok, d.get("train") or os.path.join(data_dir, stage, "train.jsonl"),
                    d.get("val") or os.path.join(data_dir, stage, "val.jsonl"))
  if not d.get("train"):
    raise ValueError("set --config.data.train=<a JSON/JSONL conversations file> (or data.demo=True)")
  return DataSpec("pipeline", d.get("tokenizer_dir") or None, d.train, d.get("val") or None)


def arrays(batch: dict) -> dict[str, np.ndarray]:
  """The model's arrays of a pipeline batch (drops per-row metadata)."""
  return {k: batch[k] for k in ARRAY_KEYS if k in batch}


def _reader_spec(config, path: str, prompts: bool = False) -> tuple:
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


def _processor(config, tokenizer_dir: str | None):
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


def _pipeline_kwargs(config) -> dict:
  from tinyrs_jax.models import batch as batch_lib
  d = config.data
  return dict(length_buckets=_buckets(d, "length_buckets", batch_lib.DEFAULT_LENGTH_BUCKETS),
              patch_buckets=_buckets(d, "patch_buckets", batch_lib.DEFAULT_PATCH_BUCKETS),
              max_length=int(d.max_length), worker_count=int(d.get("num_workers", 0)),
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
  return pipeline.make_dataset(_reader_spec(config, path), _processor(config, tokenizer_dir or spec.tokenizer_dir),
                               global_batch_size=batch_size, seed=int(config.seed), mode="sft", num_epochs=None,
                               shuffle=True, process_index=process_index, process_count=process_count,
                               bad_rows="resample", **_pipeline_kwargs(config))


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
      self.records = pipeline.load_source(_reader_spec(config, spec.val_path), SkipCounter(name="eval"))
      self.processor = _processor(config, tokenizer_dir or spec.tokenizer_dir)

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
                                 **_pipeline_kwargs(self.config))
    for i, b in enumerate(it):
      if 0 <= self.num_batches <= i:
        break
      yield arrays(b)
    if hasattr(it, "close"):
      it.close()


# ------------------------------------------------------------------------------------------- prompts (GRPO)

PROMPT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")


def make_prompt_iterator(config, spec: DataSpec, *, batch_size: int, tokenizer_dir: str | None = None,
                         process_index: int = 0, process_count: int = 1):
  """This process's share of global batches of `batch_size` left-padded prompts with their metadata (the
  pipeline's "prompt" mode), endless and shuffled by the seed; bad records are refilled (counted)."""
  if spec.source != "pipeline":
    raise ValueError("GRPO needs prompts with verifiable answers: data.source must be 'pipeline'")
  from tinyrs_jax.data import pipeline
  return pipeline.make_dataset(_reader_spec(config, spec.train_path, prompts=True),
                               _processor(config, tokenizer_dir or spec.tokenizer_dir), global_batch_size=batch_size,
                               seed=int(config.seed), mode="prompt", num_epochs=None, shuffle=True,
                               process_index=process_index, process_count=process_count, bad_rows="resample",
                               **_pipeline_kwargs(config))


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
    self.records = pipeline.load_source(_reader_spec(config, spec.val_path, prompts=True),
                                       SkipCounter(name="eval"))
    if self.num_prompts >= 0:
      self.records = self.records[:self.num_prompts]
    self.processor = _processor(config, tokenizer_dir or spec.tokenizer_dir)

  def __len__(self) -> int:
    return len(self.records)

  def __iter__(self):
    from tinyrs_jax.data import pipeline
    it = pipeline.make_dataset(self.records, self.processor, global_batch_size=self.batch_size, seed=0,
                               mode="prompt", num_epochs=1, shuffle=False, process_index=self.pi,
                               process_count=self.pc, bad_rows="pad", drop_remainder=False,
                               **_pipeline_kwargs(self.config))
    yield from it
    if hasattr(it, "close"):
      it.close()
