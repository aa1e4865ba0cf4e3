"""The demo tokenizer: a small byte-level BPE trained on the synthetic corpus, in a real checkpoint's layout.

    python -m tinyrs_jax.data.demo_tokenizer --data_dir=DIR --out_dir=DIR/tokenizer

It is built like Qwen2's tokenizer (NFC normalizer, the Qwen2 pre-tokenizer split with single digits, byte-level
BPE, byte-level decoder), so the demo takes exactly the loading path of a real checkpoint
(`tokenizer.Tokenizer.from_folder`: tokenizer.json, tokenizer_config.json, chat_template.jinja).

Ids: the BPE vocabulary first (the 256 byte symbols, then merges, at most DEMO_VOCAB_SIZE - 18 tokens),
then the 14 Qwen2-VL special tokens in Qwen's order (<|endoftext|> … <|video_pad|>), then `<think>`,
`</think>`, `<answer>`, `</answer>` as normal (non-special) added tokens: one id each, so the reasoning format
is cheap to learn and survives `decode(skip_special_tokens=True)`, which the GRPO format reward reads. The
total is at most DEMO_VOCAB_SIZE = 4096 (the demo model's vocabulary); it is smaller when the corpus has
fewer merges to offer. Training is deterministic: the corpus is read in a fixed order, and BPE ties are
broken by the trainer's fixed pair order.

`ensure_demo_assets(root, num_examples, seed)` makes the synthetic dataset and this tokenizer once into a
cache folder and returns their paths (idempotent; safe when several processes race).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Iterator

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers

from tinyrs_jax.data import synthetic
from tinyrs_jax.data.records import IMAGE_PLACEHOLDER

DEMO_VOCAB_SIZE = 4096
REASONING_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
TOKENIZER_VERSION = 1  # bump when the trained tokenizer changes, so caches are rebuilt
# Text the chat template adds around every conversation, so its words get merges too.
TEMPLATE_TEXT = ("system\nYou are a helpful assistant.\n", "user\n", "assistant\n")


def _special_tokens() -> tuple[str, ...]:
  from tinyrs_jax.data.tokenizer import QWEN2_VL_SPECIAL_TOKENS  # lazy: a sibling module
  return QWEN2_VL_SPECIAL_TOKENS


def corpus(data_dir: str) -> Iterator[str]:
  """Every turn of every train record, stages in order, with special and placeholder strings removed."""
  strip = re.compile("|".join(re.escape(t) for t in (*_special_tokens(), *REASONING_TOKENS,
                                                      IMAGE_PLACEHOLDER + "\n", IMAGE_PLACEHOLDER)))
  yield from TEMPLATE_TEXT
  for stage in synthetic.STAGES:
    path = os.path.join(data_dir, stage, "train.jsonl")
    if not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      for line in f:
        for turn in json.loads(line)["conversations"]:
          yield strip.sub(" ", turn["value"])


def train_tokenizer(data_dir: str, vocab_size: int = DEMO_VOCAB_SIZE) -> tokenizers.Tokenizer:
  from tinyrs_jax.data.tokenizer import QWEN2_PRETOKENIZE_PATTERN
  specials = _special_tokens()
  tok = tokenizers.Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = tokenizers.processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size - len(specials) - len(REASONING_TOKENS), min_frequency=2, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
  tok.train_from_iterator(corpus(data_dir), trainer=trainer)
  # Added after training so they take the ids after the BPE vocabulary, in this order.
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
  tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING_TOKENS])
  size = tok.get_vocab_size(with_added_tokens=True)
  if size > vocab_size:
    raise ValueError(f"demo tokenizer has {size} tokens, more than {vocab_size}")
  return tok


def build(data_dir: str, out_dir: str, vocab_size: int = DEMO_VOCAB_SIZE) -> int:
  """Trains and writes the tokenizer folder; returns its size including added tokens."""
  from tinyrs_jax.data.tokenizer import QWEN2_VL_CHAT_TEMPLATE, write_tokenizer_folder
  tok = train_tokenizer(data_dir, vocab_size)
  write_tokenizer_folder(tok, out_dir, chat_template=QWEN2_VL_CHAT_TEMPLATE)
  return tok.get_vocab_size(with_added_tokens=True)


def default_cache_root() -> str:
  return os.environ.get("TINYRS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "tinyrs_jax"))


def ensure_demo_assets(root: str | None = None, num_examples: int = 2000, seed: int = 0) -> tuple[str, str]:
  """(data_dir, tokenizer_dir) of the synthetic dataset and demo tokenizer, made once under `root`.

  Built in a private temporary folder and renamed into place: a reader never sees a half-written folder, and
  when two processes race, the first rename wins and the other discards its copy.
  """
  root = root or default_cache_root()
  key = f"synthetic-v{synthetic.GENERATOR_VERSION}-tok{TOKENIZER_VERSION}-n{num_examples}-s{seed}"
  final = os.path.join(root, key)
  data_dir, tokenizer_dir = os.path.join(final, "data"), os.path.join(final, "tokenizer")
  if os.path.exists(os.path.join(final, "DONE")):
    return data_dir, tokenizer_dir
  os.makedirs(root, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{key}.", dir=root)
  try:
    synthetic.generate(os.path.join(tmp, "data"), num_examples, seed)
    build(os.path.join(tmp, "data"), os.path.join(tmp, "tokenizer"))
    with open(os.path.join(tmp, "DONE"), "w") as f:
      f.write("ok\n")
    try:
      os.rename(tmp, final)
    except OSError:
      if not os.path.exists(os.path.join(final, "DONE")):
        raise
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return data_dir, tokenizer_dir


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  size = build(f.data_dir, f.out_dir or os.path.join(f.data_dir, "tokenizer"), f.vocab_size)
  print(f"wrote a {size}-token tokenizer to {f.out_dir or os.path.join(f.data_dir, 'tokenizer')}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("data_dir", None, "synthetic dataset folder (tinyrs_jax.data.synthetic output)", required=True)
  flags.DEFINE_string("out_dir", None, "tokenizer folder (default DATA_DIR/tokenizer)")
  flags.DEFINE_integer("vocab_size", DEMO_VOCAB_SIZE, "upper bound on the size including added tokens")
  app.run(main)
