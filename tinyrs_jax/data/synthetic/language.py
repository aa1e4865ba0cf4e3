"""The synthetic dataset's language: captions, task questions, short answers and reasoning, all written from a
scene's exact facts (`scene.Scene`), with the wording drawn from the caller's random stream."""
from __future__ import annotations

import numpy as np

from tinyrs_jax.data.records import IMAGE_PLACEHOLDER
from tinyrs_jax.data.synthetic.scene import OBJECT_KINDS, SCENE_CLASSES, SCENE_OBJECTS, Scene, SceneObject

PLURALS = {"building": "buildings", "storage tank": "storage tanks", "ship": "ships", "plane": "planes",
           "vehicle": "vehicles"}
CLASS_LOOKS = {
    "farmland": "a patchwork of rectangular fields with parallel crop rows in green, yellow and brown",
    "forest": "a dense, dark green tree canopy with a rough, speckled texture",
    "residential": "a regular grid of grey streets with small green lawns between them",
    "industrial": "large grey concrete lots and paved yards",
    "water": "an open body of blue water with small ripples",
    "desert": "bare sand with long wavy dunes and no vegetation",
    "airport": "a long dark runway with white markings crossing grass and paved aprons",
    "harbour": "a coastline where paved land meets blue water, with piers reaching into the water",
}
OBJECT_LOOKS = {
    "building": "rectangular roofs with a ridge line",
    "storage tank": "bright round tanks with a dark rim",
    "ship": "long hulls with a pointed bow on the water",
    "plane": "cross-shaped aircraft with wings and a tail",
    "vehicle": "small coloured rectangles",
}
THINK_INSTRUCTION = ("First think step by step inside <think> </think>, then give the final answer inside "
                     "<answer> </answer>.")
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")  # "no buildings"
COUNT_WORDS = ("zero",) + NUMBER_WORDS[1:]  # a count on its own ("I count the buildings: zero.")


def _where(scene: Scene, o: SceneObject) -> str:
  cx, cy = o.center
  col = ("left", "", "right")[min(2, int(3 * cx / scene.width))]
  row = ("top", "", "bottom")[min(2, int(3 * cy / scene.height))]
  return f"{row} {col}".strip() or "center"


def _at(scene: Scene, o: SceneObject) -> str:
  place = _where(scene, o)
  return "at the center" if place == "center" else f"at the {place}"


def _count_phrase(n: int, kind: str) -> str:
  word = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
  return f"{word} {kind if n == 1 else PLURALS[kind]}"


def _listing(items: list[str]) -> str:
  if len(items) <= 1:
    return "".join(items)
  return ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene, rng: np.random.Generator) -> str:
  opening = ["This aerial image shows {a} {c} scene.", "An overhead view of {a} {c} area.",
             "A top-down remote sensing image of {a} {c} landscape."][int(rng.integers(3))]
  article = "an" if scene.scene_class[0] in "aeiou" else "a"
  parts = [opening.format(a=article, c=scene.scene_class), f"It shows {CLASS_LOOKS[scene.scene_class]}."]
  if scene.layout.get("water_side"):
    parts.append(f"The water lies on the {scene.layout['water_side']} side of the image.")
  if scene.layout.get("runway"):
    parts.append(f"The runway runs {scene.layout['runway']}ly across the image.")
  present = [k for k in OBJECT_KINDS if scene.count(k)]
  for kind in present:
    objs = scene.of_kind(kind)
    places = _listing(sorted({_at(scene, o) for o in objs}))
    verb = "is" if len(objs) == 1 else "are"
    parts.append(f"{_count_phrase(len(objs), kind).capitalize()} {verb} visible {places}.")
  absent = [PLURALS[k] for k in OBJECT_KINDS if not scene.count(k)]
  if not present:
    parts.append("There are no buildings, vehicles or other objects.")
  elif absent:
    parts.append(f"There are no {_listing(absent).replace(' and ', ' or ')}.")
  return " ".join(parts)


def _refer(scene: Scene, rng: np.random.Generator):
  """(expression, object, reasoning) for a uniquely identifiable object, or None."""
  kinds = [k for k in OBJECT_KINDS if scene.count(k)]
  rng.shuffle(kinds)
  margin = 4 * min(scene.width, scene.height) / 224
  for kind in kinds:
    objs = scene.of_kind(kind)
    plural = PLURALS[kind]
    if len(objs) == 1:
      o = objs[0]
      return f"the {kind}", o, f"There is exactly one {kind}, {_at(scene, o)}."
    relations = [
        ("largest", lambda o: o.area, True), ("smallest", lambda o: o.area, False),
        ("leftmost", lambda o: o.center[0], False), ("rightmost", lambda o: o.center[0], True),
        ("nearest the top", lambda o: o.center[1], False), ("nearest the bottom", lambda o: o.center[1], True),
    ]
    order = rng.permutation(len(relations))
    for r in order:
      name, key, biggest = relations[int(r)]
      ranked = sorted(objs, key=key, reverse=biggest)
      first, second = key(ranked[0]), key(ranked[1])
      if name in ("largest", "smallest"):
        unique = max(first, second) >= 1.25 * min(first, second)
      else:
        unique = abs(first - second) >= margin
      if not unique:
        continue
      o = ranked[0]
      expr = f"the {kind} {name}" if name.startswith("nearest") else f"the {name} {kind}"
      if name in ("largest", "smallest"):
        sizes = _listing([f"{_at(scene, x)} ({x.box[2] - x.box[0]}x{x.box[3] - x.box[1]} px)" for x in ranked])
        why = f"There are {len(objs)} {plural}. From {name} on: {sizes}."
      else:
        spots = _listing([_at(scene, x) for x in ranked])
        why = f"There are {len(objs)} {plural}, ordered {name.replace('nearest', 'closest to')} first: {spots}."
      return expr, o, why
  return None


def _boxes(objs) -> list[dict]:
  return [{"label": o.kind, "box": list(o.box)} for o in objs]


def task_example(scene: Scene, task: str, rng: np.random.Generator):
  """(question, short answer, reasoning, boxes) for one task on one scene, or None when it does not apply."""
  from tinyrs_jax.data import boxes as boxes_lib
  from tinyrs_jax.data.readers import classification_prompt
  c = scene.scene_class
  if task == "classify":
    q = classification_prompt(SCENE_CLASSES).replace(IMAGE_PLACEHOLDER, "", 1)
    seen = [_count_phrase(scene.count(k), k) for k in OBJECT_KINDS if scene.count(k)]
    extra = f" I can also see {_listing(seen)}." if seen else ""
    why = f"The image shows {CLASS_LOOKS[c]}.{extra} These features are typical of {c}."
    return q, c, why, None
  if task in ("vqa_presence", "vqa_count"):
    kind = OBJECT_KINDS[int(rng.integers(len(OBJECT_KINDS)))]
    if task == "vqa_presence" and rng.random() < 0.5:  # balance yes/no: ask about a kind that is there
      there = [k for k in OBJECT_KINDS if scene.count(k)]
      kind = there[int(rng.integers(len(there)))] if there else kind
    objs = scene.of_kind(kind)
    n = len(objs)
    found = (f"I find {NUMBER_WORDS[n]}: {_listing([_at(scene, o) for o in objs])}." if n else "I find none.")
    look = f"I look for {PLURALS[kind]}, which appear as {OBJECT_LOOKS[kind]}. {found}"
    if task == "vqa_presence":
      q = [f"Is there a {kind} in this image?", f"Are there any {PLURALS[kind]} in the image?"][int(rng.integers(2))]
      answer = "yes" if n else "no"
      return q + " Answer yes or no.", answer, f"{look} So the answer is {answer}.", _boxes(objs)
    q = [f"How many {PLURALS[kind]} are there in this image?", f"Count the {PLURALS[kind]} in the image."][
        int(rng.integers(2))]
    return q + " Answer with a number.", str(n), f"{look} That makes {n}.", _boxes(objs)
  if task == "vqa_compare":
    allowed = list(SCENE_OBJECTS[c]) + [k for k in OBJECT_KINDS if k not in SCENE_OBJECTS[c]][:1]
    a, b = (allowed[int(i)] for i in rng.choice(len(allowed), size=2, replace=False))
    na, nb = scene.count(a), scene.count(b)
    answer = "yes" if na > nb else "no"
    relation = "more than" if na > nb else "the same as" if na == nb else "fewer than"
    why = (f"I count the {PLURALS[a]}: {COUNT_WORDS[na]}. I count the {PLURALS[b]}: {COUNT_WORDS[nb]}. "
           f"{na} is {relation} {nb}, so the answer is {answer}.")
    return (f"Are there more {PLURALS[a]} than {PLURALS[b]} in this image? Answer yes or no.", answer, why,
            _boxes(scene.of_kind(a) + scene.of_kind(b)))
  if task == "ground":
    found = _refer(scene, rng)
    if found is None:
      return None
    expr, o, why = found
    q = [f"Output the bounding box of {expr}.", f"Where is {expr}? Give its bounding box.",
         f"Locate {expr} in the image."][int(rng.integers(3))]
    answer = boxes_lib.box_to_text(o.box, scene.width, scene.height, label=expr)
    return q, answer, f"{why} So {expr} is the one {_at(scene, o)}.", [{"label": o.kind, "box": list(o.box)}]
  raise ValueError(f"unknown synthetic task {task!r}")


CAPTION_PROMPTS = ("Describe this image in detail.", "Write a caption for this aerial image.",
                   "What does this remote sensing image show? Describe it in one paragraph.")
