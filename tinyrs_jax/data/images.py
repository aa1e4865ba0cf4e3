"""Image loading: any file or array the readers meet -> H x W x 3 uint8 RGB, by documented rules.

Rules (applied in this order):
  1. Files: `.tif`/`.tiff` are read with tifffile (multi-band, 16-bit, float GeoTIFF); everything else with
     PIL, fully decoded so a truncated file fails here and not mid-batch. PIL palette/CMYK/YCbCr images are
     converted to RGB by PIL.
  2. Layout: a 2-D array is one band. A 3-D array whose first axis is small (<= 16) and last axis large is
     band-first (planar GeoTIFF) and is transposed to H x W x C.
  3. Band choice (`bands=None`):
       1 band            grayscale, replicated to R = G = B
       2 bands           gray + alpha: the gray band, replicated (alpha dropped)
       3 bands           taken as R, G, B
       4 bands           RGBA (alpha dropped) or R, G, B, NIR (NIR dropped): the first three bands.
                         Data stored B, G, R, NIR must pass bands=(2, 1, 0).
       13 bands          Sentinel-2 L1C order (B1, B2, …, B8, B8A, B9, B10, B11, B12): B4, B3, B2 =
                         indices (3, 2, 1)
       any other count   refused (DataError) unless `bands=` names 1 or 3 band indices
  4. Values: uint8 is kept as is. Anything else (uint16, int, float, bool) is stretched per chosen band:
     the 2nd and 98th percentiles (NaN ignored) map to 0 and 255, values outside are clipped, NaN becomes 0,
     and a flat band (p98 == p2) becomes 0.

Sources: a path, an in-memory array, encoded bytes (PNG/JPEG/TIFF/…, as stored in TensorFlow Datasets), or a
`LazyImage`, an object that fetches its array or bytes only when asked (e.g. one example of a TFDS split), so a
reader can hand out thousands of records without reading or decoding any pixels; `image_size` reads only what the
size needs (a header, or nothing when the object knows its size).

Any failure (missing file, truncated or corrupt data, unsupported layout) raises DataError naming the file.
"""
from __future__ import annotations

import io
import os
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageFile

from tinyrs_jax.data.records import DataError

SENTINEL2_RGB = (3, 2, 1)  # B4 (red), B3 (green), B2 (blue) in the 13-band L1C order
STRETCH_PERCENTILES = (2.0, 98.0)
_TIFF = re.compile(r"\.tiff?$", re.IGNORECASE)

# Truncated files must fail, never be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _error(name: str, message: str, reason: str) -> DataError:
  return DataError(message, source=name, field="image", reason=reason)


class LazyImage:
  """An image fetched only when it is loaded: subclasses implement `read()`, returning an array or encoded bytes.

  `size()` is (width, height) of the loaded image; the default reads the data and takes the header of the bytes
  (no pixel decoding) or the array's shape; subclasses that know the size without reading override it.
  `shape`, `dtype` and `ndim` describe the array `load_image` will return (H x W x 3 uint8), so code that only
  inspects an image's geometry works on a lazy image as on an array. Instances must pickle small (they travel to
  data-loading worker processes): keep only what is needed to fetch the data, never the data itself.
  """
  dtype = np.dtype(np.uint8)
  ndim = 3

  def read(self) -> np.ndarray | bytes:
    raise NotImplementedError

  def size(self) -> tuple[int, int]:
    return _size_of_data(self.read(), self.describe())

  def describe(self) -> str:
    """How errors name this image."""
    return repr(self)

  @property
  def shape(self) -> tuple[int, int, int]:
    width, height = self.size()
    return (height, width, 3)


def _read_lazy(source: LazyImage, name: str) -> np.ndarray | bytes:
  try:
    return source.read()
  except DataError:
    raise
  except Exception as e:  # a dataset backend may raise anything on a bad example
    raise _error(name, f"cannot read image ({type(e).__name__}: {e})", "corrupt_image") from None


def load_image(source: Any, *, bands: Sequence[int] | None = None, name: str | None = None) -> np.ndarray:
  """A path, array, encoded bytes or LazyImage -> H x W x 3 uint8 RGB (rules in the module docstring).
  `name` names it in errors."""
  if isinstance(source, LazyImage):
    name = name or source.describe()
    source = _read_lazy(source, name)
  if isinstance(source, np.ndarray):
    return to_rgb_uint8(source, bands=bands, name=name or "<array>")
  if isinstance(source, (bytes, bytearray, memoryview)):
    name = name or "<encoded image>"
    return to_rgb_uint8(_decode_bytes(bytes(source), name), bands=bands, name=name)
  path = os.fspath(source)
  name = name or path
  if not os.path.exists(path):
    raise _error(name, "image file does not exist", "missing_image")
  if _TIFF.search(path):
    array = _read_tiff(path, name)
  else:
    array = _read_pil(path, name)
  return to_rgb_uint8(array, bands=bands, name=name)


def _read_tiff(path: str, name: str) -> np.ndarray:
  import tifffile  # lazy: only GeoTIFF users pay for it
  try:
    return np.asarray(tifffile.imread(path))
  except Exception as e:  # tifffile raises many types on bad files
    # Some .tif files are plain images tifffile cannot decode (e.g. JPEG-in-TIFF); PIL may.
    try:
      return _read_pil(path, name)
    except DataError:
      raise _error(name, f"cannot read TIFF ({type(e).__name__}: {e})", "corrupt_image") from None


def _read_pil(path: str | io.BytesIO, name: str) -> np.ndarray:
  try:
    with Image.open(path) as img:
      img.load()  # decode everything now: truncation surfaces here
      if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
      return np.asarray(img)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise _error(name, f"cannot decode image ({type(e).__name__}: {e})", "corrupt_image") from None


def _decode_bytes(data: bytes, name: str) -> np.ndarray:
  """Encoded image bytes -> array: PIL, fully decoded; TIFF that PIL cannot read goes to tifffile."""
  try:
    return _read_pil(io.BytesIO(data), name)
  except DataError:
    if not data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
      raise
  import tifffile
  try:
    return np.asarray(tifffile.imread(io.BytesIO(data)))
  except Exception as e:
    raise _error(name, f"cannot read TIFF ({type(e).__name__}: {e})", "corrupt_image") from None


def to_rgb_uint8(array: np.ndarray, *, bands: Sequence[int] | None = None, name: str = "<array>") -> np.ndarray:
  a = np.asarray(array)
  if a.ndim == 2:
    a = a[:, :, None]
  elif a.ndim == 3 and a.shape[0] <= 16 and a.shape[-1] > 16:
    a = np.moveaxis(a, 0, -1)  # band-first (planar) -> H x W x C
  if a.ndim != 3 or a.shape[0] == 0 or a.shape[1] == 0:
    raise _error(name, f"unsupported image array shape {a.shape}", "bad_image_shape")
  a = a[:, :, list(_choose_bands(a.shape[-1], bands, name))]
  if a.dtype != np.uint8:
    a = stretch_to_uint8(a)
  if a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  return np.ascontiguousarray(a)


def _choose_bands(num_bands: int, bands: Sequence[int] | None, name: str) -> tuple[int, ...]:
  if bands is not None:
    bands = tuple(int(b) for b in bands)
    if len(bands) not in (1, 3) or not all(0 <= b < num_bands for b in bands):
      raise _error(name, f"bands={bands} must name 1 or 3 of the image's {num_bands} bands (0-based)",
                   "bad_bands")
    return bands
  if num_bands in (1, 2):
    return (0,)
  if num_bands in (3, 4):
    return (0, 1, 2)
  if num_bands == 13:
    return SENTINEL2_RGB
  raise _error(name, f"{num_bands}-band image: no default RGB band choice; pass bands=(r, g, b) indices",
               "unsupported_bands")


def stretch_to_uint8(a: np.ndarray) -> np.ndarray:
  """Per-band 2-98 percentile stretch to uint8; NaN -> 0, flat band -> 0."""
  a = a.astype(np.float64)
  out = np.zeros(a.shape, dtype=np.uint8)
  for c in range(a.shape[-1]):
    band = a[..., c]
    finite = np.isfinite(band)
    if not finite.any():
      continue
    lo, hi = np.percentile(band[finite], STRETCH_PERCENTILES)
    if hi <= lo:
      continue
    scaled = np.clip((band - lo) / (hi - lo), 0.0, 1.0) * 255.0
    out[..., c] = np.where(finite, np.round(np.nan_to_num(scaled)), 0).astype(np.uint8)
  return out


def image_size(source: Any, *, name: str | None = None) -> tuple[int, int]:
  """(width, height) without decoding pixels (header only) where the format allows."""
  if isinstance(source, LazyImage):
    name = name or source.describe()
    try:
      width, height = source.size()
    except DataError:
      raise
    except Exception as e:
      raise _error(name, f"cannot read image size ({type(e).__name__}: {e})", "corrupt_image") from None
    return int(width), int(height)
  if isinstance(source, (np.ndarray, bytes, bytearray, memoryview)):
    return _size_of_data(source, name or "<image data>")
  path = os.fspath(source)
  name = name or path
  if not os.path.exists(path):
    raise _error(name, "image file does not exist", "missing_image")
  try:
    with Image.open(path) as img:
      return int(img.size[0]), int(img.size[1])
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
    pass
  if _TIFF.search(path):
    import tifffile
    try:
      with tifffile.TiffFile(path) as tif:
        shape = tif.series[0].shape
      return _size_from_shape(shape)
    except Exception as e:
      raise _error(name, f"cannot read TIFF header ({type(e).__name__}: {e})", "corrupt_image") from None
  raise _error(name, "cannot read image header", "corrupt_image")


def _size_of_data(data: np.ndarray | bytes, name: str) -> tuple[int, int]:
  """(width, height) of an array, or of encoded bytes from their header alone."""
  if isinstance(data, np.ndarray):
    return _size_from_shape(data.shape)
  data = bytes(data)
  try:
    with Image.open(io.BytesIO(data)) as img:
      return int(img.size[0]), int(img.size[1])
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
    pass
  import tifffile
  try:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
      return _size_from_shape(tif.series[0].shape)
  except Exception as e:
    raise _error(name, f"cannot read image header ({type(e).__name__}: {e})", "corrupt_image") from None


def _size_from_shape(shape) -> tuple[int, int]:
  """(width, height) of an array shape under the layout rule of `to_rgb_uint8`."""
  if len(shape) == 3 and shape[0] <= 16 and shape[-1] > 16:
    return int(shape[2]), int(shape[1])
  return int(shape[1]), int(shape[0])
