"""Pictures of an evaluation: a confusion matrix per classification benchmark and a grid of grounding examples
(the best and the worst by IoU: true box green, predicted red, IoU written above each image)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageDraw

from tinyrs_jax.evaluation import metrics as metrics_lib

TILE = 256  # pixels per grid tile (small images are upscaled so boxes stay visible)


def write_pictures(out_dir: str, name: str, rows: Sequence[dict], records: Sequence, examples: int = 6) -> list[str]:
  """The benchmark's pictures in out_dir; returns their paths. A picture that cannot be drawn (an image gone
  missing since the run read it) is logged and left out, never an error after the numbers are written."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  if any(r.get("task") == "classify" for r in rows):
    path = os.path.join(out_dir, f"{name}_confusion.png")
    confusion_png(rows, path, title=name)
    paths.append(path)
  ground = [r for r in rows if r.get("task") == "ground" and r.get("true_box")]
  if ground and examples > 0:
    path = os.path.join(out_dir, f"{name}_grounding.png")
    if grounding_grid(ground, records, path, examples):
      paths.append(path)
  return paths


def confusion_png(rows: Sequence[dict], path: str, title: str = "") -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  classes, cols, counts = metrics_lib.confusion(rows)
  m = np.asarray(counts, float)
  share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
  size = max(4.0, 0.45 * len(cols) + 2)
  fig, ax = plt.subplots(figsize=(size + 1, size))
  im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
  ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
  ax.set_yticks(range(len(classes)), classes, fontsize=8)
  ax.set_xlabel("predicted (strict answer; other = not a class name)")
  ax.set_ylabel("true class")
  if len(cols) <= 31:
    for i in range(len(classes)):
      for j in range(len(cols)):
        if m[i, j]:
          ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=6,
                  color="white" if share[i, j] > 0.5 else "black")
  acc = np.trace(m[:, :len(classes)]) / max(m.sum(), 1)
  ax.set_title(f"{title}: strict accuracy {acc:.3f} over {int(m.sum())}")
  fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _tile(record, row: dict) -> Image.Image | None:
  from tinyrs_jax.data import images as images_lib
  from tinyrs_jax.data.records import DataError
  from tinyrs_jax.tools.draw import draw_boxes
  try:
    image = images_lib.load_image(record.image, name=str(record.id))
  except (DataError, OSError) as e:
    logging.warning("grounding picture: %s left out (%s)", record.id, e)
    return None
  h, w = image.shape[:2]
  scale = TILE / max(h, w)
  img = Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
  sx = lambda b: [v * scale for v in b]
  pred = [("", sx(row["pred_box"]))] if row.get("pred_box") else []
  img = draw_boxes(img, predicted=pred, true=[("", sx(row["true_box"]))])
  canvas = Image.new("RGB", (TILE, TILE + 28), (255, 255, 255))
  canvas.paste(img, (0, 28))
  d = ImageDraw.Draw(canvas)
  what = f"IoU {row['iou']:.2f}" + ("" if row.get("parsed") else " (no box)")
  d.text((3, 2), f"{what}  {row.get('size') or ''}", fill=(0, 0, 0))
  from tinyrs_jax.data.records import IMAGE_PLACEHOLDER
  prompt = str(row.get("prompt", "")).replace(IMAGE_PLACEHOLDER, "").strip()
  d.text((3, 14), prompt[:42], fill=(90, 90, 90))
  return canvas


def grounding_grid(rows: Sequence[dict], records: Sequence, path: str, examples: int) -> bool:
  """Best `examples` (top row) and worst `examples` (bottom row) by IoU."""
  by_id = {r.id: r for r in records}
  ranked = sorted(rows, key=lambda r: (-r["iou"], r["index"]))
  best = ranked[:examples]
  worst = [r for r in reversed(ranked) if r not in best][:examples]
  lines = [best, worst]
  tiles = [[t for t in (_tile(by_id[r["id"]], r) for r in line if r["id"] in by_id) if t is not None]
           for line in lines]
  if not any(tiles):
    return False
  cols = max(len(t) for t in tiles)
  grid = Image.new("RGB", (cols * (TILE + 6), len(tiles) * (TILE + 28 + 22)), (255, 255, 255))
  d = ImageDraw.Draw(grid)
  for i, (label, line) in enumerate(zip(("best (true green, predicted red)", "worst"), tiles)):
    y = i * (TILE + 28 + 22)
    d.text((4, y + 4), label, fill=(0, 0, 0))
    for j, t in enumerate(line):
      grid.paste(t, (j * (TILE + 6), y + 22))
  grid.save(path)
  return True
