"""Evaluation rows gathered across processes (sharding.gather_rows, evaluator.gather_scored_rows), with two real
jax.distributed processes (gloo, one CPU device each): the gathered rows equal the one-process rows, every value
bit for bit (float64 IoUs stay float64: an IoU of 0.49999999999999994 must not become 0.5 in a float32 gather).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tinyrs_jax.evaluation import metrics

from test_train_e2e import ROOT, env, reserved_port

# Each process's scored rows: process 1 has fewer rows (padding), values near the 0.5 boundary, None fields.
ROWS = [
    [{"task": "ground", "size": "small", "correct_strict": False, "correct_tinyrs": None, "iou": 0.49999999999999994,
      "iou_tinyrs": None, "parsed": False, "inter": 0.0, "union": 1024.0, "unique": False},
     {"task": "classify", "size": None, "correct_strict": True, "correct_tinyrs": True, "iou": None,
      "iou_tinyrs": None, "parsed": None},
     {"task": "ground", "size": "large", "correct_strict": True, "correct_tinyrs": True, "iou": 0.7000000000000001,
      "iou_tinyrs": 0.1 + 0.2, "parsed": True}],
    [{"task": "ground", "size": "medium", "correct_strict": True, "correct_tinyrs": True, "iou": 0.5,
      "iou_tinyrs": 1 / 3, "parsed": True, "inter": 5000.0, "union": 10000.0, "inter_tinyrs": 1 / 3,
      "union_tinyrs": 1.0, "unique": True},
     {"task": "ground_multi", "size": None, "correct_strict": None, "correct_tinyrs": None, "iou": None,
      "iou_tinyrs": None, "parsed": None, "n_pred": 3, "n_true": 2, "matched": 1},
     {"task": "ground", "size": None, "correct_strict": None, "correct_tinyrs": None, "iou": None,
      "iou_tinyrs": None, "parsed": True, "no_true_box": True}],
]
INDICES = [np.asarray([0, 2, 4], np.int64), np.asarray([1, 2 ** 40 + 3, -1], np.int64)]  # > int32 too

SCRIPT = r"""
import json, sys
import numpy as np
import jax
from tinyrs_jax.train import distributed
import ml_collections
pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
distributed.initialize(ml_collections.ConfigDict(dict(mode="explicit", coordinator_address=f"127.0.0.1:{port}",
                                                      num_processes=2, process_id=pid, initialization_timeout=120)))
from test_eval_gather import ROWS, INDICES
from tinyrs_jax import sharding
from tinyrs_jax.evaluation import evaluator
rows = evaluator.gather_scored_rows(ROWS[pid])
from tinyrs_jax.evaluation import metrics
aggregated = metrics.aggregate(rows)
idx = sharding.gather_rows(INDICES[pid])
floats = sharding.gather_rows(np.asarray([[r["iou"] if r["iou"] is not None else -1.0] for r in ROWS[0]]))
with open(out, "w") as f:
  json.dump({"rows": rows, "metrics": aggregated, "idx": [int(i) for i in idx], "dtype": str(idx.dtype),
             "floats": floats.tolist(),
             "floats_dtype": str(floats.dtype), "count": jax.process_count()}, f)
"""


@pytest.mark.slow
def test_two_processes_gather_equal_one(tmp_path):
  e = env(1)
  e["PYTHONPATH"] = os.path.join(ROOT, "tests") + os.pathsep + e["PYTHONPATH"]
  outs = [str(tmp_path / f"p{i}.json") for i in range(2)]
  with reserved_port() as port:
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(i), str(port), outs[i]], cwd=ROOT, env=e,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, results):
    assert p.returncode == 0, err[-4000:]
  got = [json.load(open(o)) for o in outs]
  one_process = [r for rs in ROWS for r in rs]
  for g in got:  # every process holds the same, complete rows, in process order
    assert g["count"] == 2
    assert g["rows"] == one_process  # exact equality: no value rounded on the way
    assert g["metrics"] == metrics.aggregate(one_process)  # the same metrics, the same metric names
    assert g["idx"] == [int(i) for ix in INDICES for i in ix] and g["dtype"] == "int64"
    assert g["floats_dtype"] == "float64"
    assert g["floats"] == [[r["iou"] if r["iou"] is not None else -1.0] for r in ROWS[0]] * 2
