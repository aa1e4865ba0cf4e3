"""Classification sets: `image_folder` (root/ClassName/*.jpg: AID, UC Merced, NWPU-RESISC45, ...) and `tfds`
(a prepared TensorFlow Datasets classification set, read lazily: `TfdsImage` decodes when the pipeline loads it)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Sequence

import numpy as np

from tinyrs_jax.data import images as images_lib
from tinyrs_jax.data.readers._common import (IMAGE_EXTENSIONS, classification_prompt, humanize_class_name,
                                             register_reader)
from tinyrs_jax.data.records import DataError, Record, SkipCounter


# ------------------------------------------------------------------------------------- class-named folders

@register_reader("image_folder")
def read_image_folder(path: str, *, skips: SkipCounter, class_names: dict[str, str] | None = None,
                      extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Iterator[Record]:
  """root/ClassName/image files -> classification records (classes and files in sorted order)."""
  root = os.fspath(path)
  if not os.path.isdir(root):
    raise DataError("image folder does not exist", source=root, reason="missing_file")
  folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not folders:
    raise DataError("no class folders", source=root, reason="missing_file")
  shown = {d: (class_names or {}).get(d, humanize_class_name(d)) for d in folders}
  prompt = classification_prompt([shown[d] for d in folders])
  for folder in folders:
    files = sorted(f for f in os.listdir(os.path.join(root, folder)) if f.lower().endswith(tuple(extensions)))
    for number, name in enumerate(files, start=1):
      image = os.path.join(root, folder, name)
      yield Record(id=f"{folder}/{name}", image=image, task="classify", answer=shown[folder], source=image,
                   line=number, messages=[{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": shown[folder]}],
                   extra={"class_folder": folder})


# ---------------------------------------------------------------------------------- TensorFlow Datasets

_TFDS_SOURCES: dict[tuple, Any] = {}  # (name, split, data_dir, image_key) -> data source, per process


def _open_tfds_source(name: str, split: str, data_dir: str | None, image_key: str):
  """A random-access source whose image field stays encoded bytes (read, not decoded) where TFDS allows it;
  otherwise (e.g. TFDS mock data without TensorFlow) the default source, whose image field is an array."""
  import tensorflow_datasets as tfds  # lazy: optional dependency
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir,
                              decoders={image_key: tfds.decode.SkipDecoding()})
    if len(source):
      source[0]  # probe: skipping the decoder can fail only when an example is read
    return source
  except Exception:  # the plain source below raises the real problem, if there is one
    return tfds.data_source(name, split=split, data_dir=data_dir)


def _tfds_source(name: str, split: str, data_dir: str | None, image_key: str, *, fresh: bool = False):
  key = (name, split, data_dir, image_key)
  if fresh or key not in _TFDS_SOURCES:
    _TFDS_SOURCES[key] = _open_tfds_source(name, split, data_dir, image_key)
  return _TFDS_SOURCES[key]


@dataclasses.dataclass(frozen=True)
class TfdsImage(images_lib.LazyImage):
  """One example's image of a prepared TFDS split, read and decoded only when the pipeline loads it.

  Pickles as its five fields; a worker process opens the split's data source on first use (once per process).
  `height`/`width` are the dataset's declared image size when it is fixed (no read needed for planning)."""
  dataset: str
  split: str
  index: int
  image_key: str = "image"
  data_dir: str | None = None
  height: int | None = None
  width: int | None = None

  def read(self):
    value = _tfds_source(self.dataset, self.split, self.data_dir, self.image_key)[self.index][self.image_key]
    return value if isinstance(value, (bytes, np.ndarray)) else np.asarray(value)

  def size(self) -> tuple[int, int]:
    if self.height and self.width:
      return self.width, self.height
    return super().size()

  def describe(self) -> str:
    return f"tfds:{self.dataset}[{self.split}]#{self.index}"


@register_reader("tfds")
def read_tfds(path: str, *, skips: SkipCounter, split: str = "train", data_dir: str | None = None,
              class_names: dict[str, str] | None = None, image_key: str = "image",
              label_key: str = "label") -> Iterator[Record]:
  """A prepared TFDS classification set by name (`path`, e.g. "eurosat/rgb") via `tfds.data_source`.

  Lazy: listing the records reads each example's label only (the image field stays encoded bytes where TFDS can
  skip its decoder); Record.image is a `TfdsImage`, decoded when the pipeline loads it (`images.load_image`)."""
  import tensorflow_datasets as tfds  # lazy: optional dependency
  name = os.fspath(path)
  builder = tfds.builder(name, data_dir=data_dir)
  label_feature = builder.info.features[label_key]
  raw = list(label_feature.names)
  shown = [(class_names or {}).get(n, humanize_class_name(n)) for n in raw]
  prompt = classification_prompt(shown)
  shape = tuple(getattr(builder.info.features[image_key], "shape", ()) or ())
  fixed = (int(shape[0]), int(shape[1])) if len(shape) >= 2 and shape[0] and shape[1] else None
  source = _tfds_source(name, split, data_dir, image_key, fresh=True)  # this listing and its images: one source
  where = f"tfds:{name}[{split}]"
  for i in range(len(source)):
    try:
      try:
        label = int(source[i][label_key])
      except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"no integer label ({type(e).__name__}: {e})", source=where, line=i + 1, field=label_key,
                        reason="bad_label") from None
      if not 0 <= label < len(shown):
        raise DataError(f"label {label} outside the {len(shown)} classes", source=where, line=i + 1,
                        field=label_key, reason="bad_label")
    except DataError as e:
      skips.skip(e)
      continue
    image = TfdsImage(dataset=name, split=split, index=i, image_key=image_key, data_dir=data_dir,
                      height=fixed[0] if fixed else None, width=fixed[1] if fixed else None)
    yield Record(id=f"{name}/{split}/{i}", image=image, task="classify", answer=shown[label], source=where,
                 line=i + 1, image_size=(fixed[1], fixed[0]) if fixed else None,
                 messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": shown[label]}],
                 extra={"label": label, "class_name": raw[label]})
