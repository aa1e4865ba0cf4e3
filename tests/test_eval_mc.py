"""Multiple choice by log-likelihood (eval.mc_mode=loglik): each option's mean log-probability per token after the
prompt, scored on an 8-device mesh with the prompt's image shared by its options, equals a plain teacher-forced
forward of prompt + option, one sequence at a time; the answer is the best option's letter."""
import json
import os

import jax
import numpy as np
import pytest

from tinyrs_jax.data import readers
from tinyrs_jax.data.demo_tokenizer import ensure_demo_assets
from tinyrs_jax.data.records import SkipCounter
from tinyrs_jax.data.tokenizer import Tokenizer
from tinyrs_jax.evaluation import evaluator as eval_lib
from tinyrs_jax.models import presets
from tinyrs_jax import runtime
from tinyrs_jax.main import load_config
from tinyrs_jax.train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHOICES = [["forest", "water", "desert"], ["dense residential area", "airport"], ["a", "b b", "c c c", "d"]]


def _config():
  """configs/eval.py:demo with one 128-token bucket, through the trainer's own config loading."""
  config, _ = load_config([f"--config={os.path.join(ROOT, 'configs', 'eval.py')}:demo", "--config.data.max_length=128",
                           "--config.data.length_buckets=(128,)"])
  return config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  data_dir, tok_dir = ensure_demo_assets(None, 2000, 0)
  path = tmp_path_factory.mktemp("mc") / "mc.jsonl"
  with open(path, "w") as f:
    for i in range(8):
      choices = CHOICES[i % 3]
      q = "Which is it?\n" + "\n".join(f"{chr(65 + j)}. {c}" for j, c in enumerate(choices))
      f.write(json.dumps({"id": f"q{i}", "image": os.path.join(data_dir, "images", f"{1800 + i:06d}.png"),
                          "conversations": [{"from": "human", "value": "<image>\n" + q}], "task": "mc",
                          "answer": "A", "choices": choices}) + "\n")
  records = readers.load_records("llava", str(path), skips=SkipCounter(strict=True), require_assistant=False)
  config = _config()
  cfg = presets.with_tokenizer(presets.get_preset("demo_8m"), Tokenizer.from_folder(tok_dir))
  model = state_lib.make_model(cfg)
  mesh = runtime.make_mesh(config)  # all 8 devices on the data axis
  params = jax.device_put(jax.jit(model.build)(jax.random.PRNGKey(1)), model.param_shardings(mesh))
  from tinyrs_jax.data.processor import Processor
  processor = Processor.from_folder(tok_dir, min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels)
  ev = eval_lib.Evaluator(config, model, mesh, processor, tokenizer_dir=tok_dir, batch_size=8, max_new_tokens=8,
                          mc_mode="loglik")
  return ev, model, params, records


def test_loglik_equals_teacher_forced_forward(setup):
  ev, model, params, records = setup
  rows = ev.answer_records(params, records)
  assert [r["index"] for r in rows] == list(range(8))
  host = next(iter(ev.batches(records)))
  m = model.merge(jax.device_get(params))
  tok = ev.completions.tokenizer
  for r, row in enumerate(rows):
    ids = host["input_ids"][r][host["attention_mask"][r] == 1]
    grid = host["image_grid_thw"][r:r + 1]
    pv = host["pixel_values"][r][:int(np.prod(grid[0]))]
    want = []
    for c in CHOICES[r % 3]:
      opt = tok.encode(c)
      seq = np.concatenate([ids, opt])[None]
      logits = np.asarray(m(seq, None, pv, grid)[0], np.float64)
      logp = logits - logits.max(-1, keepdims=True)
      logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
      want.append(np.mean([logp[len(ids) - 1 + t, opt[t]] for t in range(len(opt))]))
    np.testing.assert_allclose(row["option_logprobs"], want, atol=2e-4)
    assert row["output"] == chr(65 + int(np.argmax(want)))
    assert row["correct_strict"] == (row["output"] == "A")
