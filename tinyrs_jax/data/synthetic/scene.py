"""Scene rendering for the synthetic dataset: land-cover textures per class, top-down object sprites, their
non-overlapping placement with exact pixel boxes (`make_scene`), and the image (`render`). Pixels and facts only;
the text about a scene is `language`'s."""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from PIL import Image

SCENE_CLASSES = ("farmland", "forest", "residential", "industrial", "water", "desert", "airport", "harbour")
OBJECT_KINDS = ("building", "storage tank", "ship", "plane", "vehicle")
# Objects each class may hold: kind -> (min, max) count. Counts stay small so they can be learned.
SCENE_OBJECTS = {
    "farmland": {"building": (0, 2), "vehicle": (0, 3)},
    "forest": {"building": (0, 2), "vehicle": (0, 2)},
    "residential": {"building": (3, 6), "vehicle": (0, 4)},
    "industrial": {"storage tank": (1, 5), "building": (1, 3), "vehicle": (0, 3)},
    "water": {"ship": (1, 4)},
    "desert": {"vehicle": (0, 3), "building": (0, 1)},
    "airport": {"plane": (1, 4), "building": (0, 2), "vehicle": (0, 3)},
    "harbour": {"ship": (1, 4), "storage tank": (0, 3), "building": (0, 2)},
}
IMAGE_SIZES = (112, 140, 168, 196, 224)  # multiples of 28, so demo images map onto whole merge blocks
# Objects are drawn OBJECT_SCALE times their v1 size (relative to the image side): at the demo's 112² pixel budget
# (4x4 merged visual tokens of 28 px) a vehicle or storage tank was 1-5 px, below what a token could tell apart.
OBJECT_SCALE = 2.0


@dataclasses.dataclass(frozen=True)
class SceneObject:
  kind: str
  box: tuple[int, int, int, int]  # pixels, x2/y2 exclusive: the object covers columns x1..x2-1
  sprite: np.ndarray = dataclasses.field(repr=False, compare=False)  # (h, w, 4) uint8 RGBA, alpha 0 or 255

  @property
  def area(self) -> int:
    return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

  @property
  def center(self) -> tuple[float, float]:
    return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclasses.dataclass(frozen=True)
class Scene:
  index: int
  scene_class: str
  width: int
  height: int
  background: np.ndarray = dataclasses.field(repr=False)  # (h, w, 3) uint8, the land cover without objects
  objects: tuple[SceneObject, ...]
  layout: dict  # texture facts used in captions (e.g. which side the water is on)

  def of_kind(self, kind: str) -> list[SceneObject]:
    return [o for o in self.objects if o.kind == kind]

  def count(self, kind: str) -> int:
    return len(self.of_kind(kind))


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


# -------------------------------------------------------------------------------------------- textures

def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
  """Value noise in [0, 1]: a coarse random grid upsampled bilinearly."""
  gh, gw = h // cell + 2, w // cell + 2
  grid = rng.random((gh, gw), dtype=np.float32)
  up = Image.fromarray(grid, mode="F").resize((gw * cell, gh * cell), Image.BILINEAR)
  return np.asarray(up)[:h, :w]


def _shade(color, factor: np.ndarray) -> np.ndarray:
  """color (3,) times a per-pixel brightness factor (h, w) -> float image."""
  return np.asarray(color, np.float32)[None, None, :] * factor[:, :, None]


def _finish(img: np.ndarray) -> np.ndarray:
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _texture_farmland(rng, h, w, s):
  palette = [(96, 140, 60), (130, 160, 70), (190, 175, 90), (150, 120, 80), (110, 150, 90), (200, 190, 120)]
  img = np.zeros((h, w, 3), np.float32)
  xs = np.sort(rng.choice(np.arange(16, w - 16), size=rng.integers(1, 4), replace=False))
  ys = np.sort(rng.choice(np.arange(16, h - 16), size=rng.integers(1, 4), replace=False))
  cols, rows = np.concatenate([[0], xs, [w]]), np.concatenate([[0], ys, [h]])
  yy, xx = np.mgrid[0:h, 0:w]
  for r in range(len(rows) - 1):
    for c in range(len(cols) - 1):
      y1, y2, x1, x2 = rows[r], rows[r + 1], cols[c], cols[c + 1]
      color = palette[rng.integers(len(palette))]
      period = rng.integers(3, 7)
      along = xx[y1:y2, x1:x2] if rng.random() < 0.5 else yy[y1:y2, x1:x2]
      stripes = np.where((along // period) % 2 == 0, 1.0, 0.82).astype(np.float32)
      img[y1:y2, x1:x2] = _shade(color, stripes)
  for x in xs:  # dirt tracks between fields
    img[:, max(x - 1, 0):x + 1] = (170, 150, 115)
  for y in ys:
    img[max(y - 1, 0):y + 1, :] = (170, 150, 115)
  img *= (0.92 + 0.16 * _smooth_noise(rng, h, w, 24))[:, :, None]
  return _finish(img), {"fields": (len(rows) - 1) * (len(cols) - 1)}, None


def _texture_forest(rng, h, w, s):
  base = 0.75 + 0.35 * _smooth_noise(rng, h, w, 20)
  crowns = _smooth_noise(rng, h, w, 3)
  factor = base * np.where(crowns > 0.55, 1.15, 0.8)
  img = _shade((40, 85, 40), factor.astype(np.float32))
  return _finish(img), {}, None


def _road_grid(rng, h, w, s):
  road = np.zeros((h, w), bool)
  width = max(6, int(round(8 * s)))
  step = int(rng.integers(40, 60) * max(s, 0.7))
  for x in range(int(rng.integers(8, step)), w, step):
    road[:, x:x + width] = True
  for y in range(int(rng.integers(8, step)), h, step):
    road[y:y + width, :] = True
  return road


def _texture_residential(rng, h, w, s):
  ground = _shade((185, 180, 165), 0.93 + 0.1 * _smooth_noise(rng, h, w, 8))
  lawn = _smooth_noise(rng, h, w, 10) > 0.6
  ground[lawn] = _shade((100, 150, 80), 0.9 + 0.2 * _smooth_noise(rng, h, w, 4))[lawn]
  road = _road_grid(rng, h, w, s)
  ground[road] = (105, 105, 110)
  return _finish(ground), {}, {"building": ~road, "vehicle": road}


def _texture_industrial(rng, h, w, s):
  img = _shade((150, 150, 145), 0.9 + 0.15 * _smooth_noise(rng, h, w, 6))
  for _ in range(int(rng.integers(2, 5))):  # paved pads of other shades
    x1, y1 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
    x2, y2 = min(w, x1 + int(rng.integers(30, 80))), min(h, y1 + int(rng.integers(30, 80)))
    img[y1:y2, x1:x2] *= float(rng.uniform(0.75, 1.15))
  road = np.zeros((h, w), bool)
  width = max(5, int(round(7 * s)))
  if rng.random() < 0.5:
    y = int(rng.integers(0, h - width))
    road[y:y + width] = True
  else:
    x = int(rng.integers(0, w - width))
    road[:, x:x + width] = True
  img[road] = (90, 90, 95)
  return _finish(img), {}, {"building": ~road, "storage tank": ~road}


def _texture_water(rng, h, w, s):
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  angle = rng.uniform(0, np.pi)
  waves = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / rng.uniform(2.0, 3.5) + 3 * _smooth_noise(rng, h, w, 16))
  factor = 0.9 + 0.06 * waves + 0.12 * _smooth_noise(rng, h, w, 32)
  return _finish(_shade((35, 80, 130), factor)), {}, None


def _texture_desert(rng, h, w, s):
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  angle = rng.uniform(0, np.pi)
  warp = 6 * _smooth_noise(rng, h, w, 40)
  dunes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / rng.uniform(5, 9) + warp)
  factor = 0.92 + 0.08 * dunes + 0.05 * _smooth_noise(rng, h, w, 5)
  return _finish(_shade((215, 185, 125), factor)), {}, None


def _texture_airport(rng, h, w, s):
  img = _shade((115, 140, 85), 0.9 + 0.15 * _smooth_noise(rng, h, w, 12))
  horizontal = bool(rng.random() < 0.5)
  length = w if horizontal else h
  across = h if horizontal else w
  width = max(12, int(round(across * rng.uniform(0.12, 0.18))))
  start = int(rng.integers(int(across * 0.2), int(across * 0.8) - width))
  runway = np.zeros((h, w), bool)
  marks = np.zeros((h, w), bool)
  apron = np.zeros((h, w), bool)
  mid = start + width // 2
  dash = np.arange(length) % 16 < 8
  if horizontal:
    runway[start:start + width] = True
    marks[mid:mid + 1, dash] = True
    marks[start + 1, :] = marks[start + width - 2, :] = True
    a = (start + width + 4, min(h, start + width + 4 + int(across * 0.3)))
    apron[a[0]:a[1], :] = True
  else:
    runway[:, start:start + width] = True
    marks[dash, mid:mid + 1] = True
    marks[:, start + 1] = marks[:, start + width - 2] = True
    a = (start + width + 4, min(w, start + width + 4 + int(across * 0.3)))
    apron[:, a[0]:a[1]] = True
  img[apron] = _shade((165, 165, 160), 0.95 + 0.08 * _smooth_noise(rng, h, w, 6))[apron]
  img[runway] = (70, 70, 75)
  img[marks] = (235, 235, 235)
  layout = {"runway": "horizontal" if horizontal else "vertical"}
  return _finish(img), layout, {"building": ~runway, "vehicle": ~runway, "plane": ~runway}


def _texture_harbour(rng, h, w, s):
  side = ("left", "right", "top", "bottom")[int(rng.integers(4))]
  vertical_coast = side in ("left", "right")
  along, across = (h, w) if vertical_coast else (w, h)
  # Drawn as if the water were on the left, in (along, across) coordinates, then flipped into place.
  coast = across * rng.uniform(0.4, 0.55) + 8 * (_smooth_noise(rng, 1, along, 24)[0] - 0.5)
  water = np.arange(across, dtype=np.float32)[None, :] < coast[:, None]
  piers = np.zeros((along, across), bool)
  pier_w = max(3, int(round(4 * s)))
  num_piers = int(rng.integers(1, 3))
  for _ in range(num_piers):
    p = int(rng.integers(10, along - 10 - pier_w))
    reach = int(across * rng.uniform(0.2, 0.35))
    piers[p:p + pier_w, max(0, int(coast.min()) - reach):int(coast.max()) + 2] = True

  def place(a):
    a = a[:, ::-1] if side in ("right", "bottom") else a
    return np.ascontiguousarray(a if vertical_coast else a.T)

  water, piers = place(water), place(piers)
  land = _shade((160, 155, 145), 0.9 + 0.15 * _smooth_noise(rng, h, w, 6))
  sea = _shade((35, 80, 130), 0.92 + 0.1 * _smooth_noise(rng, h, w, 16))
  img = np.where(water[:, :, None], sea, land)
  img[piers] = (120, 115, 110)
  sea_free, land_free = water & ~piers, ~water & ~piers
  layout = {"water_side": side, "piers": num_piers}
  return _finish(img), layout, {"ship": sea_free, "storage tank": land_free, "building": land_free}


TEXTURES: dict[str, Callable] = {
    "farmland": _texture_farmland, "forest": _texture_forest, "residential": _texture_residential,
    "industrial": _texture_industrial, "water": _texture_water, "desert": _texture_desert,
    "airport": _texture_airport, "harbour": _texture_harbour,
}


# --------------------------------------------------------------------------------------------- objects

def _rgba(mask: np.ndarray, colors: np.ndarray) -> np.ndarray:
  out = np.zeros(mask.shape + (4,), np.uint8)
  out[..., :3] = np.clip(colors, 0, 255).astype(np.uint8)
  out[..., 3] = np.where(mask, 255, 0)
  return out


def _orient(sprite: np.ndarray, turns: int) -> np.ndarray:
  return np.ascontiguousarray(np.rot90(sprite, turns))


def _sprite_building(rng, s):
  w, h = (max(6, int(round(v * s))) for v in rng.integers(12, 31, size=2))
  roof = np.asarray([(200, 200, 205), (170, 85, 60), (120, 125, 140), (225, 220, 210), (150, 110, 80)]
                    [int(rng.integers(5))], np.float32)
  colors = np.broadcast_to(roof, (h, w, 3)).copy()
  if w >= h:
    colors[h // 2, :] *= 0.7  # ridge line along the long side
  else:
    colors[:, w // 2] *= 0.7
  colors[0, :] *= 1.1
  colors[:, 0] *= 1.1
  colors[-1, :] *= 0.8
  colors[:, -1] *= 0.8
  return _rgba(np.ones((h, w), bool), colors)


def _sprite_tank(rng, s):
  d = max(7, int(round(rng.integers(10, 27) * s)))
  yy, xx = np.mgrid[0:d, 0:d].astype(np.float32) + 0.5
  r = np.hypot(xx - d / 2, yy - d / 2)
  mask = r <= d / 2
  colors = np.zeros((d, d, 3), np.float32) + (228, 228, 222)
  colors[r > d / 2 - 1.5] = (140, 140, 135)  # rim
  colors[r < max(1.0, d / 8)] = (180, 180, 175)  # roof vent
  return _rgba(mask, colors)


def _sprite_ship(rng, s):
  length = max(12, int(round(rng.integers(22, 45) * s)))
  width = max(4, int(round(rng.integers(6, 12) * s)))
  bow = max(3, length // 4)
  yy, xx = np.mgrid[0:width, 0:length].astype(np.float32)
  half = np.maximum(0.5, (width / 2) * np.minimum(1.0, (length - xx) / bow))
  mask = np.abs(yy + 0.5 - width / 2) <= half
  hull = np.asarray([(235, 235, 230), (200, 60, 50), (90, 95, 100), (230, 200, 70)][int(rng.integers(4))], np.float32)
  colors = np.broadcast_to(hull, (width, length, 3)).copy()
  deck = slice(max(1, length // 8), max(2, length // 8 + length // 4))
  colors[1:-1, deck] = (250, 250, 250) if hull[0] < 200 else (70, 70, 80)  # superstructure
  return _orient(_rgba(mask, colors), int(rng.integers(4)))


def _sprite_plane(rng, s):
  length = max(12, int(round(rng.integers(22, 41) * s)))
  span = max(9, int(round(length * rng.uniform(0.8, 1.0))))
  body = max(2, length // 7)
  chord = max(2, length // 6)
  tail_span, tail_chord = max(3, int(span * 0.4)), max(2, length // 10)
  mask = np.zeros((length, span), bool)
  cx = span // 2
  mask[:, cx - body // 2: cx - body // 2 + body] = True  # fuselage, nose at the top
  wing = int(length * 0.35)
  mask[wing:wing + chord, :] = True
  mask[length - tail_chord:, cx - tail_span // 2: cx - tail_span // 2 + tail_span] = True
  colors = np.zeros((length, span, 3), np.float32) + (242, 242, 242)
  colors[wing:wing + chord, :] = (215, 215, 220)
  return _orient(_rgba(mask, colors), int(rng.integers(4)))


def _sprite_vehicle(rng, s):
  length = max(6, int(round(rng.integers(7, 12) * s)))
  width = max(3, int(round(rng.integers(4, 7) * s)))
  paint = np.asarray([(200, 40, 40), (40, 70, 190), (245, 245, 245), (25, 25, 30), (235, 200, 40)]
                     [int(rng.integers(5))], np.float32)
  colors = np.broadcast_to(paint, (width, length, 3)).copy()
  colors[:, max(1, int(length * 0.3))] = (50, 60, 70) if paint[0] > 100 else (160, 190, 210)  # windscreen
  return _orient(_rgba(np.ones((width, length), bool), colors), int(rng.integers(4)))


SPRITES: dict[str, Callable] = {"building": _sprite_building, "storage tank": _sprite_tank, "ship": _sprite_ship,
                                "plane": _sprite_plane, "vehicle": _sprite_vehicle}
OBJECT_GAP = 2  # free pixels kept between objects, so boxes never touch and counts are unambiguous


def _place(rng, kind, count, s, w, h, allowed, taken: list) -> list[SceneObject]:
  placed = []
  for _ in range(count):
    for _attempt in range(40):
      sprite = SPRITES[kind](rng, s)
      sh, sw = sprite.shape[:2]
      if sw >= w - 2 or sh >= h - 2:
        continue
      x1, y1 = int(rng.integers(1, w - sw)), int(rng.integers(1, h - sh))
      box = (x1, y1, x1 + sw, y1 + sh)
      if allowed is not None and not allowed[y1:y1 + sh, x1:x1 + sw].all():
        continue
      g = OBJECT_GAP
      if any(box[0] < b[2] + g and b[0] < box[2] + g and box[1] < b[3] + g and b[1] < box[3] + g for b in taken):
        continue
      taken.append(box)
      placed.append(SceneObject(kind, box, sprite))
      break
  return placed


def make_scene(seed: int, index: int, *, sizes: tuple[int, ...] = IMAGE_SIZES) -> Scene:
  rng = _rng(seed, index, 0)
  scene_class = SCENE_CLASSES[int(rng.integers(len(SCENE_CLASSES)))]
  w, h = int(rng.choice(sizes)), int(rng.choice(sizes))
  s = min(w, h) / 224
  background, layout, regions = TEXTURES[scene_class](rng, h, w, s)
  s_obj = OBJECT_SCALE * s
  taken: list = []
  objects: list[SceneObject] = []
  for kind, (lo, hi) in SCENE_OBJECTS[scene_class].items():
    want = int(rng.integers(lo, hi + 1))
    allowed = (regions or {}).get(kind)
    objects += _place(rng, kind, want, s_obj, w, h, allowed, taken)
  return Scene(index, scene_class, w, h, background, tuple(objects), layout)


def render(scene: Scene) -> np.ndarray:
  img = scene.background.copy()
  for o in scene.objects:
    x1, y1, x2, y2 = o.box
    alpha = o.sprite[..., 3:] > 0
    img[y1:y2, x1:x2] = np.where(alpha, o.sprite[..., :3], img[y1:y2, x1:x2])
  return img
