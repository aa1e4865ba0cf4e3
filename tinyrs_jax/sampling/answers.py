"""From a prompt batch to decoded completions: the one path the evaluation run (evaluation/evaluator.py), the GRPO
rollout (train/grpo_trainer.py GRPOStep) and GRPO's held-out evaluation (train/grpo_eval.py) share.

    sampler = Sampler(model, mesh, tokenizer_dir=..., eos_ids=..., max_new_tokens=...)
    texts, lengths, truncated = sampler.greedy_answers(params, host_batch)          # this process's rows
    texts, lengths, truncated = sampler.greedy_answers(params, host_batch, every_process=True)  # all, in row order
    gen = sampler.generate(params, sampler.prompt_batch(host_batch), temperature=1.0, seed=key, num_samples=G)
"""
from __future__ import annotations

import numpy as np

from tinyrs_jax import sharding as sharding_lib
from tinyrs_jax.sampling import generate as gen_lib
from tinyrs_jax.sampling.completions import Completions

PROMPT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")  # of a "prompt" mode batch


class Sampler:
  """The generation engine for one model on one mesh, with its decoder. A prompt batch keeps its width (the
  pipeline's length bucket), so every process pads alike and compiles the same program; the stop tokens are the
  decoder's, so a completion is cut where its text ends."""

  def __init__(self, model, mesh, *, tokenizer_dir: str, eos_ids, max_new_tokens: int):
    self.model, self.mesh, self.max_new = model, mesh, int(max_new_tokens)
    self.pad_id = model.cfg.pad_token_id if model.cfg.pad_token_id is not None else 0
    self._completions, self._completions_args = None, (tokenizer_dir, eos_ids)

  @property
  def completions(self) -> Completions:
    """The decoder (its tokenizer loaded on first use: code that never generates needs none)."""
    if self._completions is None:
      tokenizer_dir, eos_ids = self._completions_args
      self._completions = Completions(tokenizer_dir, eos_ids, self.max_new)
    return self._completions

  def prompt_batch(self, host_batch: dict) -> dict:
    """The pipeline's prompt batch (this process's rows) as the engine takes it: left-padded, width kept."""
    return gen_lib.left_pad_prompts({k: host_batch[k] for k in PROMPT_KEYS}, pad_token_id=self.pad_id,
                                    patch_dim=self.model.cfg.vision.patch_dim,
                                    length_buckets=(host_batch["input_ids"].shape[1],))

  def generate(self, params, static: dict, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               seed=0, num_samples: int = 1) -> gen_lib.Generation:
    """`num_samples` completions per prompt of a prompt_batch (greedy at temperature 0); this process's rows."""
    return gen_lib.generate(self.model.merge(params), static, max_new_tokens=self.max_new, temperature=temperature,
                            top_k=top_k, top_p=top_p, seed=seed, eos_token_ids=sorted(self.completions.eos),
                            num_samples=num_samples, length_buckets=(static["input_ids"].shape[1],), mesh=self.mesh)

  def greedy_answers(self, params, host_batch: dict, *, every_process: bool = False
                     ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, lengths, truncated) of the greedy completions of this process's prompts; with every_process, of
    every process's prompts in global row order (tokens and lengths all-gathered, then decoded: the same rows on
    every process)."""
    gen = self.generate(params, self.prompt_batch(host_batch))
    tokens, lengths = gen.tokens, np.asarray(gen.lengths)
    if every_process:
      tokens, lengths = sharding_lib.gather_rows(tokens), sharding_lib.gather_rows(lengths)
    return self.completions.decode_rows(tokens, lengths)
