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
def test_outputs_and_files(reference):
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
  assert {"accuracy", "accuracy/classify", "ground/acc@0.5", "ground/acc@0.7", "ground/miou"} <= set(r["metrics"])
  md = open(os.path.join(reference, "results.md")).read()
  assert "| synthetic | accuracy |" in md
  for picture in ("synthetic_confusion.png", "synthetic_grounding.png"):
    assert os.path.getsize(os.path.join(reference, "pictures", picture)) > 1000


def chosen_output(row, j: int) -> str:
  """The output this test writes for a row (j: the row's position among its task's rows)."""
  task, ref = row["task"], row["reference"]
  if task == "ground":
    (w, h), (x1, y1, x2, y2) = row["image_size"], row["true_box"]
    g = [f"{v * 1000 / s:.4f}" for v, s in ((x1, w), (y1, h), (x2, w), (y2, h))]  # decimals: kept as written
    return [f"<answer>({g[0]},{g[1]}),({g[2]},{g[3]})</answer>",  # the true box: a hit in both columns
            "I cannot tell",  # no box: a strict miss, dropped under tinyrs
            f"({g[2]},{g[3]}),({g[0]},{g[1]})",  # reversed: a strict miss, a tinyrs miss that counts
            f"( {g[0]}, {g[1]}),({g[2]},{g[3]})"][j % 4]  # spaces: strict reads it (hit), tinyrs drops it
  if task == "classify":
    return [ref, ""][j % 2]  # "": wrong under strict, correct under tinyrs (a substring of every answer)
  if task in ("vqa_presence", "vqa_compare"):
    return [f"{ref}.", {"yes": "no", "no": "yes"}[ref]][j % 2]
  if task == "vqa_count":
    return [ref, str(int(ref) + 1)][j % 2]  # "4" for "3": wrong in both
  raise AssertionError(task)


def hand_counts(rows) -> dict:
  """The expected metrics, counted from the pattern above (exact fractions), not from the scoring code."""
  from fractions import Fraction as F
  n = {}
  for row in rows:
    n[row["task"]] = n.get(row["task"], 0) + 1
  residue = lambda k, m, r: len([j for j in range(k) if j % m == r])  # of k rows, those with j % m == r
  g = n["ground"]
  hit, none, rev, spaced = (residue(g, 4, r) for r in range(4))
  strict_right = {t: residue(n[t], 2, 0) for t in ("classify", "vqa_presence", "vqa_compare", "vqa_count")}
  tinyrs_right = dict(strict_right, classify=n["classify"])
  answered = sum(n[t] for t in strict_right)
  expect = {"accuracy": (F(sum(strict_right.values()), answered), F(sum(tinyrs_right.values()), answered),
                         answered, answered),
            "ground/acc@0.5": (F(hit + spaced, g), F(hit, hit + rev), g, hit + rev),
            "ground/parsed": (F(hit + spaced, g), F(hit + spaced, g), g, g)}
  for t in strict_right:
    expect[f"accuracy/{t}"] = (F(strict_right[t], n[t]), F(tinyrs_right[t], n[t]), n[t], n[t])
  return expect


@pytest.mark.slow
def test_results_equal_hand_counts_after_rescoring(reference, tmp_path):
  """Outputs chosen by this test, scored by re-scoring the saved predictions (a scoring change: no generation),
  give the metrics counted by hand (exact fractions)."""
  import shutil
  wd = str(tmp_path / "rescored")
  shutil.copytree(reference, wd)
  rows, seen = predictions(wd), {}
  for row in rows:
    j = seen[row["task"]] = seen.get(row["task"], -1) + 1
    row["output"] = chosen_output(row, j)
  with open(os.path.join(wd, "predictions", "synthetic.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  before = results(wd)
  before["synthetic"]["scoring"] = "an older scoring version"
  with open(os.path.join(wd, "results.json"), "w") as f:
    json.dump(before, f)
  p = main(wd, *EVAL)
  assert "re-scoring the saved predictions, no generation" in p.stderr
  r = results(wd)["synthetic"]
  assert r["rescored"] is True and r["fingerprint"] == before["synthetic"]["fingerprint"]
  assert [row["output"] for row in predictions(wd)] == [row["output"] for row in rows]  # answers not regenerated
  expect = hand_counts(rows)
  assert expect["ground/acc@0.5"][3] > 0 and expect["ground/acc@0.5"][2] >= 4  # every ground case is present
  for name, (strict, tinyrs, n_strict, n_tinyrs) in expect.items():
    got = r["metrics"][name]
    assert (got["n_strict"], got["n_tinyrs"]) == (n_strict, n_tinyrs), name
    assert got["strict"] == pytest.approx(float(strict), abs=1e-12), name
    assert got["tinyrs"] == pytest.approx(float(tinyrs), abs=1e-12), name
  assert r["prompt_style"] == "ours"


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
