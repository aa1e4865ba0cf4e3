"""Qwen2-VL image preprocessing in NumPy and PIL (no torch, no transformers).

Pixel-for-pixel equal to transformers' `Qwen2VLImageProcessorPil` (5.24): RGB conversion (transparency
composited onto white), `smart_resize` to multiples of 28, PIL BICUBIC resize of the uint8 image, rescale by
1/255, CLIP normalization, then patchify into rows of 3*2*14*14 = 1176 values in the order the vision tower's
Conv3d expects (C, T, ph, pw), with the rows of each 2x2 merge block next to each other.

Pixel limits. transformers' class default is max 28*28*1280 = 1,003,520, but the Qwen2-VL-2B hub
preprocessor_config.json says min 3136, max 12,845,056. `ImageProcessorConfig()` (and a folder without a
preprocessor_config.json) uses the hub numbers; a file that is present is read exactly as transformers reads
it, so a file naming neither `max_pixels` nor `size` gets transformers' class default.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# transformers' Qwen2VLImageProcessor class defaults (used for a config file that names no limits).
HF_DEFAULT_MIN_PIXELS = 56 * 56
HF_DEFAULT_MAX_PIXELS = 28 * 28 * 1280
# Qwen2-VL-2B(-Instruct) hub preprocessor_config.json values: our defaults.
QWEN2VL_MIN_PIXELS = 3136
QWEN2VL_MAX_PIXELS = 12845056

PREPROCESSOR_CONFIG = "preprocessor_config.json"
_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the value transformers stores as "resample"


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
  """Target (h, w): multiples of `factor`, area within [min, max], aspect ratio kept (as transformers)."""
  if height < 1 or width < 1:
    raise ValueError(f"image too small to resize: height={height}, width={width} (both must be >= 1)")
  ratio = max(height, width) / min(height, width)
  if ratio > 200:
    raise ValueError(f"image aspect ratio must be at most 200, got {ratio:.1f} (height={height}, width={width})")
  # Python's round is half-to-even, like the reference.
  h_bar = round(height / factor) * factor
  w_bar = round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  if h_bar < factor or w_bar < factor:
    # Only reachable with min_pixels <= 0; the reference would crash later in patchify.
    raise ValueError(f"image too small: height={height}, width={width} resizes to {h_bar}x{w_bar}, "
                     f"below one {factor}x{factor} block; raise min_pixels")
  return h_bar, w_bar


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
  """The preprocessor_config.json fields Qwen2-VL uses. Defaults: the 2B hub file."""
  min_pixels: int = QWEN2VL_MIN_PIXELS
  max_pixels: int = QWEN2VL_MAX_PIXELS
  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2
  image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
  image_std: tuple[float, ...] = OPENAI_CLIP_STD
  do_resize: bool = True
  resample: int = _BICUBIC
  do_rescale: bool = True
  rescale_factor: float = 1 / 255
  do_normalize: bool = True
  do_convert_rgb: bool = True

  def __post_init__(self):
    if not 0 < self.min_pixels <= self.max_pixels:
      raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={self.min_pixels}, "
                       f"max_pixels={self.max_pixels}")
    if len(self.image_mean) != 3 or len(self.image_std) != 3:
      raise ValueError(f"image_mean and image_std need 3 values (RGB), got {self.image_mean}, {self.image_std}")
    # Lists from JSON become tuples so the config stays hashable.
    object.__setattr__(self, "image_mean", tuple(float(v) for v in self.image_mean))
    object.__setattr__(self, "image_std", tuple(float(v) for v in self.image_std))

  @property
  def factor(self) -> int:
    """Side multiple of a resized image: one merge block of patches."""
    return self.patch_size * self.merge_size

  @property
  def patch_dim(self) -> int:
    return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

  @classmethod
  def from_dict(cls, d: dict[str, Any], source: str = "preprocessor config") -> ImageProcessorConfig:
    """Reads either form transformers accepts: top-level min/max_pixels, or size={shortest,longest}_edge.

    As in transformers, `size` replaces the class default size, then top-level min_pixels / max_pixels
    override its shortest_edge / longest_edge.
    """
    size = d.get("size")
    if size is None:
      size = {"shortest_edge": HF_DEFAULT_MIN_PIXELS, "longest_edge": HF_DEFAULT_MAX_PIXELS}
    elif not isinstance(size, dict):
      raise ValueError(f"{source}: 'size' must be a dict with shortest_edge/longest_edge, got {size!r}")
    min_pixels = d.get("min_pixels")
    max_pixels = d.get("max_pixels")
    min_pixels = size.get("shortest_edge") if min_pixels is None else min_pixels
    max_pixels = size.get("longest_edge") if max_pixels is None else max_pixels
    if min_pixels is None or max_pixels is None:
      raise ValueError(f"{source}: pixel limits incomplete: 'size' {size!r} needs 'shortest_edge' (min pixels) "
                       "and 'longest_edge' (max pixels), or give top-level 'min_pixels'/'max_pixels'")
    kwargs: dict[str, Any] = {"min_pixels": int(min_pixels), "max_pixels": int(max_pixels)}
    for f in dataclasses.fields(cls):
      if f.name in d and f.name not in kwargs and d[f.name] is not None:
        kwargs[f.name] = d[f.name]
    try:
      return cls(**kwargs)
    except ValueError as e:
      raise ValueError(f"{source}: {e}") from None

  @classmethod
  def from_folder(cls, path: str | os.PathLike) -> ImageProcessorConfig:
    """Reads path/preprocessor_config.json; the 2B hub defaults when the file is absent."""
    file = os.path.join(path, PREPROCESSOR_CONFIG)
    if not os.path.exists(file):
      return cls()
    try:
      with open(file, encoding="utf-8") as f:
        d = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{file}: not valid JSON ({e})") from None
    return cls.from_dict(d, source=file)

  def to_dict(self) -> dict[str, Any]:
    """preprocessor_config.json content. Both limit forms are written (same values) so old and new readers agree."""
    d = dataclasses.asdict(self)
    d["image_mean"] = list(self.image_mean)
    d["image_std"] = list(self.image_std)
    d["size"] = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}
    d["image_processor_type"] = "Qwen2VLImageProcessor"
    d["processor_class"] = "Qwen2VLProcessor"
    return d

  def save(self, path: str | os.PathLike) -> str:
    """Writes path/preprocessor_config.json and returns its file name."""
    os.makedirs(path, exist_ok=True)
    file = os.path.join(path, PREPROCESSOR_CONFIG)
    with open(file, "w", encoding="utf-8") as f:
      json.dump(self.to_dict(), f, indent=2)
      f.write("\n")
    return file


def _to_rgb_uint8(image: Any, convert_rgb: bool) -> np.ndarray:
  """HxWx3 uint8 array, converting modes the way transformers does (alpha onto white)."""
  if isinstance(image, Image.Image):
    if not convert_rgb:
      if image.mode != "RGB":
        raise ValueError(f"image mode {image.mode!r} is not RGB and do_convert_rgb is off")
      return np.asarray(image)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
      rgba = image.convert("RGBA")
      white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
      return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8:
      raise ValueError(f"image array must be uint8 (HxW, HxWx1, HxWx3 or HxWx4), got dtype {image.dtype}")
    if image.ndim == 2:
      image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
      raise ValueError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4 (channels last), got shape {image.shape}")
    channels = image.shape[-1]
    if channels != 3 and not convert_rgb:
      raise ValueError(f"image has {channels} channels and do_convert_rgb is off")
    if channels == 1:
      return np.repeat(image, 3, axis=-1)
    if channels == 4:
      # Same arithmetic as transformers' numpy path: float blend onto white, round half to even.
      alpha = image[..., 3:4] / 255
      return np.round(alpha * image[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return image
  raise TypeError(f"image must be a PIL.Image or a uint8 numpy array, got {type(image).__name__}")


def _value_table(cfg: ImageProcessorConfig) -> np.ndarray:
  """(3, 256) float32: every uint8 value rescaled and normalized per channel, same float ops as the reference."""
  v = np.arange(256, dtype=np.float64)
  x = (v * cfg.rescale_factor).astype(np.float32) if cfg.do_rescale else v.astype(np.float32)
  x = np.broadcast_to(x, (3, 256))
  if cfg.do_normalize:
    mean = np.asarray(cfg.image_mean, np.float32)[:, None]
    std = np.asarray(cfg.image_std, np.float32)[:, None]
    x = (x - mean) / std
  return np.ascontiguousarray(x, dtype=np.float32)


def image_size(image: Any) -> tuple[int, int]:
  """(height, width) of a PIL image or an HxW[xC] array, without decoding pixels."""
  if isinstance(image, Image.Image):
    return image.height, image.width
  if isinstance(image, np.ndarray) and image.ndim in (2, 3):
    return int(image.shape[0]), int(image.shape[1])
  raise TypeError(f"image must be a PIL.Image or an HxW[xC] numpy array, got {type(image).__name__} "
                  f"{getattr(image, 'shape', '')}")


def grid_thw_for_size(height: int, width: int, cfg: ImageProcessorConfig | None = None) -> np.ndarray:
  """The image_grid_thw an image of this size gets, [1, H'/p, W'/p] int32, without processing it."""
  cfg = cfg or ImageProcessorConfig()
  height, width = _target_size(height, width, cfg)
  return np.array([1, height // cfg.patch_size, width // cfg.patch_size], dtype=np.int32)


def _target_size(height: int, width: int, cfg: ImageProcessorConfig) -> tuple[int, int]:
  if cfg.do_resize:
    return smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
  if height % cfg.factor or width % cfg.factor or height == 0 or width == 0:
    raise ValueError(f"do_resize is off, so the image size must be a positive multiple of {cfg.factor}; "
                     f"got height={height}, width={width}")
  return height, width


def preprocess_image(image: Any, cfg: ImageProcessorConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
  """One image -> (patches float32 (t*h*w, 3*T*p*p), grid_thw int32 (3,) = [1, H/p, W/p])."""
  cfg = cfg or ImageProcessorConfig()
  rgb = _to_rgb_uint8(image, cfg.do_convert_rgb)
  height, width = rgb.shape[:2]
  h, w = _target_size(height, width, cfg)
  if cfg.do_resize:
    rgb = np.asarray(Image.fromarray(rgb).resize((w, h), resample=cfg.resample))
  p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
  gh, gw = h // p, w // p
  # (H, W, C) -> (gh/m, gw/m, m, m, C, p, p): rows of a 2x2 merge block are consecutive.
  u = rgb.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5).reshape(gh * gw, 3, 1, p, p)
  values = _value_table(cfg)[np.arange(3)[:, None, None, None], u]  # (N, 3, 1, p, p) float32
  # A still image fills the temporal axis by repetition.
  patches = np.broadcast_to(values, (gh * gw, 3, t, p, p)).reshape(gh * gw, 3 * t * p * p)
  return patches, np.array([1, gh, gw], dtype=np.int32)


def preprocess_images(images: Sequence[Any], cfg: ImageProcessorConfig | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Images -> (pixel_values (sum of patches, 1176) float32, image_grid_thw (n, 3) int32), concatenated in order."""
  cfg = cfg or ImageProcessorConfig()
  if len(images) == 0:
    return np.zeros((0, cfg.patch_dim), np.float32), np.zeros((0, 3), np.int32)
  out = [preprocess_image(im, cfg) for im in images]
  return np.concatenate([o[0] for o in out]), np.stack([o[1] for o in out])


def num_image_tokens(grid_thw: Sequence[int] | np.ndarray, merge_size: int = 2) -> int:
  """Number of <|image_pad|> tokens (LLM positions) an image with this grid takes."""
  t, h, w = (int(v) for v in grid_thw)
  return t * h * w // (merge_size * merge_size)
