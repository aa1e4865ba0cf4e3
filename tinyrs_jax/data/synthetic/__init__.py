"""The embedded default dataset: procedurally generated top-down aerial scenes with exact facts.

    python -m tinyrs_jax.data.synthetic --out_dir=DIR --num_examples=N --seed=S

writes N scenes (PNG images, DIR/images/000000.png …) and, for every training stage, LLaVA-style JSONL files
DIR/<stage>/{train,val,test}.jsonl (stage in pretrain, instruct, cot, grpo) that `readers.read_records("llava",
…)` reads. Scenes are split in file order: train, then max(1, round(N / 10)) validation scenes (none when N = 1;
tuning and in-training evaluation), then as many test scenes (none when N < 3; the reported numbers only). 2000
scenes (the demo's): 1600 / 200 / 200.

Each scene has one of eight classes, each with its own land-cover texture (farmland: striped field patchwork;
forest: speckled dark canopy; residential: road grid and lawns; industrial: concrete lots; water: rippled
blue; desert: wavy dunes; airport: runway with markings; harbour: coastline with piers), and a few objects
drawn top-down with exact pixel boxes (OBJECT_SCALE times their first version's size, so that a vehicle is
several pixels wide at the demo's 112² budget): buildings (rectangular roofs with a ridge), storage tanks (bright
circles with a dark rim), ships (hulls with a pointed bow, in water), planes (cross shapes) and vehicles
(small rectangles). Objects never overlap and every drawn pixel of an object lies inside its box, which its
shape touches on all four sides. Which objects appear depends on the class, so answers are learnable from
the pixels: class <-> texture, counts are small (at most 6 of a kind).

Records (the same scene image serves every stage; questions are drawn per stage):
  pretrain   caption: one paragraph written from the scene facts
  instruct   classify, vqa_presence, vqa_count, vqa_compare, ground (a referring expression such as
             "the largest storage tank" or "the ship nearest the top", answered with Qwen box text); the train
             split also holds a caption for every CAPTION_EVERY-th scene (as the real recipe's instruct data holds
             captions: they are kept, not overwritten)
  cot        the same tasks; the answer is `<think>reasoning from the facts</think><answer>…</answer>` (the train
             split's captions stay plain)
  grpo       the same tasks as prompt-only records (no assistant turn) that ask for the think/answer format;
             the verifiable `answer` and the `boxes` sit beside the conversation
Each JSONL record: id, image ("../images/000123.png", relative to the JSONL file), width, height,
conversations (human/gpt, `<image>\\n` opening the first human turn), task, answer (canonical short answer:
class name, "yes"/"no", a digit string, or the box text; null for captions), boxes ([{label, box}] pixels,
where objects matter) and scene_class.

Determinism: scene i is drawn from numpy's default_rng(SeedSequence([seed, i, k])) streams only, so a scene
does not depend on N, and the same seed gives the same bytes (PNG written with fixed settings, JSON with fixed
key order).

Layout: `scene` draws the scenes (classes, textures, object sprites, placement, `make_scene`, `render`: pixels and
exact facts, no text); `language` writes text from a scene's facts (captions, task questions, short answers and
reasoning); `writer` turns scenes and text into the files (`scene_records`, `generate`, GENERATOR_VERSION);
`python -m tinyrs_jax.data.synthetic` (`__main__`) runs `generate`.
"""
from tinyrs_jax.data.synthetic.language import (CAPTION_PROMPTS, CLASS_LOOKS, COUNT_WORDS, NUMBER_WORDS, OBJECT_LOOKS, PLURALS,
                                               THINK_INSTRUCTION, caption, task_example)
from tinyrs_jax.data.synthetic.scene import (IMAGE_SIZES, OBJECT_GAP, OBJECT_KINDS, OBJECT_SCALE, SCENE_CLASSES, SCENE_OBJECTS,
                                            SPRITES, TEXTURES, Scene, SceneObject, make_scene, render)
from tinyrs_jax.data.synthetic.writer import (CAPTION_EVERY, GENERATOR_VERSION, SPLITS, STAGE_TASKS, STAGES, generate,
                                             num_test_scenes, num_val_scenes, scene_records, split_of)
