"""The predict CLI end to end on a tiny model with the demo tokenizer, and the box pictures."""
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image

import tinyrs_jax
from tinyrs_jax.data import demo_tokenizer, synthetic
from tinyrs_jax.data.tokenizer import Tokenizer
from tinyrs_jax.models import Qwen2VL, get_preset, presets
from tinyrs_jax.tools.draw import PRED_COLOR, TRUE_COLOR, draw_boxes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  root = tmp_path_factory.mktemp("predict")
  data = str(root / "data")
  synthetic.generate(data, num_examples=12, seed=0)
  tok_dir = str(root / "tokenizer")
  demo_tokenizer.build(data, tok_dir)
  tok = Tokenizer.from_folder(tok_dir)
  base = get_preset("tiny")
  cfg = presets.with_tokenizer(base.replace(text=dataclasses.replace(base.text, vocab_size=1024)), tok)
  model = Qwen2VL(cfg, rngs=nnx.Rngs(0))
  out = str(root / "ckpt")
  tinyrs_jax.save_hf(model, out, source_dir=tok_dir)
  return out, data


def test_predict_cli_prints_answer_and_draws(checkpoint, tmp_path):
  ckpt, data = checkpoint
  image = os.path.join(data, "images", sorted(os.listdir(os.path.join(data, "images")))[0])
  out_png = str(tmp_path / "boxes.png")
  r = subprocess.run([sys.executable, "-m", "tinyrs_jax.tools.predict", f"--checkpoint={ckpt}", f"--image={image}",
                      "--prompt=Where is the ship?", "--max_new_tokens=8", f"--draw={out_png}",
                      "--max_pixels=50176"], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "drew" in r.stdout and os.path.exists(out_png)
  assert Image.open(out_png).size == Image.open(image).size


def test_draw_boxes_marks_edges():
  img = np.zeros((100, 120, 3), np.uint8)
  out = np.asarray(draw_boxes(img, predicted=[("ship", (10, 20, 60, 80))], true=[(None, (70, 30, 110, 90))]))
  assert tuple(out[50, 10]) == PRED_COLOR and tuple(out[80, 35]) == PRED_COLOR
  assert tuple(out[60, 110]) == TRUE_COLOR
  assert tuple(out[50, 35]) == (0, 0, 0)  # inside stays untouched
