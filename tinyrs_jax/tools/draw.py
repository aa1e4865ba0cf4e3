"""Pictures of boxes on images: predicted (and optionally true) boxes with their labels."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

PRED_COLOR = (255, 64, 64)
TRUE_COLOR = (64, 255, 96)


def draw_boxes(image: np.ndarray | Image.Image, predicted: Sequence[tuple[str | None, Sequence[float]]] = (),
               true: Sequence[tuple[str | None, Sequence[float]]] = (), width: int = 2) -> Image.Image:
  """Boxes in pixels (x1, y1, x2, y2): predicted in red, true in green, each with its label above it."""
  img = (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))).convert("RGB").copy()
  draw = ImageDraw.Draw(img)
  for boxes, color, tag in ((true, TRUE_COLOR, "true"), (predicted, PRED_COLOR, "pred")):
    for label, box in boxes:
      x1, y1, x2, y2 = (float(v) for v in box)
      draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
      text = f"{tag}: {label}" if label else tag
      ty = max(0.0, y1 - 11)
      tw = draw.textlength(text)
      draw.rectangle([x1, ty, x1 + tw + 2, ty + 10], fill=(0, 0, 0))
      draw.text((x1 + 1, ty - 1), text, fill=color)
  return img
