"""Ask the model about one image.

  python -m tinyrs_jax.tools.predict --checkpoint=DIR --image=FILE --prompt="Where is the ship?" \
      [--max_new_tokens=128 --temperature=0 --top_p=1.0 --draw=out.png]

DIR is a Hugging Face Qwen2-VL folder or a workdir our trainers wrote (its tokenizer folder is recorded
there). Prints the answer; with --draw, boxes in the answer (Qwen2-VL's 0–1000 grid) are drawn on the image
with their labels.
"""
from __future__ import annotations

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "HF Qwen2-VL folder or tinyrs_jax workdir.", required=True)
flags.DEFINE_string("image", None, "Image file (PNG, JPEG, TIFF incl. multi-band GeoTIFF).")
flags.DEFINE_string("prompt", None, "The question or instruction.", required=True)
flags.DEFINE_string("tokenizer", None, "Tokenizer folder (default: from the checkpoint).")
flags.DEFINE_integer("max_new_tokens", 128, "Most tokens to generate.")
flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
flags.DEFINE_integer("top_k", 0, "Top-k sampling (0 = off).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string("draw", None, "Write the image with the answer's boxes drawn to this PNG.")
flags.DEFINE_string("dtype", "float32", "Compute dtype: float32 or bfloat16.")
flags.DEFINE_integer("min_pixels", None, "Override the processor's min_pixels.")
flags.DEFINE_integer("max_pixels", None, "Override the processor's max_pixels.")


def predict(model, processor, image, prompt: str, **gen_kw) -> str:
  """The answer text for one image (HxWx3 uint8 or None) and prompt."""
  import tinyrs_jax
  content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": prompt}]
  batch = processor.encode_chat([{"role": "user", "content": content}],
                                None if image is None else [image], add_generation_prompt=True)
  gen = tinyrs_jax.generate(model, batch, eos_token_ids=processor.tokenizer.eos_ids, **gen_kw)
  return processor.tokenizer.decode(gen.tokens[0, :gen.lengths[0]].tolist(), skip_special_tokens=False) \
      .replace("<|im_end|>", "").replace("<|endoftext|>", "").strip()


def main(argv):
  del argv
  import tinyrs_jax
  from tinyrs_jax.data import boxes as box_lib
  from tinyrs_jax.data.images import load_image
  from tinyrs_jax.data.processor import Processor

  model = tinyrs_jax.load(FLAGS.checkpoint, dtype=FLAGS.dtype)
  tok_dir = FLAGS.tokenizer or getattr(model, "source_dir", None) or FLAGS.checkpoint
  if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
    raise app.UsageError(f"no tokenizer.json in {tok_dir}; pass --tokenizer=DIR")
  processor = Processor.from_folder(tok_dir, min_pixels=FLAGS.min_pixels, max_pixels=FLAGS.max_pixels)
  image = load_image(FLAGS.image) if FLAGS.image else None
  answer = predict(model, processor, image, FLAGS.prompt, max_new_tokens=FLAGS.max_new_tokens,
                   temperature=FLAGS.temperature, top_p=FLAGS.top_p, top_k=FLAGS.top_k, seed=FLAGS.seed)
  print(answer)
  if FLAGS.draw:
    if image is None:
      raise app.UsageError("--draw needs --image")
    from tinyrs_jax.tools.draw import draw_boxes
    h, w = image.shape[:2]
    found = [(label, box_lib.box_from_norm1000(b, w, h)) for label, b in box_lib.parse_boxes(answer)]
    draw_boxes(image, predicted=found).save(FLAGS.draw)
    print(f"drew {len(found)} box(es) on {FLAGS.draw}")


if __name__ == "__main__":
  app.run(main)
