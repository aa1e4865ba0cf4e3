"""Qwen2-VL processor: chat text + images -> model inputs as NumPy arrays (no torch, no transformers).

`Processor.__call__` matches transformers' `Qwen2VLProcessor(..., padding=True, return_tensors="np")` with the
PIL image backend: each `<|image_pad|>` in the text becomes t*h*w/4 copies (images consumed in order), rows
are padded with <|endoftext|>, and mm_token_type_ids marks image (1) and video (2) tokens. Integer outputs
are int32 (transformers gives int64); pixel_values are float32.

`<|image_pad|>` is an added token, so the text around it tokenizes the same however many copies follow; we
tokenize the unexpanded text and repeat the id, which gives transformers' ids without tokenizing thousands
of placeholder strings.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from tinyrs_jax.data.image_processor import (ImageProcessorConfig, grid_thw_for_size, image_size, num_image_tokens,
                                             preprocess_images)
from tinyrs_jax.data.padding import pad_token_rows
from tinyrs_jax.data.tokenizer import Tokenizer


class SequenceTooLong(ValueError):
  """A tokenized example is longer than the allowed maximum (the caller decides whether to skip it)."""

  def __init__(self, length: int, limit: int):
    super().__init__(f"sequence has {length} tokens, more than max_length={limit}")
    self.length = length
    self.limit = limit


def _is_image(x: Any) -> bool:
  return isinstance(x, (Image.Image, np.ndarray))


def _images_from_messages(messages: Sequence[dict[str, Any]]) -> list[Any]:
  """Images embedded in content parts as {"type": "image", "image": <PIL or array>}, in order."""
  found = []
  for m in messages:
    content = m.get("content")
    if isinstance(content, list):
      found.extend(p["image"] for p in content if isinstance(p, dict) and _is_image(p.get("image")))
  return found


class Processor:
  """Tokenizer + image processor, the NumPy twin of transformers' Qwen2VLProcessor."""

  def __init__(self, tokenizer: Tokenizer, image_cfg: ImageProcessorConfig | None = None):
    self.tokenizer = tokenizer
    self.image_cfg = image_cfg or ImageProcessorConfig()

  @classmethod
  def from_folder(cls, path: str | os.PathLike, min_pixels: int | None = None,
                  max_pixels: int | None = None) -> Processor:
    """Loads tokenizer files and preprocessor_config.json from a checkpoint folder; pixel limits may be overridden."""
    cfg = ImageProcessorConfig.from_folder(path)
    overrides = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    if overrides:
      cfg = dataclasses.replace(cfg, **overrides)
    return cls(Tokenizer.from_folder(path), cfg)

  # -- helpers -------------------------------------------------------------------------------------------

  def _check_no_video(self, ids: Sequence[int], where: str) -> None:
    if self.tokenizer.video_pad_id in ids:
      raise ValueError(f"{where}: contains <|video_pad|>, but videos are not supported")

  def _expand(self, ids: np.ndarray, grids: Sequence[np.ndarray]) -> np.ndarray:
    """Positions to take from `ids` so that the k-th <|image_pad|> repeats num_image_tokens(grids[k]) times."""
    repeats = np.ones(len(ids), np.int64)
    repeats[ids == self.tokenizer.image_pad_id] = [num_image_tokens(g, self.image_cfg.merge_size) for g in grids]
    return np.repeat(np.arange(len(ids)), repeats)

  def _mm_types(self, ids: np.ndarray) -> np.ndarray:
    types = np.zeros(ids.shape, np.int32)
    types[ids == self.tokenizer.image_pad_id] = 1
    types[ids == self.tokenizer.video_pad_id] = 2
    return types

  # -- inference batches ---------------------------------------------------------------------------------

  def __call__(self, text: str | Sequence[str], images: Any = None, padding_side: str = "left",
               return_mm_token_type_ids: bool = True) -> dict[str, np.ndarray]:
    """Batch of prompts -> input_ids, attention_mask (int32, padded to the longest row), mm_token_type_ids,
    and, when images are given, pixel_values (patches, 1176) float32 and image_grid_thw (n, 3) int32.

    `images`: one image, a flat list (consumed in order across the batch), or one list per prompt.
    """
    if padding_side not in ("left", "right"):
      raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    texts = [text] if isinstance(text, str) else list(text)
    if not texts or not all(isinstance(t, str) for t in texts):
      raise ValueError("text must be a string or a non-empty list of strings")
    rows = [np.asarray(ids, np.int64) for ids in self.tokenizer.encode_batch(texts)]
    for i, r in enumerate(rows):
      self._check_no_video(r.tolist(), f"text[{i}]")
    counts = [int((r == self.tokenizer.image_pad_id).sum()) for r in rows]
    flat = self._flatten_images(images, counts)

    result: dict[str, np.ndarray] = {}
    grids: list[np.ndarray] = []
    if images is not None:  # like transformers, the image keys appear only when images were passed
      result["pixel_values"], result["image_grid_thw"] = preprocess_images(flat, self.image_cfg)
      grids = list(result["image_grid_thw"])
    start = 0
    for i, r in enumerate(rows):
      rows[i] = r[self._expand(r, grids[start:start + counts[i]])]
      start += counts[i]

    input_ids, attention_mask = pad_token_rows(rows, max(len(r) for r in rows), self.tokenizer.pad_id,
                                               side=padding_side)
    result = {"input_ids": input_ids, "attention_mask": attention_mask, **result}
    if return_mm_token_type_ids:
      result["mm_token_type_ids"] = self._mm_types(input_ids)
    return result

  def _flatten_images(self, images: Any, counts: list[int]) -> list[Any]:
    """Checks the image count against the <|image_pad|> count (per prompt when nested) and flattens."""
    if images is None:
      if sum(counts):
        raise ValueError(f"the text has {sum(counts)} <|image_pad|> tokens but no images were passed")
      return []
    if _is_image(images):
      images = [images]
    images = list(images)
    if images and all(isinstance(x, (list, tuple)) for x in images):
      if len(images) != len(counts):
        raise ValueError(f"got image lists for {len(images)} prompts but {len(counts)} prompts")
      for i, (group, n) in enumerate(zip(images, counts)):
        if len(group) != n:
          raise ValueError(f"prompt {i} has {n} <|image_pad|> tokens but {len(group)} images")
      images = [x for group in images for x in group]
    bad = [type(x).__name__ for x in images if not _is_image(x)]
    if bad:
      raise TypeError(f"images must be PIL images or uint8 arrays (or lists of them), got {bad[0]}")
    if len(images) != sum(counts):
      raise ValueError(f"the text has {sum(counts)} <|image_pad|> tokens but {len(images)} images were passed")
    return images

  def encode_chat(self, messages: Sequence[dict[str, Any]], images: Sequence[Any] | None = None,
                  add_generation_prompt: bool = True) -> dict[str, np.ndarray]:
    """One conversation through the chat template -> a batch of one (see __call__).

    Without `images`, images are taken from content parts like {"type": "image", "image": <PIL>}.
    """
    text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    if images is None:
      images = _images_from_messages(messages) or None
    return self([text], None if images is None else list(images))

  # -- training examples ---------------------------------------------------------------------------------

  def assistant_spans(self, messages: Sequence[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and, per assistant message, the character span of its content plus the
    closing <|im_end|> (the tokens the model must learn to produce).

    Found by rendering growing prefixes of the conversation: message k's text is render(messages[:k+1]) minus
    render(messages[:k]); the assistant's content starts after render(messages[:k], add_generation_prompt)
    and ends at that region's last <|im_end|>. Any template where each render extends the previous one
    works, whatever the content holds.
    """
    render = self.tokenizer.apply_chat_template
    full = render(messages)
    im_end = "<|im_end|>"
    spans = []
    for k, m in enumerate(messages):
      if m.get("role") != "assistant":
        continue
      prompt = render(messages[:k], add_generation_prompt=True)
      upto = render(messages[:k + 1])
      if not (upto.startswith(prompt) and full.startswith(upto)):
        raise ValueError(f"message {k}: the chat template does not render the conversation prefix by prefix "
                         "(does the conversation start with a system or user message?)")
      end = upto.rfind(im_end, len(prompt))
      if end < 0:
        raise ValueError(f"message {k}: no {im_end} after the assistant content in the rendered chat")
      spans.append((len(prompt), end + len(im_end)))
    return full, spans

  def encode_for_training(self, messages: Sequence[dict[str, Any]], images: Sequence[Any] | None = None,
                          max_length: int | None = None) -> dict[str, np.ndarray]:
    """A whole conversation -> input_ids (L,) int32, loss_mask (L,) int32 (1 on assistant content and its
    <|im_end|>, 0 elsewhere, image tokens included), pixel_values (P, 1176) float32, image_grid_thw (n, 3) int32.

    The text is tokenized once, so the ids are exactly those the chat renders to at inference. A token is
    learned when its first character lies in an assistant span; so content that starts with a newline, which
    the tokenizer merges with the template's "assistant\n" into one prompt token, doesn't learn that newline.
    Raises SequenceTooLong when the expanded length exceeds max_length.
    """
    full, spans = self.assistant_spans(messages)
    ids, offsets = self.tokenizer.encode_with_offsets(full)
    ids = np.asarray(ids, np.int64)
    self._check_no_video(ids.tolist(), "conversation")
    # A token learns when its first character lies in an assistant span.
    starts = np.asarray([s for s, _ in offsets], np.int64).reshape(-1)
    mask = np.zeros(len(ids), bool)
    for a, b in spans:
      mask |= (starts >= a) & (starts < b)

    if images is None:
      images = _images_from_messages(messages)
    n_pads = int((ids == self.tokenizer.image_pad_id).sum())
    if len(images) != n_pads:
      raise ValueError(f"the conversation has {n_pads} images in its text but {len(images)} images were passed")
    # Sizes decide the length, so an over-long example is rejected before any pixel work.
    grids = [grid_thw_for_size(*image_size(im), self.image_cfg) for im in images]
    take = self._expand(ids, grids)
    if max_length is not None and len(take) > max_length:
      raise SequenceTooLong(len(take), max_length)
    pixel_values, grid_thw = preprocess_images(list(images), self.image_cfg)
    ids, mask = ids[take], mask[take]
    mask &= ids != self.tokenizer.image_pad_id
    return {"input_ids": ids.astype(np.int32), "loss_mask": mask.astype(np.int32),
            "pixel_values": pixel_values, "image_grid_thw": grid_thw}
