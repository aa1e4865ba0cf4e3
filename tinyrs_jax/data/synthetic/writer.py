"""The synthetic dataset's files: per stage and split, LLaVA-style JSONL records of every scene (`scene_records`),
the PNG images and info.json (`generate`); layout in the package docstring."""
from __future__ import annotations

import json
import os

from PIL import Image

from tinyrs_jax.data.records import IMAGE_PLACEHOLDER
from tinyrs_jax.data.synthetic.language import CAPTION_PROMPTS, THINK_INSTRUCTION, _boxes, caption, task_example
from tinyrs_jax.data.synthetic.scene import IMAGE_SIZES, OBJECT_KINDS, SCENE_CLASSES, Scene, _rng, make_scene, render

# bump when the output changes (scenes, text or files): cached demo assets are rebuilt. 3: objects twice as large,
# train/val/test splits, captions in instruct and cot training data, "zero" counts in comparisons (2 was a lost
# branch's; skipped so that its caches never pass for this data)
GENERATOR_VERSION = 3
STAGES = ("pretrain", "instruct", "cot", "grpo")
SPLITS = ("train", "val", "test")
# Instruct and cot training data also hold captions (plain, no reasoning), as the real recipe's instruct data does:
# one for every CAPTION_EVERY-th scene of the train split, so that the tasks do not overwrite pretraining's
# captions. Their validation and test files hold the task questions only (held-out captions: pretrain's files).
CAPTION_EVERY = 2
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
  if stage in ("instruct", "cot") and split == "train" and scene.index % CAPTION_EVERY == 0:
    base = {"id": f"{stage}-{split}-{scene.index:06d}-caption", "image": image_rel, "width": scene.width,
            "height": scene.height}
    prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
    out.append({**base, "conversations": [{"from": "human", "value": IMAGE_PLACEHOLDER + "\n" + prompt},
                                          {"from": "gpt", "value": caption(scene, rng)}],
                "task": "caption", "answer": None, "boxes": _boxes(scene.objects), "scene_class": scene.scene_class})
  return out


def num_val_scenes(num_examples: int) -> int:
  """Scenes in the validation split (tuning, in-training evaluation): a tenth, at least one from 2 scenes on."""
  return 0 if num_examples < 2 else max(1, round(num_examples / 10))


def num_test_scenes(num_examples: int) -> int:
  """Scenes in the test split (the reported numbers only; nothing is tuned on it): a tenth, from 3 scenes on."""
  return 0 if num_examples < 3 else max(1, round(num_examples / 10))


def split_of(index: int, num_examples: int) -> str:
  """train for the first scenes, then val, then test (the last num_test_scenes)."""
  first_test = num_examples - num_test_scenes(num_examples)
  first_val = first_test - num_val_scenes(num_examples)
  return "test" if index >= first_test else "val" if index >= first_val else "train"


def generate(out_dir: str, num_examples: int, seed: int = 0, *, sizes: tuple[int, ...] = IMAGE_SIZES) -> dict:
  """Writes the dataset (layout in the module docstring); returns a summary (also written to info.json)."""
  os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
  digits = max(6, len(str(max(num_examples - 1, 0))))
  lines = {(stage, split): [] for stage in STAGES for split in SPLITS}
  for index in range(num_examples):
    scene = make_scene(seed, index, sizes=sizes)
    name = f"{index:0{digits}d}.png"
    Image.fromarray(render(scene)).save(os.path.join(out_dir, "images", name), format="PNG", optimize=False,
                                        compress_level=6)
    split = split_of(index, num_examples)
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
          "image_sizes": list(sizes),
          "splits": {split: sum(split_of(i, num_examples) == split for i in range(num_examples)) for split in SPLITS},
          "scene_classes": list(SCENE_CLASSES), "object_kinds": list(OBJECT_KINDS),
          "records": counts}
  with open(os.path.join(out_dir, "info.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)
    f.write("\n")
  return info
