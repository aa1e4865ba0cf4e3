"""The evaluation run (evaluation/evaluator.py) and GRPO's held-out evaluation (train/grpo_eval.py) answer through
one path, sampling/answers.py Sampler.greedy_answers: on an 8-device mesh, for the same parameters and prompts,
each calls it, the evaluator's prediction rows are its texts, and both get the same greedy texts."""
import os
import types

import jax
import ml_collections
import numpy as np
import pytest

from tinyrs_jax import runtime
from tinyrs_jax.main import load_config
from tinyrs_jax.data.demo_tokenizer import ensure_demo_assets
from tinyrs_jax.data.tokenizer import Tokenizer
from tinyrs_jax.evaluation import evaluator as eval_lib
from tinyrs_jax.models import presets
from tinyrs_jax.sampling import answers
from tinyrs_jax.sampling.completions import eos_ids
from tinyrs_jax.train import grpo_eval
from tinyrs_jax.train import grpo_rewards
from tinyrs_jax.train import grpo_trainer
from tinyrs_jax.train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW, ROWS = 8, 8


def _config():
  """configs/eval.py:demo with one 128-token bucket, through the trainer's own config loading."""
  config, _ = load_config([f"--config={os.path.join(ROOT, 'configs', 'eval.py')}:demo", "--config.data.max_length=128",
                           "--config.data.length_buckets=(128,)"])
  return config


@pytest.fixture(scope="module")
def setup():
  data_dir, tok_dir = ensure_demo_assets(None, 2000, 0)
  config = _config()
  b = dict(config.benchmarks.synthetic, path=os.path.join(data_dir, "instruct", "val.jsonl"))
  records, _ = eval_lib.load_benchmark("synthetic", b, config.eval.prompt, ROWS)
  cfg = presets.with_tokenizer(presets.get_preset("demo_8m"), Tokenizer.from_folder(tok_dir))
  model = state_lib.make_model(cfg)
  mesh = runtime.make_mesh(config)  # all 8 devices on the data axis
  params = jax.device_put(jax.jit(model.build)(jax.random.PRNGKey(3)), model.param_shardings(mesh))
  processor = eval_lib.eval_processor(config, tok_dir)
  ev = eval_lib.Evaluator(config, model, mesh, processor, tokenizer_dir=tok_dir, batch_size=ROWS,
                          max_new_tokens=NEW)
  return ev, model, mesh, params, records, tok_dir


def test_the_evaluator_and_the_held_out_eval_share_the_greedy_answers(setup, monkeypatch):
  ev, model, mesh, params, records, tok_dir = setup
  calls = []
  shared = answers.Sampler.greedy_answers

  def spy(self, params, host_batch, *, every_process=False):
    out = shared(self, params, host_batch, every_process=every_process)
    calls.append((every_process, out))
    return out

  monkeypatch.setattr(answers.Sampler, "greedy_answers", spy)

  rows = ev.answer_records(params, records)
  assert [c[0] for c in calls] == [True]  # the evaluator's one batch, every process's rows
  texts, lengths, _ = calls[0][1]
  assert [r["index"] for r in rows] == list(range(ROWS))
  assert [r["output"] for r in rows] == texts and [r["length"] for r in rows] == lengths.tolist()
  assert len(set(texts)) > 1  # random weights, distinct prompts: answers that can differ

  # GRPO's held-out evaluation, with the sampler its GRPOStep builds, on the same prompt batch
  step = object.__new__(grpo_trainer.GRPOStep)
  step.sampler = answers.Sampler(model, mesh, tokenizer_dir=tok_dir, eos_ids=eos_ids(tok_dir, model.cfg.eos_token_id),
                                 max_new_tokens=NEW)
  step.max_new, step.weights = NEW, {"accuracy": 1.0}
  step.scorer = grpo_rewards.RewardScorer(step.weights, {}, None)
  cfg = ml_collections.ConfigDict({"grpo": {"answer_tag": "answer", "think_tag": "think"}})
  held_out = grpo_eval.HeldOutEval(step, list(ev.batches(records)), cfg)
  m = held_out(types.SimpleNamespace(params=params), 0)
  assert [c[0] for c in calls] == [True, False]  # this process's rows (the only process here)
  assert calls[1][1][0] == texts
  np.testing.assert_array_equal(calls[1][1][1], lengths)
  assert m["eval/num_prompts"] == ROWS and m["eval/completions/mean_length"] == pytest.approx(np.mean(lengths))
