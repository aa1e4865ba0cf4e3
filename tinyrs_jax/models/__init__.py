"""Qwen2-VL in Flax NNX: presets, vision tower, decoder with M-RoPE, the joint model."""
from tinyrs_jax.models.presets import Qwen2VLConfig, TextConfig, VisionConfig, get_preset, preset_names
from tinyrs_jax.models.qwen2_vl import Qwen2VL
