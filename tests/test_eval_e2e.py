"""The evaluation run as users start it (`python -m tinyrs_jax.main --config=configs/eval.py:demo`, subprocesses):
its files, results recomputed from the predictions files, 8-device sharding equal to one device, a killed run
resumed equal to an uninterrupted one, a finished benchmark not recomputed, config mistakes named.

A random demo_8m model on 24 records of the synthetic validation split (every task), batches of 8: the answers are
nonsense, but they are deterministic, which is what these tests compare.
"""
import json
import os

import pytest

from test_train_e2e import main

EVAL = ["--config=configs/eval.py:demo", "--config.eval.limit=24", "--config.eval.batch_size=8",
        "--config.eval.max_new_tokens=12", "--config.data.max_length=128", "--config.data.length_buckets=(128,)",
        "--config.eval.picture_examples=2"]


def results(wd) -> dict:
  with open(os.path.join(wd, "results.json")) as f:
    return json.load(f)


def predictions(wd, name="synthetic") -> list[dict]:
  with open(os.path.join(wd, "predictions", f"{name}.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("eval_ref"))
  main(wd, *EVAL)
  return wd


@pytest.mark.slow
def test_outputs_and_recomputed_results(reference):
  from tinyrs_jax.evaluation import metrics
  r = results(reference)["synthetic"]
  rows = predictions(reference)
  assert [row["index"] for row in rows] == list(range(24)) and r["examples"] == 24 and r["records"] == 24
  assert {row["task"] for row in rows} == {"classify", "vqa_presence", "vqa_count", "vqa_compare", "ground"}
  for row in rows:
    for key in ("id", "task", "prompt", "output", "answer_strict", "answer_tinyrs", "reference", "correct_strict",
                "correct_tinyrs"):
      assert key in row, key
    if row["task"] == "ground":
      assert row["true_box"] and "iou" in row and row["size"] in ("small", "medium", "large")
  assert metrics.aggregate(rows) == r["metrics"]  # results.json is a function of the predictions file
  assert {"accuracy", "accuracy/classify", "ground/acc@0.5", "ground/acc@0.7", "ground/miou"} <= set(r["metrics"])
  md = open(os.path.join(reference, "results.md")).read()
  assert "| synthetic | accuracy |" in md
  for picture in ("synthetic_confusion.png", "synthetic_grounding.png"):
    assert os.path.getsize(os.path.join(reference, "pictures", picture)) > 1000


@pytest.mark.slow
def test_sharded_over_8_devices_equals_one(reference, tmp_path):
  wd = str(tmp_path / "sharded")
  main(wd, *EVAL, "--config.mesh.data=4", "--config.mesh.fsdp=2", devices=8)
  assert [r["output"] for r in predictions(wd)] == [r["output"] for r in predictions(reference)]
  assert results(wd)["synthetic"]["metrics"] == results(reference)["synthetic"]["metrics"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_results(reference, tmp_path):
  wd = str(tmp_path / "killed")
  p = main(wd, *EVAL, "--config.debug_kill_at_step=16", check=False)  # killed after 2 of 3 batches
  assert p.returncode == -9, p.stderr[-3000:]
  assert len(predictions(wd)) == 16 and not os.path.exists(os.path.join(wd, "results.json"))
  with open(os.path.join(wd, "predictions", "synthetic.jsonl"), "a") as f:
    f.write('{"index": 16, "id": "half a li')  # a write the kill cut short
  p = main(wd, *EVAL)
  assert "resuming after 16 of 24 records" in p.stderr
  assert predictions(wd) == predictions(reference)
  assert results(wd)["synthetic"]["metrics"] == results(reference)["synthetic"]["metrics"]


@pytest.mark.slow
def test_finished_benchmark_is_not_recomputed(reference):
  before = results(reference)
  p = main(reference, *EVAL)
  assert "already in results.json" in p.stderr
  assert results(reference) == before


@pytest.mark.slow
def test_config_mistakes_are_named(tmp_path):
  p = main(str(tmp_path / "a"), *EVAL, "--config.eval.run=synthetic,aidd", check=False)
  assert p.returncode != 0 and "unknown benchmarks ['aidd']" in p.stderr
  p = main(str(tmp_path / "b"), *EVAL, "--config.eval.run=aid", check=False)
  assert p.returncode != 0 and "--config.benchmarks.aid.path" in p.stderr


@pytest.mark.slow
def test_generation_eval_inside_a_training_run(tmp_path):
  """config.eval.generate_examples: an SFT run's evaluations also answer the first validation records greedily
  and log both rule sets' metrics."""
  wd = str(tmp_path / "instruct")
  main(wd, "--config=configs/instruct.py:demo", "--config.batch_size=4", "--config.total_steps=2",
       "--config.data.max_length=128", "--config.data.length_buckets=(128,)", "--config.eval.every_steps=2",
       "--config.eval.num_batches=1", "--config.eval.generate_examples=10", "--config.eval.generate_max_new_tokens=8")
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    ev = [r for r in map(json.loads, f) if "eval_loss" in r]
  assert [r["step"] for r in ev] == [0, 2]
  for r in ev:
    for key in ("eval/strict/accuracy", "eval/tinyrs/accuracy", "eval/strict/accuracy/classify",
                "eval/strict/ground/miou", "eval/tinyrs/ground/acc_at_0.5"):
      assert key in r, key
  for step in (0, 2):
    with open(os.path.join(wd, "eval_predictions", f"step_{step}.jsonl")) as f:
      assert len(f.readlines()) == 10


@pytest.mark.slow
def test_unusable_records_are_strict_misses(tmp_path):
  """Prompts over data.max_length (the classification prompts list 8 classes) cannot be answered: each gets a row
  with an empty output, wrong under strict, not counted under tinyrs."""
  wd = str(tmp_path / "short")
  main(wd, *EVAL, "--config.data.max_length=72", "--config.data.length_buckets=(72,)")
  rows = predictions(wd)
  skipped = [r for r in rows if r.get("skipped")]
  assert len(rows) == 24 and skipped and {r["task"] for r in skipped} == {"classify"}
  assert all(r["correct_strict"] is False and r["correct_tinyrs"] is None for r in skipped)
  r = results(wd)["synthetic"]
  assert r["skipped_unusable"] == len(skipped)
  assert r["metrics"]["accuracy/classify"]["n_strict"] == len(skipped) and r["metrics"]["accuracy/classify"]["n_tinyrs"] == 0
  assert f"{len(skipped)} records could not be used" in open(os.path.join(wd, "results.md")).read()


@pytest.mark.slow
def test_training_workdir_is_refused_as_eval_workdir(tmp_path):
  """--workdir holding checkpoints (a training run's) would otherwise look like a resume: refused, naming the fix."""
  wd = str(tmp_path / "train")
  main(wd, "--config=configs/pretrain.py:demo", "--config.data.source=random", "--config.model.preset=tiny",
       "--config.batch_size=8", "--config.data.length=32", "--config.total_steps=1", "--config.eval.num_batches=0")
  p = main(wd, *EVAL, check=False)
  assert p.returncode != 0 and f"--config.init.workdir={wd}" in p.stderr
