"""Our NumPy image processor against transformers' Qwen2VLImageProcessorPil (the reference)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tinyrs_jax.data import image_processor as ip

hf_ip = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")


def _hf(images, **kwargs):
  out = hf_ip.Qwen2VLImageProcessorPil(**kwargs)(images=images, return_tensors="np")
  return out["pixel_values"], out["image_grid_thw"]


def _random_image(h, w, mode="RGB", seed=0):
  rng = np.random.default_rng(seed)
  channels = {"RGB": 3, "RGBA": 4, "L": None, "LA": 2}[mode]
  shape = (h, w) if channels is None else (h, w, channels)
  # Smooth gradients plus noise, so resampling filters see both edges and flat areas.
  base = np.linspace(0, 255, h * w).reshape(h, w)
  noise = rng.integers(0, 256, shape)
  arr = ((base if channels is None else base[..., None]) * 0.5 + noise * 0.5).astype(np.uint8)
  return Image.fromarray(arr, mode=mode)


SIZES = [(1, 1), (5, 7), (27, 29), (28, 28), (56, 56), (100, 300), (333, 517), (640, 480), (14, 2500),
         (1100, 1500)]


@pytest.mark.parametrize("h,w", SIZES)
def test_matches_hf_rgb(h, w):
  img = _random_image(h, w, seed=h * 7 + w)
  cfg = ip.ImageProcessorConfig()
  ours, grid = ip.preprocess_image(img, cfg)
  ref, ref_grid = _hf([img], min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
  assert ours.dtype == np.float32 and grid.dtype == np.int32
  np.testing.assert_array_equal(grid, ref_grid[0])
  assert ours.shape == ref.shape == (int(np.prod(grid)), 1176)
  np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA"])
def test_matches_hf_other_modes(mode):
  img = _random_image(90, 130, mode=mode, seed=3)
  ours, grid = ip.preprocess_image(img)
  ref, ref_grid = _hf([img], min_pixels=3136, max_pixels=12845056)
  np.testing.assert_array_equal(grid, ref_grid[0])
  np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_palette_with_transparency_matches_hf():
  img = _random_image(60, 80, seed=4).convert("P")
  img.info["transparency"] = 0
  ours, _ = ip.preprocess_image(img)
  ref, _ = _hf([img], min_pixels=3136, max_pixels=12845056)
  np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(70, 90), (70, 90, 1), (70, 90, 3), (70, 90, 4)])
def test_numpy_inputs_match_hf(shape):
  arr = np.random.default_rng(5).integers(0, 256, shape).astype(np.uint8)
  ours, grid = ip.preprocess_image(arr)
  # The reference takes no 2-D arrays; a grayscale PIL image is the same input for it.
  ref_input = Image.fromarray(arr.reshape(70, 90), "L") if arr.size == 70 * 90 else arr
  ref, ref_grid = _hf([ref_input], min_pixels=3136, max_pixels=12845056)
  np.testing.assert_array_equal(grid, ref_grid[0])
  np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_batch_concatenation_and_custom_limits():
  images = [_random_image(200, 300, seed=1), _random_image(700, 90, seed=2), _random_image(2000, 2600, seed=3)]
  cfg = ip.ImageProcessorConfig(min_pixels=64 * 28 * 28, max_pixels=256 * 28 * 28)
  ours, grids = ip.preprocess_images(images, cfg)
  ref, ref_grids = _hf(images, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
  np.testing.assert_array_equal(grids, ref_grids)
  np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
  assert [ip.num_image_tokens(g) for g in grids] == [int(np.prod(g)) // 4 for g in ref_grids]
  for img, g in zip(images, grids):
    np.testing.assert_array_equal(ip.grid_thw_for_size(*ip.image_size(img), cfg), g)


@pytest.mark.parametrize("form", ["top_level", "size", "both"])
def test_config_file_forms_match_hf(tmp_path, form):
  lo, hi = 100 * 28 * 28, 300 * 28 * 28
  d = {"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14, "merge_size": 2}
  if form == "top_level":
    d.update(min_pixels=lo, max_pixels=hi)
  elif form == "size":
    d["size"] = {"shortest_edge": lo, "longest_edge": hi}
  else:  # top-level values override size, as in transformers
    d.update(size={"shortest_edge": 1, "longest_edge": 2}, min_pixels=lo, max_pixels=hi)
  (tmp_path / "preprocessor_config.json").write_text(json.dumps(d))
  cfg = ip.ImageProcessorConfig.from_folder(tmp_path)
  ref_proc = hf_ip.Qwen2VLImageProcessorPil.from_pretrained(tmp_path)
  assert (cfg.min_pixels, cfg.max_pixels) == (ref_proc.size["shortest_edge"], ref_proc.size["longest_edge"])
  assert (cfg.min_pixels, cfg.max_pixels) == (lo, hi)
  img = _random_image(1000, 1500, seed=9)
  ours, grid = ip.preprocess_image(img, cfg)
  ref = ref_proc(images=[img], return_tensors="np")
  np.testing.assert_array_equal(grid, ref["image_grid_thw"][0])
  np.testing.assert_allclose(ours, ref["pixel_values"], atol=1e-5, rtol=0)


def test_config_defaults_and_round_trip(tmp_path):
  cfg = ip.ImageProcessorConfig()
  assert (cfg.min_pixels, cfg.max_pixels) == (3136, 12845056)  # the 2B hub file
  assert ip.ImageProcessorConfig.from_folder(tmp_path) == cfg  # no file: the same defaults
  # A file naming no limits is read as transformers reads it: its class default.
  (tmp_path / "preprocessor_config.json").write_text(json.dumps({"patch_size": 14}))
  assert ip.ImageProcessorConfig.from_folder(tmp_path).max_pixels == 28 * 28 * 1280
  custom = ip.ImageProcessorConfig(min_pixels=512 * 784, max_pixels=1280 * 784)
  custom.save(tmp_path)
  assert ip.ImageProcessorConfig.from_folder(tmp_path) == custom
  ref = hf_ip.Qwen2VLImageProcessorPil.from_pretrained(tmp_path)
  assert (ref.size["shortest_edge"], ref.size["longest_edge"]) == (512 * 784, 1280 * 784)
  assert list(ref.image_mean) == list(custom.image_mean) and ref.patch_size == 14


def test_config_errors(tmp_path):
  with pytest.raises(ValueError, match="shortest_edge"):
    ip.ImageProcessorConfig.from_dict({"size": {"shortest_edge": 10}})
  with pytest.raises(ValueError, match="min_pixels"):
    ip.ImageProcessorConfig(min_pixels=10, max_pixels=5)
  (tmp_path / "preprocessor_config.json").write_text("{not json")
  with pytest.raises(ValueError, match="preprocessor_config.json"):
    ip.ImageProcessorConfig.from_folder(tmp_path)


@pytest.mark.parametrize("h,w", [(1, 1), (13, 13), (14, 14), (42, 42), (70, 98), (98, 70), (1, 200), (3, 600),
                                 (224, 224), (1080, 1920), (4000, 3000), (10000, 100), (28 * 200, 28), (28 * 201, 28),
                                 (12345, 6789)])
@pytest.mark.parametrize("limits", [(56 * 56, 28 * 28 * 1280), (3136, 12845056), (512 * 784, 1280 * 784)])
def test_smart_resize_matches_hf(h, w, limits):
  lo, hi = limits
  try:
    ref = hf_ip.smart_resize(h, w, 28, lo, hi)
  except ValueError:
    with pytest.raises(ValueError, match="aspect ratio"):
      ip.smart_resize(h, w, 28, lo, hi)
    return
  assert ip.smart_resize(h, w, 28, lo, hi) == ref


def test_smart_resize_half_to_even_and_errors():
  # 42 / 28 = 1.5 -> 2 and 70 / 28 = 2.5 -> 2 under half-to-even.
  assert ip.smart_resize(42, 70, min_pixels=1, max_pixels=10**9) == (56, 56)
  with pytest.raises(ValueError, match="aspect ratio"):
    ip.smart_resize(1, 201)
  with pytest.raises(ValueError, match="too small"):
    ip.smart_resize(0, 10)


def test_input_errors():
  with pytest.raises(ValueError, match="uint8"):
    ip.preprocess_image(np.zeros((30, 30, 3), np.float32))
  with pytest.raises(ValueError, match="shape"):
    ip.preprocess_image(np.zeros((30, 30, 5), np.uint8))
  with pytest.raises(TypeError, match="PIL"):
    ip.preprocess_image("image.png")
  with pytest.raises(ValueError, match="mode 'L'"):
    ip.preprocess_image(Image.new("L", (30, 30)), ip.ImageProcessorConfig(do_convert_rgb=False))
  with pytest.raises(ValueError, match="multiple of 28"):
    ip.preprocess_image(Image.new("RGB", (30, 30)), ip.ImageProcessorConfig(do_resize=False))


def test_no_resize_and_layout():
  """With do_resize off, check the patch layout directly: 2x2 merge blocks, then C, T, ph, pw."""
  arr = np.random.default_rng(0).integers(0, 256, (56, 84, 3)).astype(np.uint8)
  cfg = ip.ImageProcessorConfig(do_resize=False, do_normalize=False, do_rescale=False)
  patches, grid = ip.preprocess_image(arr, cfg)
  assert grid.tolist() == [1, 4, 6]
  p = patches.reshape(2, 3, 2, 2, 3, 2, 14, 14)  # (gh/2, gw/2, mh, mw, C, T, ph, pw)
  # Patch row 3 (mh=1), column 4 (block 2, mw=0), channel 1.
  np.testing.assert_array_equal(p[1, 2, 1, 0, 1, 0], arr[3 * 14:4 * 14, 4 * 14:5 * 14, 1])
  np.testing.assert_array_equal(p[..., 0, :, :], p[..., 1, :, :])  # temporal copies
  ref, _ = _hf([arr], do_resize=False, do_normalize=False, do_rescale=False)
  np.testing.assert_array_equal(patches, ref)
