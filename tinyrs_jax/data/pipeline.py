"""Grain input pipelines: records -> the static-shape batches of `tinyrs_jax.models.batch`, for SFT and prompts.

    it = pipeline.make_dataset(("llava", "data/instruct/train.jsonl"), processor, global_batch_size=128, seed=0,
                               length_buckets=(256, 512, 1024, 2048), max_length=2048)
    batch = next(it)          # this process's rows of global batch 0: input_ids, attention_mask, loss_mask, ...
    state = it.get_state()    # a small JSON-serializable dict; trainers save it beside the orbax checkpoint
    it.set_state(state)       # a fresh iterator given this state yields the same next batch

Global batch b is a pure function of (records, seed, b), built in five steps:
  1. order    grain.MapDataset.range(N).shuffle(seed).repeat(num_epochs), batched by global_batch_size: the
              record indices of batch b. Reshuffled every epoch; a batch may straddle two epochs.
  2. plan     EVERY process checks ALL rows of the global batch cheaply: validate the record (an assistant turn
              is required in "sft" mode), read the image header (size only, no pixels), check the boxes against
              that size, render the chat template, tokenize, and count the tokens (text plus the image tokens
              smart_resize gives for that size). Bad rows are skipped and refilled (below).
  3. shapes   length bucket = the smallest bucket >= the longest planned row; patch bucket = the smallest bucket
              >= the largest planned image. Both come from the whole global batch, so every process pads to the
              same shapes whatever the process count (and a global batch never exceeds `max_batch_shapes`).
  4. encode   each process decodes and encodes only its rows [i·B/n, (i+1)·B/n): images.load_image,
              Processor.encode_for_training (smart_resize, patchify, chat template, tokenize, loss mask on the
              assistant's content and its <|im_end|> only) or, in "prompt" mode, the prompt with the generation
              prompt appended.
  5. pad      "sft": text right-padded to the length bucket, with loss_mask. "prompt": text LEFT-padded, so every
              prompt ends at the last column (what sampling.generate expects), no loss_mask, and batch["meta"]:
              one dict per row (id, task, answer, boxes in pixels, width, height, source, line, extra,
              is_padding) for rewards and metrics. Images go to per-row slots: I = rows × max_images_per_row,
              row r's images in slots [r·m, r·m + n_r), pixel_values (I, P, patch_dim) zero-padded to the patch
              bucket P, image_grid_thw (0, 0, 0) for an empty slot (the model skips empty slots). Per-row slots
              make process i's slots exactly its rows' part of the global batch's slots.

Bad input (missing or corrupt image, box outside the image, sequence longer than max_length, no assistant turn in
"sft" mode, an image whose aspect ratio or size smart_resize refuses). Strict mode raises the DataError, naming
the record's file, line and field. Lenient mode (the default) counts it by reason in `it.skips` (a SkipCounter;
reader skips of a (format, path) source land there too; counts are per draw, so a bad record is counted again
each epoch it comes up) and logs the counts every `log_every` batches; a batch keeps its shape:
  - bad_rows="resample" (training): the row is refilled with a record drawn from (seed, position, attempt) alone,
    so every process draws the same replacement. A record whose header is fine but whose pixels fail to decode
    is only found by the process that owns its row; that process keeps drawing until a record decodes and fits
    the batch's buckets; the others never see the row, so the global batch is still the same for any process
    count. Every row is a real example; a refilled record may appear twice in an epoch.
  - bad_rows="pad" (evaluation): the row becomes a padding row; every good record then appears exactly once.
A padding row (also what fills the last batch when drop_remainder=False) is a single <|endoftext|> token with
attention, no image, no loss, and meta is_padding=True. MAX_DRAWS failed draws for one row at planning raise (the
data is mostly bad); at a refill after a decode failure they give a padding row.

Cost and parallelism: the plan step reads B image headers and tokenizes B short texts per global batch on every
process; pixel work is only for a process's own rows. Batches are computed in `read_threads` threads and, with
worker_count > 0, in grain worker processes (mp_prefetch over whole batches, so the batch sequence does not depend
on the worker count either). The iterator state is just the index of the next global batch (plus skip counts),
so it restores under any worker or process count.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Sequence

import grain
import numpy as np

from tinyrs_jax.data import images as images_lib
from tinyrs_jax.data import readers
from tinyrs_jax.data.image_processor import grid_thw_for_size, num_image_tokens
from tinyrs_jax.data.padding import pad_token_rows
from tinyrs_jax.data.processor import Processor, SequenceTooLong
from tinyrs_jax.data.records import IMAGE_PLACEHOLDER, DataError, Record, SkipCounter, check_box, validate_record
from tinyrs_jax.models import batch as batch_lib

MODES = ("sft", "prompt")
BAD_ROWS = ("resample", "pad")
MAX_DRAWS = 100  # failed draws for one row before giving up: the data would be mostly bad
STATE_VERSION = 1


# ---------------------------------------------------------------------------------------------- shapes

def max_patches_per_image(processor: Processor, patch_buckets: Sequence[int]) -> int:
  """Most patches one image can have: smart_resize keeps the area <= max_pixels (whole 28x28 merge blocks)."""
  cfg = processor.image_cfg
  if not cfg.do_resize:
    return int(max(patch_buckets))  # sizes are the images' own: bounded by the buckets, checked per row
  merge_blocks = cfg.max_pixels // (cfg.factor * cfg.factor)
  return int(merge_blocks * cfg.merge_size * cfg.merge_size)


def usable_buckets(processor: Processor, *, max_length: int, length_buckets: Sequence[int],
                   patch_buckets: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(length buckets, patch buckets) a batch can take: those up to the first one that holds the largest row."""
  if max_length > max(length_buckets):
    raise ValueError(f"max_length={max_length} exceeds the largest length bucket {max(length_buckets)}; "
                     "add a bucket or lower max_length")
  most = max_patches_per_image(processor, patch_buckets)
  if most > max(patch_buckets):
    cfg = processor.image_cfg
    raise ValueError(f"an image can have up to {most} patches (max_pixels={cfg.max_pixels}), more than the largest "
                     f"patch bucket {max(patch_buckets)}; lower max_pixels (e.g. Processor.from_folder(..., "
                     f"max_pixels=1280*28*28)) or add a patch bucket")
  for b in patch_buckets:
    if b % (processor.image_cfg.merge_size ** 2):
      raise ValueError(f"patch bucket {b} is not a multiple of the merge unit {processor.image_cfg.merge_size ** 2}")
  top_len = batch_lib.round_up_to_bucket(max_length, length_buckets)
  top_patch = batch_lib.round_up_to_bucket(most, patch_buckets)
  return (tuple(sorted({int(b) for b in length_buckets if b <= top_len})),
          tuple(sorted({int(b) for b in patch_buckets if b <= top_patch})))


def max_batch_shapes(processor: Processor, *, batch_size: int, mode: str = "sft", max_length: int | None = None,
                     length_buckets: Sequence[int] = batch_lib.DEFAULT_LENGTH_BUCKETS,
                     patch_buckets: Sequence[int] = batch_lib.DEFAULT_PATCH_BUCKETS, max_images_per_row: int = 1,
                     pixel_dtype=np.float32) -> dict:
  """The largest batch these settings can produce, as jax.ShapeDtypeStruct per array (for AOT compiles).

  `batch_size`: the global batch for a jitted step over the whole mesh, or one process's rows. Every batch the
  pipeline yields has shapes (rows, L) and (rows·m, P, patch_dim) with L, P from `usable_buckets`.
  """
  import jax  # lazy: the data modules otherwise work without jax
  max_length = max_length or max(length_buckets)
  lengths, patches = usable_buckets(processor, max_length=max_length, length_buckets=length_buckets,
                                    patch_buckets=patch_buckets)
  length, num_patches, slots = lengths[-1], patches[-1], batch_size * max_images_per_row
  shapes = {"input_ids": ((batch_size, length), np.int32), "attention_mask": ((batch_size, length), np.int32),
            "pixel_values": ((slots, num_patches, processor.image_cfg.patch_dim), pixel_dtype),
            "image_grid_thw": ((slots, 3), np.int32)}
  if mode == "sft":
    shapes["loss_mask"] = ((batch_size, length), np.int32)
  return {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()}


# ---------------------------------------------------------------------------------------------- messages

def to_processor_messages(messages: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
  """Our messages (`<image>` inside user text) -> the processor's: content parts with {"type": "image"}."""
  out = []
  for m in messages:
    text = m["content"]
    if IMAGE_PLACEHOLDER not in text:
      out.append({"role": m["role"], "content": text})
      continue
    parts: list[dict[str, Any]] = []
    for k, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
      if k:
        parts.append({"type": "image"})
      if piece:
        parts.append({"type": "text", "text": piece})
    out.append({"role": m["role"], "content": parts})
  return out


# ---------------------------------------------------------------------------------------------- the pipeline

@dataclasses.dataclass
class _Plan:
  """A row that passed the cheap checks: what the encode step needs and the batch shapes it asks for."""
  index: int  # record index
  draw: int  # 0 = the record the order put here, k = the k-th refill
  record: Record
  messages: list[dict[str, Any]]  # processor messages (prompt only in "prompt" mode)
  size: tuple[int, int] | None  # (width, height) from the image header
  length: int  # tokens, image tokens included
  patches: int  # patches of the image (0 without one)
  boxes: tuple  # (label, clipped pixel box)


def _image_error(record: Record, e: DataError) -> DataError:
  """An image-level error restated against the record (its file, line and the image field)."""
  return DataError(f"image {e.source}: {e.detail}", source=record.source, line=record.line, field="image",
                   reason=e.reason)


def _error_fields(e: DataError) -> dict:
  return {"message": e.detail, "source": e.source, "line": e.line, "field": e.field, "reason": e.reason}


class _Pipeline:
  """Settings plus the pure function global batch index -> this process's rows. Shared by worker threads."""

  def __init__(self, records: list[Record], processor: Processor, *, global_batch_size: int, seed: int, mode: str,
               length_buckets: Sequence[int], patch_buckets: Sequence[int], max_images_per_row: int,
               max_length: int, num_epochs: int | None, shuffle: bool, process_index: int, process_count: int,
               strict: bool, drop_remainder: bool, bad_rows: str, with_meta: bool, pixel_dtype):
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if bad_rows not in BAD_ROWS:
      raise ValueError(f"bad_rows must be one of {BAD_ROWS}, got {bad_rows!r}")
    if not records:
      raise ValueError("no records to build batches from")
    if global_batch_size < 1 or global_batch_size % process_count:
      raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of the process count "
                       f"{process_count}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if max_images_per_row < 1:
      raise ValueError(f"max_images_per_row must be >= 1, got {max_images_per_row}")
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f"num_epochs must be >= 1 or None (forever), got {num_epochs}")
    self.records, self.processor, self.tokenizer = records, processor, processor.tokenizer
    self.global_batch_size, self.seed, self.mode = global_batch_size, seed, mode
    self.max_length, self.max_images_per_row = max_length, max_images_per_row
    self.strict, self.bad_rows, self.with_meta, self.pixel_dtype = strict, bad_rows, with_meta, pixel_dtype
    self.length_buckets, self.patch_buckets = usable_buckets(
        processor, max_length=max_length, length_buckets=length_buckets, patch_buckets=patch_buckets)
    self.max_patches = self.patch_buckets[-1]
    rows = global_batch_size // process_count
    self.rows = slice(process_index * rows, (process_index + 1) * rows)
    self.local_rows = rows

    order = grain.MapDataset.range(len(records))
    if shuffle:
      order = order.shuffle(seed=seed)
    # repeat() reshuffles each epoch (reseed_each_epoch), from the seed alone.
    self.batches = order.repeat(num_epochs).batch(global_batch_size, drop_remainder=drop_remainder)
    self.num_batches = None if num_epochs is None else len(self.batches)

  # -- step 2: plan ----------------------------------------------------------------------------------------

  def _draw(self, position: int, draw: int, first_index: int) -> int:
    """Record index of a row's draw: the order's own record first, then refills from (seed, position, draw)."""
    if draw == 0:
      return first_index
    return int(np.random.default_rng([self.seed, position, draw]).integers(len(self.records)))

  def plan(self, index: int, draw: int = 0) -> _Plan:
    """Cheap checks of one record (no pixels); raises DataError naming its file, line and field."""
    record = self.records[index]
    # Boxes are checked below, against the image's real size and naming the box.
    validate_record(dataclasses.replace(record, image_size=None), require_assistant=self.mode == "sft")
    messages = record.prompt_messages if self.mode == "prompt" and record.has_assistant_turn else record.messages
    num_images = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if num_images != (record.image is not None):
      raise record.error(f"the {'prompt' if self.mode == 'prompt' else 'conversation'} has {num_images} "
                         f"{IMAGE_PLACEHOLDER} placeholders for {int(record.image is not None)} image",
                         field="messages", reason="bad_placeholder")
    size, patches, image_tokens = None, 0, 0
    if record.image is not None:
      try:  # a size the reader already knows (e.g. from an annotation file) spares reading the header
        size = record.image_size or images_lib.image_size(record.image, name=self._image_name(record))
      except DataError as e:
        raise _image_error(record, e) from None
      try:
        grid = grid_thw_for_size(size[1], size[0], self.processor.image_cfg)
      except ValueError as e:
        raise record.error(f"image {size[0]}x{size[1]}: {e}", field="image", reason="bad_image_size") from None
      patches = int(np.prod(grid))
      image_tokens = num_image_tokens(grid, self.processor.image_cfg.merge_size)
      if patches > self.max_patches:
        raise record.error(f"image has {patches} patches, more than the largest usable patch bucket "
                           f"{self.max_patches}", field="image", reason="too_many_patches")
    boxes = record.boxes
    if boxes:
      if size is None:
        raise record.error("boxes need an image", field="boxes", reason="bad_box")
      boxes = tuple((label, check_box(box, *size, source=record.source, line=record.line, field=f"boxes[{i}]"))
                    for i, (label, box) in enumerate(boxes))
    proc_messages = to_processor_messages(messages)
    try:
      text = self.tokenizer.apply_chat_template(proc_messages, add_generation_prompt=self.mode == "prompt")
    except Exception as e:  # a template may raise anything on odd content; that is the record's fault
      raise record.error(f"chat template failed ({type(e).__name__}: {e})", field="messages",
                         reason="bad_messages") from None
    ids = np.asarray(self.tokenizer.encode(text))
    if (ids == self.tokenizer.video_pad_id).any() or (ids == self.tokenizer.image_pad_id).sum() != num_images:
      raise record.error("message text contains <|image_pad|> or <|video_pad|> tokens", field="messages",
                         reason="bad_placeholder")
    length = len(ids) + num_images * (image_tokens - 1)
    if length > self.max_length:
      raise record.error(str(SequenceTooLong(length, self.max_length)), field="messages",
                         reason="sequence_too_long")
    return _Plan(index, draw, record, proc_messages, size, length, patches, boxes)

  @staticmethod
  def _image_name(record: Record) -> str:
    return record.image if isinstance(record.image, str) else f"{record.id} (array)"

  def _fail(self, e: DataError, skipped: list[dict]) -> None:
    if self.strict:
      raise e
    skipped.append(_error_fields(e))

  def plan_row(self, position: int, first_index: int, skipped: list[dict], *, start: int = 0,
               fits=None) -> _Plan | None:
    """The first draw from `start` on that passes the checks (and `fits`); None for a padding row.

    With `fits` (a refill once the batch's buckets are fixed) running out of draws gives a padding row too:
    the row may just be short of records that fit. Without it, running out means the data is mostly bad.
    """
    for draw in range(start, MAX_DRAWS):
      try:
        plan = self.plan(self._draw(position, draw, first_index), draw)
      except DataError as e:
        self._fail(e, skipped)
        if self.bad_rows == "pad":
          return None
        continue
      if fits is None or fits(plan):
        return plan
    if fits is not None:
      return None
    raise RuntimeError(f"global batch position {position}: {MAX_DRAWS} draws found no usable record; most records "
                       f"are bad (skipped here: {sorted({s['reason'] for s in skipped})})")

  # -- step 4: encode --------------------------------------------------------------------------------------

  def encode(self, plan: _Plan) -> dict:
    """Decodes and encodes one planned row -> ids (n,), loss_mask (n,) or None, pixel_values, image_grid_thw."""
    record = plan.record
    images = []
    if record.image is not None:
      try:
        image = images_lib.load_image(record.image, name=self._image_name(record))
      except DataError as e:
        raise _image_error(record, e) from None
      if (image.shape[1], image.shape[0]) != plan.size:
        raise record.error(f"decoded image is {image.shape[1]}x{image.shape[0]} but its header said "
                           f"{plan.size[0]}x{plan.size[1]}", field="image", reason="image_size_mismatch")
      images = [image]
    try:
      if self.mode == "sft":
        out = self.processor.encode_for_training(plan.messages, images, max_length=self.max_length)
        ids, loss_mask = out["input_ids"], out["loss_mask"]
        pixel_values, grid = out["pixel_values"], out["image_grid_thw"]
      else:
        text = self.tokenizer.apply_chat_template(plan.messages, add_generation_prompt=True)
        out = self.processor([text], images or None, return_mm_token_type_ids=False)
        ids, loss_mask = out["input_ids"][0], None
        pixel_values = out.get("pixel_values", np.zeros((0, self.processor.image_cfg.patch_dim), np.float32))
        grid = out.get("image_grid_thw", np.zeros((0, 3), np.int32))
    except SequenceTooLong as e:
      raise record.error(str(e), field="messages", reason="sequence_too_long") from None
    except ValueError as e:
      raise record.error(f"cannot encode ({e})", field="messages", reason="bad_example") from None
    if len(ids) != plan.length:  # the plan's count decides the buckets, so it must be exact
      raise record.error(f"encoded to {len(ids)} tokens but planned {plan.length}", field="messages",
                         reason="plan_mismatch")
    return {"ids": ids, "loss_mask": loss_mask, "pixel_values": pixel_values, "grid": grid}

  def encode_row(self, position: int, plan: _Plan | None, length: int, patches: int,
                 skipped: list[dict]) -> tuple[_Plan | None, dict | None]:
    """Encodes an owned row; on a decode failure refills it with a draw that fits the batch's buckets."""
    fits = lambda p: p.length <= length and p.patches <= patches  # noqa: E731
    while plan is not None:
      try:
        return plan, self.encode(plan)
      except DataError as e:
        self._fail(e, skipped)
        if self.bad_rows == "pad":
          return None, None
        plan = self.plan_row(position, plan.index, skipped, start=plan.draw + 1, fits=fits)
    return None, None

  # -- steps 3 and 5: shapes and padding -------------------------------------------------------------------

  def __call__(self, batch_index: int, record_indices: np.ndarray) -> dict:
    skipped: list[dict] = []
    first = batch_index * self.global_batch_size
    plans = [self.plan_row(first + r, int(i), skipped) for r, i in enumerate(record_indices)]
    plans += [None] * (self.global_batch_size - len(plans))  # the short last batch (drop_remainder=False)
    real = [p for p in plans if p is not None]
    length = batch_lib.round_up_to_bucket(max([p.length for p in real], default=1), self.length_buckets)
    patches = batch_lib.round_up_to_bucket(max([p.patches for p in real], default=1), self.patch_buckets)

    b, m = self.local_rows, self.max_images_per_row
    pad_id = self.tokenizer.pad_id
    token_rows, loss_rows = [], []
    pixel_values = np.zeros((b * m, patches, self.processor.image_cfg.patch_dim), self.pixel_dtype)
    image_grid_thw = np.zeros((b * m, 3), np.int32)
    meta = []
    for r, g in enumerate(range(self.rows.start, self.rows.stop)):
      plan, enc = self.encode_row(first + g, plans[g], length, patches, skipped)
      if enc is None:  # padding row: one real token so no row is fully masked
        enc = {"ids": np.asarray([pad_id], np.int32), "loss_mask": None, "pixel_values": None,
               "grid": np.zeros((0, 3), np.int32)}
      token_rows.append(enc["ids"])
      loss_rows.append(enc["loss_mask"] if enc["loss_mask"] is not None else np.zeros(len(enc["ids"]), np.int32))
      if len(enc["grid"]):
        slots, grids = batch_lib.pad_images(enc["pixel_values"], enc["grid"], num_slots=m, num_patches=patches,
                                            patch_dim=self.processor.image_cfg.patch_dim, dtype=self.pixel_dtype)
        pixel_values[r * m:(r + 1) * m] = slots
        image_grid_thw[r * m:(r + 1) * m] = grids
      if self.with_meta:
        meta.append(_meta(plan))
    side = "left" if self.mode == "prompt" else "right"  # prompts end at the last column; sequences start at 0
    input_ids, attention_mask = pad_token_rows(token_rows, length, pad_id, side=side)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
             "image_grid_thw": image_grid_thw}
    if self.mode == "sft":
      batch["loss_mask"] = pad_token_rows(loss_rows, length, 0, side=side)[0]
    if self.with_meta:
      batch["meta"] = meta
    batch["_skipped"] = skipped  # travels with the batch (worker processes have no shared counter)
    return batch


def prompt_text(record: Record) -> str:
  """The prompt's text as rewards see it (meta["prompt"]): its user turns, joined by newlines, without the
  image placeholder."""
  from tinyrs_jax.data.records import IMAGE_PLACEHOLDER
  return "\n".join(m["content"].replace(IMAGE_PLACEHOLDER, "").strip() for m in record.prompt_messages
                   if m["role"] == "user")


def _meta(plan: _Plan | None) -> dict:
  if plan is None:
    return {"is_padding": True, "id": None, "task": None, "prompt": None, "answer": None, "boxes": [], "width": None,
            "height": None, "source": None, "line": None, "record_index": None, "extra": {}}
  r = plan.record
  return {"is_padding": False, "id": r.id, "task": r.task, "prompt": prompt_text(r), "answer": r.answer,
          "boxes": [{"label": label, "box": list(box)} for label, box in plan.boxes],
          "width": plan.size[0] if plan.size else None, "height": plan.size[1] if plan.size else None,
          "source": r.source, "line": r.line, "record_index": plan.index, "extra": dict(r.extra)}


# ---------------------------------------------------------------------------------------------- the iterator

class BatchIterator:
  """This process's batches, in global-batch order, with a checkpointable position and a SkipCounter."""

  def __init__(self, pipeline: _Pipeline, skips: SkipCounter, *, read_threads: int, prefetch_batches: int,
               worker_count: int, log_every: int):
    self._pipeline, self.skips = pipeline, skips
    self._read_threads, self._prefetch, self._workers = read_threads, prefetch_batches, worker_count
    self._log_every = log_every
    self._next = 0
    self._it = None
    self._logged_at = (0, 0)  # (batch, total skipped) at the last count log

  # Shapes and sizes callers need.
  @property
  def length_buckets(self) -> tuple[int, ...]:
    return self._pipeline.length_buckets

  @property
  def patch_buckets(self) -> tuple[int, ...]:
    return self._pipeline.patch_buckets

  @property
  def num_batches(self) -> int | None:
    """Global batches in the whole run; None when it repeats forever."""
    return self._pipeline.num_batches

  @property
  def num_records(self) -> int:
    """Records the pipeline draws from (those the reader accepted; bad ones among them are skipped later)."""
    return len(self._pipeline.records)

  @property
  def next_batch_index(self) -> int:
    return self._next

  def max_batch_shapes(self, *, global_shapes: bool = False) -> dict:
    """This process's largest batch (or the global one), as jax.ShapeDtypeStruct per array."""
    p = self._pipeline
    return max_batch_shapes(p.processor, batch_size=p.global_batch_size if global_shapes else p.local_rows,
                            mode=p.mode, max_length=p.max_length, length_buckets=p.length_buckets,
                            patch_buckets=p.patch_buckets, max_images_per_row=p.max_images_per_row,
                            pixel_dtype=p.pixel_dtype)

  def _open(self):
    batches = self._pipeline.batches.map_with_index(self._pipeline)
    batches = batches.slice(slice(self._next, None))
    ds = batches.to_iter_dataset(grain.ReadOptions(num_threads=self._read_threads,
                                                   prefetch_buffer_size=max(self._prefetch, self._read_threads)))
    if self._workers > 0:
      from absl import flags
      if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside an absl app use the defaults
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers))
    return iter(ds)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._it is None:
      self._it = self._open()
    batch = next(self._it)
    self._next += 1
    for fields in batch.pop("_skipped"):
      self.skips.skip(DataError(fields["message"], source=fields["source"], line=fields["line"],
                                field=fields["field"], reason=fields["reason"]))
    last_batch, last_total = self._logged_at
    if self.skips.total_skipped > last_total and self._next - last_batch >= self._log_every:
      self.skips.log_counts()
      self._logged_at = (self._next, self.skips.total_skipped)
    return batch

  def get_state(self) -> dict:
    """JSON-serializable: the next global batch and the skip counts, plus what must match on restore."""
    p = self._pipeline
    return {"version": STATE_VERSION, "next_batch": self._next, "seed": p.seed,
            "global_batch_size": p.global_batch_size, "num_records": len(p.records), "mode": p.mode,
            "skipped": dict(self.skips.skipped), "notes": dict(self.skips.notes)}

  def set_state(self, state: dict) -> None:
    p = self._pipeline
    expected = {"version": STATE_VERSION, "seed": p.seed, "global_batch_size": p.global_batch_size,
                "num_records": len(p.records), "mode": p.mode}
    wrong = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
    if wrong:
      raise ValueError("iterator state is from a different pipeline: "
                       + ", ".join(f"{k} is {a!r} in the state, {b!r} here" for k, (a, b) in wrong.items()))
    self.close()
    self._next = int(state["next_batch"])
    self.skips.skipped.clear()
    self.skips.skipped.update(state.get("skipped", {}))
    self.skips.notes.clear()
    self.skips.notes.update(state.get("notes", {}))
    self._logged_at = (self._next, self.skips.total_skipped)

  def close(self) -> None:
    """Stops prefetch threads and worker processes (a later next() reopens at the current position)."""
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None


# ---------------------------------------------------------------------------------------------- entry point

def load_source(source, skips: SkipCounter) -> list[Record]:
  """Records of a list/iterable of Records, or of a reader spec (format, path) / (format, path, options)."""
  if isinstance(source, tuple) and source and isinstance(source[0], str):
    if len(source) not in (2, 3):
      raise ValueError(f"a reader spec is (format, path) or (format, path, options), got {source!r}")
    fmt, path = source[0], os.fspath(source[1])
    options = dict(source[2]) if len(source) == 3 else {}
    return readers.load_records(fmt, path, skips=skips, **options)
  records = list(source)
  bad = [type(r).__name__ for r in records if not isinstance(r, Record)]
  if bad:
    raise TypeError(f"source must hold Records or be a (format, path[, options]) spec; found a {bad[0]}")
  return records


def make_dataset(source: Iterable[Record] | tuple, processor: Processor, *, global_batch_size: int, seed: int = 0,
                 mode: str = "sft", length_buckets: Sequence[int] = batch_lib.DEFAULT_LENGTH_BUCKETS,
                 patch_buckets: Sequence[int] = batch_lib.DEFAULT_PATCH_BUCKETS, max_images_per_row: int = 1,
                 max_length: int | None = None, num_epochs: int | None = None, shuffle: bool = True,
                 process_index: int | None = None, process_count: int | None = None, strict: bool = False,
                 drop_remainder: bool = True, bad_rows: str = "resample", with_meta: bool | None = None,
                 pixel_dtype=np.float32, worker_count: int = 0, read_threads: int = 1, prefetch_batches: int = 2,
                 log_every: int = 100, skips: SkipCounter | None = None) -> BatchIterator:
  """This process's batches of the global batch sequence fixed by `seed` (see the module docstring).

  source: Records, or a reader spec (format, path[, options]) read now through readers.read_records.
  mode: "sft" (whole conversations, right-padded, loss_mask) or "prompt" (prompts with the generation prompt,
    left-padded, batch["meta"]). max_length (default: the largest length bucket) bounds the tokens of a row.
  num_epochs: None repeats forever; with a number, next() raises StopIteration after the last batch, which is
    short unless drop_remainder (its missing rows become padding rows).
  process_index / process_count: default jax.process_index() / jax.process_count(); this process yields rows
    [i·B/n, (i+1)·B/n) of every global batch.
  strict: raise on bad input; otherwise skip, count in `it.skips` and refill per `bad_rows` ("resample" or
    "pad"). with_meta: per-row metadata in batch["meta"] (default: in "prompt" mode only).
  """
  if process_index is None or process_count is None:
    import jax  # lazy: only to ask where we are
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  skips = skips if skips is not None else SkipCounter(strict=strict, name="pipeline")
  records = load_source(source, skips)
  pipeline = _Pipeline(
      records, processor, global_batch_size=global_batch_size, seed=seed, mode=mode,
      length_buckets=length_buckets, patch_buckets=patch_buckets, max_images_per_row=max_images_per_row,
      max_length=max_length or max(length_buckets), num_epochs=num_epochs, shuffle=shuffle,
      process_index=process_index, process_count=process_count, strict=strict, drop_remainder=drop_remainder,
      bad_rows=bad_rows, with_meta=(mode == "prompt") if with_meta is None else with_meta,
      pixel_dtype=pixel_dtype)
  if skips.total_skipped:
    skips.log_counts()
  return BatchIterator(pipeline, skips, read_threads=read_threads, prefetch_batches=prefetch_batches,
                       worker_count=worker_count, log_every=log_every)
