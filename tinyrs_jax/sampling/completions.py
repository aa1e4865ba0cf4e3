"""Decoding generated token rows into completion texts (GRPO rollouts, evaluation, prediction)."""
from __future__ import annotations

import numpy as np


class Completions:
  """Decodes generations: text without the stop token, and which completions were cut at the length limit."""

  def __init__(self, tokenizer_dir: str, eos_ids, max_new_tokens: int):
    from tinyrs_jax.data.tokenizer import Tokenizer
    self.tokenizer = Tokenizer.from_folder(tokenizer_dir)
    self.eos = set(int(e) for e in eos_ids)
    self.max_new_tokens = max_new_tokens

  def decode_rows(self, tokens: np.ndarray, lengths: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, lengths, truncated) of token rows whose first `lengths[i]` tokens were generated."""
    texts, truncated = [], np.zeros(len(lengths), bool)
    for r, (row, n) in enumerate(zip(tokens, lengths)):
      ids = [int(t) for t in row[:int(n)]]
      if ids and ids[-1] in self.eos:
        ids = ids[:-1]
      else:
        truncated[r] = True
      texts.append(self.tokenizer.decode(ids, skip_special_tokens=False))
    return texts, np.asarray(lengths, np.int32), truncated

  def decode(self, gen) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The same for a `sampling.generate.Generation`."""
    return self.decode_rows(gen.tokens, gen.lengths)


def eos_ids(tokenizer_dir: str, model_eos_id: int | None = None) -> list[int]:
  """The stop tokens: the tokenizer's eos ids and the model config's eos_token_id."""
  from tinyrs_jax.data.tokenizer import Tokenizer
  return stop_ids(Tokenizer.from_folder(tokenizer_dir).eos_ids, model_eos_id)


def stop_ids(tokenizer_eos_ids, model_eos_id: int | None = None) -> list[int]:
  """The tokenizer's eos ids, then the model's eos_token_id when it is not among them."""
  ids = [int(i) for i in tokenizer_eos_ids]
  if model_eos_id is not None and model_eos_id not in ids:
    ids.append(int(model_eos_id))
  return ids


def config_eos_ids(cfg) -> list[int]:
  """The stop tokens named by a model config alone, for tools/aot (no tokenizer): a Qwen2-VL tokenizer stops on
  its eos token and <|endoftext|> (Tokenizer.eos_ids), which the config holds as eos_token_id and pad_token_id
  (presets.with_tokenizer takes both from the tokenizer). Ids that only a generation_config.json adds are not
  known here."""
  named = [i for i in (cfg.eos_token_id, cfg.pad_token_id) if i is not None]
  return stop_ids(dict.fromkeys(named), cfg.eos_token_id)
