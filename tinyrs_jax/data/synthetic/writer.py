"""The synthetic dataset's files: per stage and split, LLaVA-style JSONL records of every scene (`scene_records`),
the PNG images and info.json (`generate`); layout in the package docstring."""
from __future__ import annotations

import json
import os

from PIL import Image

from tinyrs_jax.data.records import IMAGE_PLACEHOLDER
from tinyrs_jax.data.synthetic.language import CAPTION_PROMPTS, THINK_INSTRUCTION, _boxes, caption, task_example
from tinyrs_jax.data.synthetic.scene import IMAGE_SIZES, OBJECT_KINDS, SCENE_CLASSES, Scene, _rng, make_scene, render

GENERATOR_VERSION = 1  # bump when the output changes (scenes, text or files): cached demo assets are rebuilt
STAGES = ("pretrain", "instruct", "cot", "grpo")
STAGE_TASKS = {
    "pretrain": ("caption",),
    "instruct": ("classify", "vqa_presence", "vqa_count", "vqa_compare", "ground"),
    "cot": ("classify", "vqa_presence", "vqa_count", "vqa_compare", "ground"),
    "grpo": ("classify", "vqa_presence", "vqa_count", "vqa_compare", "ground"),
}


def scene_records(scene: Scene, seed: int, stage: str, image_rel: str, split: str) -> list[dict]:
  rng = _rng(seed, scene.index, 1 + STAGES.index(stage))
  out = []
  for task in STAGE_TASKS[stage]:
    base = {"id": f"{stage}-{split}-{scene.index:06d}-{task}", "image": image_rel, "width": scene.width,
            "height": scene.height}
    if task == "caption":
      prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
      out.append({**base, "conversations": [{"from": "human", "value": IMAGE_PLACEHOLDER + "\n" + prompt},
                                            {"from": "gpt", "value": caption(scene, rng)}],
                  "task": task, "answer": None, "boxes": _boxes(scene.objects), "scene_class": scene.scene_class})
      continue
    example = task_example(scene, task, rng)
    if example is None:
      continue
    question, answer, why, boxes = example
    if stage == "instruct":
      turns = [{"from": "human", "value": IMAGE_PLACEHOLDER + "\n" + question}, {"from": "gpt", "value": answer}]
    elif stage == "cot":
      turns = [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question} {THINK_INSTRUCTION}"},
               {"from": "gpt", "value": f"<think>{why}</think><answer>{answer}</answer>"}]
    else:  # grpo: the policy writes the answer; the reward checks it against `answer` / `boxes`
      turns = [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question} {THINK_INSTRUCTION}"}]
    record = {**base, "conversations": turns, "task": task, "answer": answer}
    if boxes is not None:
      record["boxes"] = boxes
    record["scene_class"] = scene.scene_class
    out.append(record)
  return out


def num_val_scenes(num_examples: int) -> int:
  return 0 if num_examples < 2 else max(1, round(num_examples / 10))


def generate(out_dir: str, num_examples: int, seed: int = 0, *, sizes: tuple[int, ...] = IMAGE_SIZES) -> dict:
  """Writes the dataset (layout in the module docstring); returns a summary (also written to info.json)."""
  os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
  digits = max(6, len(str(max(num_examples - 1, 0))))
  first_val = num_examples - num_val_scenes(num_examples)
  lines = {(stage, split): [] for stage in STAGES for split in ("train", "val")}
  for index in range(num_examples):
    scene = make_scene(seed, index, sizes=sizes)
    name = f"{index:0{digits}d}.png"
    Image.fromarray(render(scene)).save(os.path.join(out_dir, "images", name), format="PNG", optimize=False,
                                        compress_level=6)
    split = "val" if index >= first_val else "train"
    for stage in STAGES:
      for record in scene_records(scene, seed, stage, f"../images/{name}", split):
        lines[(stage, split)].append(json.dumps(record, ensure_ascii=False))
  counts = {}
  for (stage, split), rows in lines.items():
    os.makedirs(os.path.join(out_dir, stage), exist_ok=True)
    with open(os.path.join(out_dir, stage, f"{split}.jsonl"), "w", encoding="utf-8") as f:
      f.write("".join(row + "\n" for row in rows))
    counts[f"{stage}/{split}"] = len(rows)
  info = {"generator_version": GENERATOR_VERSION, "seed": seed, "num_scenes": num_examples,
          "image_sizes": list(sizes), "scene_classes": list(SCENE_CLASSES), "object_kinds": list(OBJECT_KINDS),
          "records": counts}
  with open(os.path.join(out_dir, "info.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)
    f.write("\n")
  return info
