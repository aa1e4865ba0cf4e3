"""The demo tokenizer: deterministic, Qwen2-VL special ids after the BPE vocabulary, <= 4096, chat template."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys

import pytest

from tinyrs_jax.data import demo_tokenizer, synthetic
from tinyrs_jax.data.tokenizer import QWEN2_VL_SPECIAL_TOKENS, Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("tok")
  data = str(root / "data")
  synthetic.generate(data, 30, 0)
  size = demo_tokenizer.build(data, str(root / "tok"))
  return data, str(root / "tok"), size


def test_deterministic_across_processes(built, tmp_path):
  data, tok_dir, _ = built
  subprocess.run([sys.executable, "-m", "tinyrs_jax.data.demo_tokenizer", f"--data_dir={data}",
                  f"--out_dir={tmp_path / 'again'}"], check=True, capture_output=True, cwd=REPO)
  for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    assert open(os.path.join(tok_dir, name), "rb").read() == open(tmp_path / "again" / name, "rb").read(), name


def test_size_and_special_ids(built):
  _, tok_dir, size = built
  tok = Tokenizer.from_folder(tok_dir)
  assert tok.vocab_size == size <= demo_tokenizer.DEMO_VOCAB_SIZE
  first = tok.token_id("<|endoftext|>")
  # The 14 specials in Qwen's order right after the BPE vocabulary, then the reasoning tags.
  assert [tok.token_id(t) for t in QWEN2_VL_SPECIAL_TOKENS] == list(range(first, first + 14))
  assert [tok.token_id(t) for t in demo_tokenizer.REASONING_TOKENS] == list(range(first + 14, first + 18))
  assert first + 18 == size
  assert tok.eos_id == tok.token_id("<|im_end|>") and tok.pad_id == first
  for t in (*QWEN2_VL_SPECIAL_TOKENS, *demo_tokenizer.REASONING_TOKENS):
    assert tok.encode(t) == [tok.token_id(t)]
  added = tok.backend.get_added_tokens_decoder()
  assert all(added[tok.token_id(t)].special for t in QWEN2_VL_SPECIAL_TOKENS)
  assert not any(added[tok.token_id(t)].special for t in demo_tokenizer.REASONING_TOKENS)
  config = json.load(open(os.path.join(tok_dir, "tokenizer_config.json")))
  assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"


def test_chat_template_and_round_trip(built):
  data, tok_dir, _ = built
  tok = Tokenizer.from_folder(tok_dir)
  rec = json.loads(open(os.path.join(data, "cot", "train.jsonl")).readline())
  question = rec["conversations"][0]["value"].replace("<image>\n", "")
  target = rec["conversations"][1]["value"]
  messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
              {"role": "assistant", "content": target}]
  text = tok.apply_chat_template(messages)
  assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                  f"<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n"
                  f"<|im_start|>assistant\n{target}<|im_end|>\n")
  ids = tok.encode(text)
  assert tok.decode(ids, skip_special_tokens=False) == text
  assert "<think>" in tok.decode(ids, skip_special_tokens=True)  # the format reward can see the tags
  assert tok.apply_chat_template(messages[:1], add_generation_prompt=True).endswith("<|im_start|>assistant\n")
  # Digits are single tokens (as in Qwen2), so box coordinates are spelled digit by digit.
  assert len(tok.encode("(123,456)")) == 9
  assert len(ids) < len(text) / 2  # the BPE learned merges for the corpus


def _ensure(args):
  root, q = args
  return demo_tokenizer.ensure_demo_assets(root, num_examples=6, seed=1)


def test_ensure_demo_assets_idempotent_and_race_safe(tmp_path):
  root = str(tmp_path / "cache")
  ctx = multiprocessing.get_context("spawn")
  with ctx.Pool(2) as pool:
    results = pool.map(_ensure, [(root, 0), (root, 1)])
  assert results[0] == results[1]
  data_dir, tok_dir = results[0]
  assert os.listdir(root) == [os.path.basename(os.path.dirname(data_dir))]  # no temp folders left
  assert os.path.exists(os.path.join(data_dir, "instruct", "train.jsonl"))
  assert os.path.exists(os.path.join(tok_dir, "tokenizer.json"))
  mtime = os.path.getmtime(os.path.join(tok_dir, "tokenizer.json"))
  assert demo_tokenizer.ensure_demo_assets(root, num_examples=6, seed=1) == (data_dir, tok_dir)
  assert os.path.getmtime(os.path.join(tok_dir, "tokenizer.json")) == mtime
  Tokenizer.from_folder(tok_dir)
