"""The GRPO trainer as users run it (`python -m tinyrs_jax.main --config=configs/grpo.py:demo`, subprocesses):
metrics, samples and checkpoints; SIGKILL + restart equals an uninterrupted run (the rollout RNG follows seed and
step); SIGTERM saves and exits 143; two real processes equal one; a user's reward module.

A random demo_8m policy on the synthetic GRPO prompts, with a user reward (tests/grpo_test_rewards.py) that varies
on random text so the advantages are not all zero; beta > 0 (reference model), mu = 2 (old log-probs) and two
microbatches, so every path of the step runs.
"""
import json
import os

import pytest

from test_train_e2e import ROOT, assert_same_params, env as base_env, final_params, main as train_main

GRPO = ["--config=configs/grpo.py:demo", "--config.init.demo_configs_dir=", "--config.batch_size=4",
        "--config.grad_accum_steps=2", "--config.grpo.num_generations=2", "--config.grpo.max_new_tokens=16",
        "--config.grpo.beta=0.04", "--config.grpo.num_iterations=2", "--config.total_steps=4",
        "--config.data.max_length=128", "--config.data.length_buckets=(128,)", "--config.checkpoint.every_steps=2",
        "--config.eval.every_steps=2", "--config.eval.num_prompts=8", "--config.eval.batch_size=4",
        "--config.grpo.log_samples_every=2", "--config.grpo.num_samples_logged=3",
        "--config.reward_modules=grpo_test_rewards", "--config.rewards.vowels=1.0", "--config.optim.lr=1e-3"]
# two GRPO steps, no held-out eval: the failure paths below
SHORT = [*GRPO, "--config.total_steps=2", "--config.eval.num_prompts=0", "--config.grpo.log_samples_every=0"]


def env(devices: int = 1) -> dict:
  e = base_env(devices)
  e["PYTHONPATH"] = os.path.join(ROOT, "tests") + os.pathsep + e["PYTHONPATH"]  # the user reward module
  return e


def main(workdir, *args, devices=1, check=True, timeout=900, extra_env=None):
  """test_train_e2e.main with the user reward module on the path."""
  return train_main(workdir, *args, check=check, timeout=timeout, proc_env={**env(devices), **(extra_env or {})})


def rows(workdir) -> dict[int, dict]:
  """metrics.jsonl merged per step (train and eval lines; the last value wins)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      out.setdefault(r["step"], {}).update(r)
  return out


def assert_same_run(wd, ref, atol=1e-6):
  a, b = rows(wd), rows(ref)
  assert sorted(a) == sorted(b)
  for step in b:
    for key in ("reward", "rewards/vowels/mean", "loss", "kl", "completions/mean_length", "eval/reward",
                "eval/rewards/vowels"):
      if key in b[step]:
        assert key in a[step], (step, key)
        assert abs(a[step][key] - b[step][key]) <= atol + 1e-5 * abs(b[step][key]), (step, key, a[step][key],
                                                                                       b[step][key])
  assert_same_params(final_params(wd), final_params(ref), atol=atol)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("grpo_ref"))
  main(wd, *GRPO)
  return wd


@pytest.mark.slow
def test_run_writes_metrics_samples_and_checkpoints(reference):
  r = rows(reference)
  assert sorted(k for k in r if "reward" in r[k]) == [1, 2, 3, 4]
  assert [k for k in sorted(r) if "eval/reward" in r[k]] == [0, 2, 4]
  last = r[4]
  for key in ("reward", "reward_std", "frac_reward_zero_std", "rewards/vowels/mean", "rewards/vowels/std",
              "rewards/format/mean", "rewards/accuracy/mean", "completions/mean_length",
              "completions/min_length", "completions/max_length", "completions/mean_terminated_length",
              "completions/clipped_ratio", "kl", "clip_ratio/low_mean", "clip_ratio/high_mean",
              "clip_ratio/region_mean", "entropy", "loss", "grad_norm", "step_time_s", "rollout_time_s",
              "rollout_tokens_per_s", "tokens_per_s", "sampling/logprob_abs_diff", "eval/rewards/accuracy",
              "eval/rewards/format", "eval/rewards/vowels"):
    assert key in last, key
  assert last["kl"] > 0  # mu = 2 and lr 1e-3: the policy left the reference
  assert r[4]["rewards/vowels/std"] > 0 and r[4]["frac_reward_zero_std"] < 1
  steps = sorted(int(s) for s in os.listdir(os.path.join(reference, "checkpoints")) if s.isdigit())
  assert steps == [2, 4]  # numbered by GRPO step (mu = 2 optimizer updates each), every 2 GRPO steps
  assert last["optimizer_step"] == 8
  assert json.load(open(os.path.join(reference, "grpo_reference.json")))["init"] == "random"
  samples = [json.loads(l) for l in open(os.path.join(reference, "samples.jsonl"))]
  assert [s["step"] for s in samples] == [1] * 3 + [3] * 3
  assert {"completion", "reward", "advantage", "rewards/vowels", "answer", "task"} <= set(samples[0])
  marker = json.load(open(os.path.join(reference, "tinyrs_model.json")))
  assert marker["stage"] == "grpo"


@pytest.mark.slow
def test_sigkill_then_restart_equals_uninterrupted(reference, tmp_path):
  wd = str(tmp_path / "killed")
  p = main(wd, *GRPO, "--config.debug_kill_at_step=3", check=False)
  assert p.returncode == -9, p.stderr[-4000:]
  main(wd, *GRPO)
  assert_same_run(wd, reference)


@pytest.mark.slow
def test_sigterm_saves_and_exits_143(reference, tmp_path):
  wd = str(tmp_path / "term")
  p = main(wd, *GRPO, "--config.debug_sigterm_at_step=1", "--config.checkpoint.every_steps=100", check=False)
  assert p.returncode == 143, p.stderr[-4000:]
  assert os.listdir(os.path.join(wd, "checkpoints")) == ["1"]  # GRPO step 1 (= optimizer step 2, mu = 2)


@pytest.mark.slow
def test_two_processes_equal_one(reference, tmp_path):
  """jax.distributed over two local processes (2 CPU devices each, gloo): rollouts, rewards, log-probs and
  parameters equal the one-process run."""
  from test_train_e2e import run_two_processes
  wd = str(tmp_path / "two")
  outs = run_two_processes(wd, GRPO, env(1), timeout=900)
  assert "over 2 devices (2 processes)" in outs[0][1]
  assert_same_run(wd, reference, atol=2e-4)


def test_unknown_reward_is_a_clear_error(tmp_path):
  p = main(str(tmp_path), "--config=configs/grpo.py:demo", "--config.init.demo_configs_dir=",
           "--config.rewards.nonesuch=1.0", check=False)
  assert p.returncode != 0 and "nonesuch" in p.stderr and "format" in p.stderr


def checkpoints(workdir) -> list[int]:
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


@pytest.mark.slow
def test_a_raising_reward_stops_the_run_after_its_last_checkpoint(tmp_path):
  """A user reward raising at step 3: the run stops with an error naming the reward, the example and the
  completion; checkpoints 1 and 2 are complete on disk (and a restart resumes from 2)."""
  wd = str(tmp_path / "explode")
  p = main(wd, *SHORT, "--config.total_steps=4", "--config.checkpoint.every_steps=1", "--config.rewards.explode=1.0",
           check=False, extra_env={"TINYRS_TEST_EXPLODE_AT": "3"})
  assert p.returncode != 0
  assert "reward 'explode' raised KeyError: 'bbox' on example id" in p.stderr, p.stderr[-3000:]
  assert "completion '" in p.stderr and "the last checkpoint is step 2" in p.stderr
  assert checkpoints(wd) == [1, 2]
  from tinyrs_jax.checkpoint import orbax_io
  assert orbax_io.latest_step(wd) == 2  # finalized


@pytest.mark.slow
def test_skipped_updates_keep_the_grpo_step_count(tmp_path):
  """bnpo + mask_truncated_completions with 1 new token: every completion is truncated, every update is skipped
  (weight 0). The GRPO step still counts: checkpoints 1 and 2 hold GRPO step 2, the skip is logged. (Before:
  the step was state.step // mu, stuck at 0: one checkpoint 0, the due save at 1 refused, a restart trained
  again from step 0.)"""
  wd = str(tmp_path / "skip")
  args = [*SHORT, "--config.grpo.max_new_tokens=1", "--config.grpo.loss_type=bnpo",
          "--config.grpo.mask_truncated_completions=True", "--config.checkpoint.every_steps=1"]
  p = main(wd, *args)
  assert "2 of 2 updates skipped" in p.stderr
  r = rows(wd)
  assert [r[s]["skipped"] for s in (1, 2)] == [1.0, 1.0] and r[2]["optimizer_step"] == 0
  assert checkpoints(wd) == [1, 2]
  saved = json.load(open(os.path.join(wd, "checkpoints", "2", "data", "process_0-of-1.json")))
  assert saved["grpo_step"] == 2  # what a restart continues from (it then finds the run finished)


# prompts in two length buckets: draws (and processes) differ in prompt width, which must be agreed globally
DYNAMIC = [*SHORT, "--config.total_steps=1", "--config.grpo.max_new_tokens=8", "--config.data.length_buckets=(96,128)",
           "--config.grpo.dynamic_sampling=True",
           "--config.grpo.dynamic_sampling_reward=starts_with_vowel", "--config.rewards.starts_with_vowel=1.0",
           "--config.grpo.dynamic_sampling_max_batches=2"]


@pytest.mark.slow
def test_dynamic_sampling_on_two_processes_equals_one(tmp_path):
  """grpo.dynamic_sampling over two jax.distributed processes (gloo) picks the same groups, with the same shapes,
  as one process: slot by slot, shapes agreed globally. (Before: each process pooled its own kept groups and
  padded to its own widths.)"""
  from test_train_e2e import run_two_processes
  ref, wd = str(tmp_path / "one"), str(tmp_path / "two")
  main(ref, *DYNAMIC)
  run_two_processes(wd, DYNAMIC, env(1), timeout=900)
  a, b = rows(wd), rows(ref)
  assert b[1]["dynamic_sampling/filtered_groups"] > 0 and b[1]["dynamic_sampling/rollout_batches"] == 2, b[1]
  for s in (1,):
    for key in ("dynamic_sampling/rollout_batches", "dynamic_sampling/filtered_groups",
                "dynamic_sampling/topped_up_groups"):
      assert a[s][key] == b[s][key], (s, key)
  assert_same_run(wd, ref, atol=2e-4)
