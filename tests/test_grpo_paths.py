"""GRPO off the happy path, in process (issue 18): ablations with a zero weight, rewards that raise or hang,
padding and unverifiable prompts, the pinned reference, dynamic sampling slot by slot, metric semantics with
mu > 1, rollout keys and the compile count. The end-to-end paths (a failing reward stops a run after its last
checkpoint, skipped updates, two processes with dynamic sampling) are in test_grpo_e2e.py."""
import json
import os
import time
import types

import ml_collections
import numpy as np
import pytest

import jax

import tinyrs_jax.rewards as rw
from tinyrs_jax.data import pipeline
from tinyrs_jax.data.records import Record
from tinyrs_jax.rewards import scoring
from tinyrs_jax.train import grpo_eval
from tinyrs_jax.train import grpo_policy
from tinyrs_jax.train import grpo_rewards
from tinyrs_jax.train import grpo_trainer as gt
from tinyrs_jax.train import runner


def ex(i, task="classify", answer="forest", **kw):
  return {"id": f"ex{i}", "task": task, "answer": answer, "boxes": [], "width": 8, "height": 8, "is_padding": False,
          "extra": {}, "prompt": "What is shown?", **kw}


SEEN: list = []


@rw.register_reward("_paths_record")
def _record(completions, examples, **options):
  SEEN.extend(examples)
  return [1.0] * len(completions)


@rw.register_reward("_paths_raise")
def _raise(completions, examples, **options):
  return [1 / 0 if "boom" in c else 0.5 for c in completions]


@rw.register_reward("_paths_hang")
def _hang(completions, examples, **options):
  time.sleep(30)
  return [0.0] * len(completions)


# ---------------------------------------------------------------------------------------- rewards (1, 4, 7, 11)

def test_held_out_eval_reports_format_and_accuracy_at_weight_zero():
  """An ablation arm (rewards.format=0): the eval still computes format and accuracy; total is the training mix.
  (Before: format entered at weight 0.0, compute_rewards skipped it, comps["format"] raised KeyError.)"""
  weights = {"accuracy": 1.0}
  assert grpo_rewards.eval_reward_weights(weights) == {"format": 1.0, "accuracy": 1.0}
  assert all(v != 0 for v in grpo_rewards.eval_reward_weights({"format": 0.0, "accuracy": 1.0}).values())
  step = types.SimpleNamespace(weights=weights, scorer=grpo_rewards.RewardScorer(weights, {}, None))
  cfg = ml_collections.ConfigDict({"grpo": {"answer_tag": "answer", "think_tag": "think"}})
  ev = grpo_eval.HeldOutEval(step, [], cfg)
  texts = ["<think>x</think><answer>forest</answer>", "beach"]
  total, comps = ev.score_batch(texts, [ex(0), ex(1)])
  np.testing.assert_array_equal(comps["format"], [1.0, 0.0])
  np.testing.assert_array_equal(comps["accuracy"], [1.0, 0.0])
  np.testing.assert_array_equal(total, [1.0, 0.0])  # format's weight is 0 in training


def test_padding_rows_never_reach_a_reward_and_rewards_get_the_prompt():
  SEEN.clear()
  scorer = grpo_rewards.RewardScorer({"_paths_record": 1.0}, {}, None)
  pad = {"id": None, "task": None, "answer": None, "is_padding": True}
  total, comps = scorer(["a", "b", "c"], [ex(0), pad, ex(2)])
  assert [e["id"] for e in SEEN] == ["ex0", "ex2"] and all(e["prompt"] == "What is shown?" for e in SEEN)
  np.testing.assert_array_equal(total, [1.0, 0.0, 1.0])
  np.testing.assert_array_equal(comps["_paths_record"], [1.0, 0.0, 1.0])
  SEEN.clear()
  total, _ = scorer(["x"], [pad])  # a batch of padding only: no call at all
  assert SEEN == [] and total.tolist() == [0.0]


def test_prompt_text_is_the_user_turns_without_the_image():
  r = Record(id="a", image=None, messages=[{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "<image>\nWhat is shown?"}])
  assert pipeline.prompt_text(r) == "What is shown?"
  assert set(rw.EXAMPLE_FIELDS) >= {"prompt", "id", "task", "answer", "completion_length", "truncated"}


def test_a_raising_reward_names_itself_the_example_and_the_completion():
  scorer = grpo_rewards.RewardScorer({"_paths_raise": 1.0}, {}, None)
  with pytest.raises(grpo_rewards.RewardFailure) as e:
    scorer(["fine", "it goes boom " + "x" * 200], [ex(0), ex(1)])
  msg = str(e.value)
  assert "'_paths_raise'" in msg and "ZeroDivisionError" in msg and "'ex1'" in msg and "it goes boom" in msg
  assert "x" * 100 not in msg  # only the completion's first characters


def test_a_hanging_reward_times_out_with_the_same_error():
  scorer = grpo_rewards.RewardScorer({"_paths_hang": 1.0}, {}, 0.3)
  t0 = time.time()
  with pytest.raises(grpo_rewards.RewardFailure, match=r"'_paths_hang' did not return within 0.3 s.*'ex0'"):
    scorer(["a", "b"], [ex(0), ex(1)])
  assert time.time() - t0 < 5


# --------------------------------------------------------------------------------------- multiple choice (6)

def test_the_accuracy_reward_parses_choices_as_the_evaluation_does():
  """(Before: the reward wanted exactly the letter; "(B)", "B. forest" and "forest" scored 0.)"""
  from tinyrs_jax.evaluation import rules
  mc = ex(0, task="mc", answer="B", extra={"choices": ["beach", "forest", "river"]})
  for answer, want in (("B", 1.0), ("(B)", 1.0), ("B. forest", 1.0), ("forest", 1.0), ("Answer: B", 1.0),
                       ("A", 0.0), ("river", 0.0), ("D", 0.0), ("a forest", 0.0)):
    got = scoring.score_accuracy(f"<answer>{answer}</answer>", mc)
    assert got == want, answer
    assert rules.score(f"<answer>{answer}</answer>", mc)["correct_strict"] == (want == 1.0), answer
  assert rules.parse_choice is scoring.parse_choice


# ---------------------------------------------------------------------------------------- unverifiable (8)

def test_prompts_without_a_verifiable_answer_are_refused_with_file_and_line(caplog):
  good = Record(id="g", image=None, messages=[{"role": "user", "content": "q"}], task="classify", answer="forest")
  box = Record(id="b", image=None, messages=[{"role": "user", "content": "q"}], task="ground",
               boxes=(("ship", (1.0, 2.0, 3.0, 4.0)),))
  bad = Record(id="n", image=None, messages=[{"role": "user", "content": "q"}], task="classify",
               source="/data/train.jsonl", line=7)
  assert grpo_rewards.check_verifiable([good, box], allow=False) == 0
  with pytest.raises(ValueError, match=r"1 of 3 .*/data/train.jsonl:7.*allow_unverifiable"):
    grpo_rewards.check_verifiable([good, box, bad], allow=False)
  assert grpo_rewards.check_verifiable([good, box, bad], allow=True) == 1


# ------------------------------------------------------------------------------------------- reference (5)

def test_the_reference_is_pinned_and_refused_when_gone(tmp_path):
  from tinyrs_jax.checkpoint import sidecar
  init = tmp_path / "cot"
  (init / "checkpoints" / "5").mkdir(parents=True)
  (init / sidecar.MARKER).write_text("{}")
  wd = tmp_path / "grpo"
  wd.mkdir()
  config = ml_collections.ConfigDict({"init": {"step": -1}})
  source = runner.ModelSource(None, None, "workdir", str(init / "checkpoints" / "5"))
  rec = grpo_policy.pin_init(config, source, str(wd))
  assert rec == {"init": "workdir", "init_path": str(init), "step": 5} and config.init.step == 5
  assert json.load(open(wd / grpo_policy.REFERENCE_FILE)) == rec
  (init / "checkpoints" / "5").rmdir()
  (init / "checkpoints" / "9").mkdir()  # a later checkpoint is not the reference
  resumed = runner.ModelSource(None, None, "resume", str(wd))
  with pytest.raises(FileNotFoundError, match=r"at step 5 .* is gone"):
    grpo_policy.load_reference(config, resumed, str(wd), None, None, None)


# ---------------------------------------------------------------------------------- keys and metrics (9, 10)

def test_rollout_keys_are_distinct_where_the_linear_formula_collided():
  linear = lambda seed, step, attempt: (seed * 1_000_003 + step * 101 + attempt) % (2 ** 31)
  assert linear(1, 0, 0) == linear(0, 9901, 2)  # the old seed collided
  k = lambda *a: tuple(np.asarray(jax.random.key_data(gt.rollout_key(*a))).tolist())
  assert k(1, 0, 0) != k(0, 9901, 2)
  assert len({k(s, t, a) for s in (0, 1) for t in range(3) for a in range(3)}) == 18
  assert k(3, 7, 1) == k(3, 7, 1)


def test_mu_updates_report_the_mean_of_their_metrics():
  """(Before: the last update's loss, kl and clip ratios.)"""
  step = object.__new__(gt.GRPOStep)
  step.mu = 3
  calls = iter([1.0, 2.0, 6.0])

  def step_fn(state, gb):
    v = next(calls)
    return state + 1, {"loss": jax.numpy.float32(v), "kl": jax.numpy.float32(10 * v),
                       "sampling/logprob_abs_diff": jax.numpy.float32(v), "skipped": jax.numpy.float32(v == 2.0)}

  step.step_fn = step_fn
  state, m = step.run_updates(0, {})
  assert state == 3
  assert float(m["loss"]) == pytest.approx(3.0) and float(m["kl"]) == pytest.approx(30.0)
  assert float(m["skipped"]) == pytest.approx(1 / 3)
  assert float(m["sampling/logprob_abs_diff"]) == 1.0  # the first update's: the policy that sampled


# ---------------------------------------------------------------------------------- dynamic sampling (2)

def _part(draw, varies, width, patches, group=2):
  """A fake rollout batch of len(varies) prompts: groups of `group` completions, accuracy varying or not."""
  n = len(varies)
  acc = np.concatenate([[0.0, 1.0] if v else [1.0, 1.0] for v in varies]).astype(np.float32)
  return {"prompt_ids": np.full((n, width), draw, np.int32), "prompt_mask": np.ones((n, width), np.int32),
          "pixel_values": np.zeros((n, patches, 3), np.float32), "image_grid_thw": np.zeros((n, 3), np.int32),
          "completion_ids": np.full((n * group, 4), draw, np.int32), "c/accuracy": acc, "total": acc,
          "texts": [f"d{draw}"] * (n * group), "examples": [{"id": f"d{draw}p{i // group}"} for i in range(n * group)]}


def test_dynamic_sampling_fills_slot_by_slot_with_agreed_shapes():
  """Slot i takes the first varying group among the draws' prompt i (so any process count picks the same
  groups: each process owns its slots); unfilled slots keep their first draw's group; the shapes are the
  maxima over the chosen groups (all-gathered across processes)."""
  draws = iter([_part(1, [False, True, False], 6, 4), _part(2, [True, True, False], 9, 2)])
  step = object.__new__(gt.GRPOStep)
  step.group, step.filter_reward, step.max_draws, step.pad_id = 2, "accuracy", 3, 0
  step.sample = lambda params, batch, s, attempt: next(draws)
  first = _part(0, [False, False, True], 4, 8)
  r, stats = step.sample_dynamic(None, first, 0, lambda: None)
  assert [e["id"] for e in r["examples"][::2]] == ["d2p0", "d1p1", "d0p2"]  # slot by slot
  assert r["prompt_ids"].shape == (3, 9) and r["pixel_values"].shape == (3, 8, 3)
  assert (r["prompt_ids"][1, :3] == 0).all() and (r["prompt_ids"][1, 3:] == 1).all()  # left-padded
  assert stats == {"dynamic_sampling/rollout_batches": 3.0, "dynamic_sampling/filtered_groups": 3.0,
                   "dynamic_sampling/topped_up_groups": 0.0}
  step.sample = lambda params, batch, s, attempt: _part(9, [False] * 3, 4, 8)
  r, stats = step.sample_dynamic(None, first, 0, lambda: None)
  assert [e["id"] for e in r["examples"][::2]] == ["d0p0", "d0p1", "d0p2"]  # topped up from the first draw
  assert stats["dynamic_sampling/topped_up_groups"] == 2.0


# -------------------------------------------------------------------------------------- compile count (12)

@pytest.mark.slow
def test_compiles_stop_growing_once_the_completion_buckets_are_seen():
  """GRPO steps (batch building and updates) over varied completion lengths: one program per completion
  bucket (quarters of max_new_tokens; 2 new tokens give the buckets 1 and 2, each compile costs ~15 s on a
  loaded 2-core machine), none after the buckets were seen."""
  from hf_reference import random_image_batch
  from tinyrs_jax import sharding as sharding_lib
  from tinyrs_jax.models import presets
  from tinyrs_jax.sampling import generate as gen_lib
  from tinyrs_jax.train import optimizer as optim_lib
  from tinyrs_jax.train import state as state_lib
  import importlib.util
  spec = importlib.util.spec_from_file_location("_grpo_cfg", os.path.join(os.path.dirname(__file__), "..",
                                                                         "configs", "grpo.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  config.grpo.update(num_generations=2, max_new_tokens=2, beta=0.0, num_iterations=1)
  config.loss.chunk_size = 8
  cfg = presets.get_preset("tiny")
  model = state_lib.make_model(cfg)
  opt = optim_lib.make_optimizer(config.optim, model.abstract_params, 100)
  mesh = sharding_lib.make_mesh(1, devices=jax.devices()[:1])
  sh = state_lib.state_shardings(model, opt, mesh)
  state = state_lib.init_state(model, opt, sh, 0)
  step = gt.GRPOStep(config, model, opt, mesh, sh, tokenizer_dir="", eos_ids=[], weights={"accuracy": 1.0},
                     reward_options={})
  assert step.completion_buckets == (1, 2)
  inp = random_image_batch(np.random.default_rng(0), [(1, 4, 4)], [3, 5], [2, 1], [[0], [0]])
  static = gen_lib.left_pad_prompts(inp, pad_token_id=0, patch_dim=cfg.vision.patch_dim)
  rng = np.random.default_rng(1)
  counts = []
  for longest in (1, 2, 2, 1):  # both buckets by the 2nd step, then again
    lengths = np.minimum(rng.integers(1, longest + 1, 4), longest).astype(np.int32)
    lengths[0] = longest
    acc = rng.integers(0, 2, 4).astype(np.float32)
    r = {"prompt_ids": static["input_ids"], "prompt_mask": static["attention_mask"],
         "pixel_values": static["pixel_values"], "image_grid_thw": static["image_grid_thw"],
         "completion_ids": rng.integers(1, 200, (4, 2)).astype(np.int32),
         "sampler_logps": np.zeros((4, 2), np.float32), "lengths": lengths, "truncated": lengths == 2,
         "total": acc, "c/accuracy": acc}
    batch, _ = step.build_batch(r)
    state, metrics, _ = step.update(state, batch, sync=True)
    counts.append(step.num_compiles)
  assert counts[1] - counts[0] == 1  # a new program for the new bucket
  assert counts[1:] == [counts[1]] * 3, counts  # then none
