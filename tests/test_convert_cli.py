"""The convert CLI: HF -> workdir -> HF gives the original tensors; tinyrs_jax.load reads the workdir."""
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

import tinyrs_jax  # noqa: E402
from hf_reference import build_hf_model, random_image_batch, save_hf_model  # noqa: E402
from test_convert import read_all  # noqa: E402


def run(*args):
  r = subprocess.run([sys.executable, "-m", "tinyrs_jax.tools.convert", *args], capture_output=True, text=True,
                     timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout


def test_hf_to_workdir_to_hf(tmp_path):
  src = save_hf_model(build_hf_model(seed=4), str(tmp_path / "hf"))
  (tmp_path / "hf" / "tokenizer.json").write_text("{}")
  run(f"--hf_dir={src}", f"--workdir={tmp_path / 'wd'}")
  model = tinyrs_jax.load(str(tmp_path / "wd"))
  ref = tinyrs_jax.load(src)
  inp = random_image_batch(np.random.default_rng(0), [(1, 4, 4)], [3], [4], [[0]])
  np.testing.assert_array_equal(np.asarray(model(**inp)), np.asarray(ref(**inp)))
  run(f"--workdir={tmp_path / 'wd'}", f"--hf_out={tmp_path / 'out'}")
  a, b = read_all(src), read_all(str(tmp_path / "out"))
  assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
  assert (tmp_path / "out" / "tokenizer.json").exists()  # tokenizer travels with the weights


def test_bad_arguments_explain_themselves(tmp_path):
  r = subprocess.run([sys.executable, "-m", "tinyrs_jax.tools.convert", f"--hf_out={tmp_path}"],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and "give --hf_dir with --workdir" in r.stderr
