"""The trainer as users run it (`python -m tinyrs_jax.main`, subprocesses): SIGKILL + restart equals an
uninterrupted run, SIGTERM saves and resumes, two real processes equal one, stage chaining and HF init/export,
config errors, the plot tool."""
import contextlib
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny run on random batches: 6 steps, checkpoints every 2, evals every 3.
TINY = ["--config=configs/pretrain.py:demo", "--config.data.source=random", "--config.model.preset=tiny",
        "--config.batch_size=8", "--config.data.length=32", "--config.total_steps=6",
        "--config.checkpoint.every_steps=2", "--config.eval.every_steps=3", "--config.eval.num_batches=1",
        "--config.log_every_steps=1", "--config.optim.warmup_frac=0.0"]
# The real pipeline on the synthetic pretrain data (demo tokenizer, demo_8m), one length bucket.
PIPELINE = ["--config=configs/pretrain.py:demo", "--config.batch_size=4", "--config.total_steps=6",
            "--config.data.max_length=160", "--config.data.length_buckets=(160,)",
            "--config.checkpoint.every_steps=2", "--config.eval.every_steps=3", "--config.eval.num_batches=1",
            "--config.log_every_steps=1", "--config.optim.warmup_frac=0.0"]


def env(devices: int = 1) -> dict:
  e = dict(os.environ)
  # the session's other XLA flags (conftest's CPU_TEST_FLAGS) go along; the device count is the run's own
  rest = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform")]
  e["XLA_FLAGS"] = " ".join([f"--xla_force_host_platform_device_count={devices}"] + rest)
  e["JAX_PLATFORMS"] = "cpu"
  e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
  e["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir or ""
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  return e


def main(workdir, *args, devices=1, check=True, timeout=600, proc_env=None):
  cmd = [sys.executable, "-m", "tinyrs_jax.main", f"--workdir={workdir}", *args]
  p = subprocess.run(cmd, cwd=ROOT, env=proc_env or env(devices), capture_output=True, text=True, timeout=timeout)
  if check and p.returncode != 0:
    raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-6000:]}")
  return p


def metrics(workdir) -> tuple[dict, dict]:
  """(train loss by step, eval loss by step) from metrics.jsonl (the last line wins for a step)."""
  train, ev = {}, {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "loss" in row:
        train[row["step"]] = row["loss"]
      if "eval_loss" in row:
        ev[row["step"]] = row["eval_loss"]
  return train, ev


def final_params(workdir):
  from tinyrs_jax.checkpoint import orbax_io
  from flax import nnx
  model = orbax_io.load_model(workdir)
  return jax.device_get(nnx.state(model, nnx.Param).to_pure_dict())


def assert_same_losses(got: dict, ref: dict, rtol=1e-5):
  assert sorted(got) == sorted(ref), (sorted(got), sorted(ref))
  for k in ref:
    assert abs(got[k] - ref[k]) <= rtol * abs(ref[k]), (k, got[k], ref[k])


def assert_same_params(a, b, atol=0.0):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
  """The uninterrupted tiny run, one process, one device."""
  wd = str(tmp_path_factory.mktemp("tiny_ref"))
  main(wd, *TINY)
  return wd


def test_unknown_config_field_is_a_clear_error(tmp_path):
  p = main(str(tmp_path), "--config=configs/pretrain.py:demo", "--config.optim.lrr=1", check=False)
  assert p.returncode == 1
  assert "no such config field" in p.stderr and "lrr" in p.stderr and "Traceback" not in p.stderr
  p = main(str(tmp_path), "--config=configs/pretrain.py:nope", check=False)
  assert p.returncode != 0 and "unknown variant" in p.stderr


def test_real_config_without_init_is_a_clear_error(tmp_path):
  p = main(str(tmp_path), "--config=configs/pretrain.py", "--config.data.source=random",
           "--config.total_steps=1", check=False)
  assert p.returncode != 0 and "init.hf_dir" in p.stderr


def test_tiny_run_metrics_and_checkpoints(tiny_reference):
  train, ev = metrics(tiny_reference)
  assert sorted(train) == [1, 2, 3, 4, 5, 6] and sorted(ev) == [0, 3, 6]
  rows = [json.loads(l) for l in open(os.path.join(tiny_reference, "metrics.jsonl"))]
  last = [r for r in rows if "loss" in r][-1]
  for key in ("grad_norm", "lr/llm", "tokens_per_s", "step_time_s", "mfu", "compiles"):
    assert key in last, key
  assert last["compiles"] == 1
  steps = sorted(int(s) for s in os.listdir(os.path.join(tiny_reference, "checkpoints")) if s.isdigit())
  assert steps == [4, 6]  # every 2 steps, keep 2
  assert any(f.startswith("events") for f in os.listdir(os.path.join(tiny_reference, "tensorboard")))
  import tinyrs_jax
  model = tinyrs_jax.load(tiny_reference)  # the public loader reads our checkpoints
  assert model.cfg.text.vocab_size == 256


def test_plot_tool(tiny_reference, tmp_path):
  out = str(tmp_path / "curves.png")
  p = subprocess.run([sys.executable, "-m", "tinyrs_jax.tools.plot", f"--workdir={tiny_reference}", f"--out={out}"],
                     cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_sigterm_saves_then_resume_equals_uninterrupted(tiny_reference, tmp_path):
  wd = str(tmp_path / "run")
  p = main(wd, *TINY, "--config.debug_sigterm_at_step=3", "--config.checkpoint.every_steps=100", check=False)
  assert p.returncode == 143, p.stderr[-4000:]  # stopped early, checkpoint saved
  assert "3" in os.listdir(os.path.join(wd, "checkpoints"))
  main(wd, *TINY, "--config.checkpoint.every_steps=100")
  train, ev = metrics(wd)
  ref_train, ref_ev = metrics(tiny_reference)
  assert_same_losses(train, ref_train)
  assert_same_losses(ev, ref_ev)
  assert_same_params(final_params(wd), final_params(tiny_reference), atol=1e-6)


@contextlib.contextmanager
def reserved_port():
  """A free TCP port for the coordinator, reserved until the block ends.

  Picking a port (bind to 0, read it, close) and handing the number to the coordinator races: between the close
  and the coordinator's bind another process on the machine (a parallel test run, anything asking for an ephemeral
  port) can take it, and then the coordinator cannot bind ("Failed to add port to server"), process 0 crashes and
  process 1 waits out its timeout. portpicker.pick_unused_port has the same window (unless a port server runs).
  Here the socket stays bound (not listening) with SO_REUSEPORT: the kernel never hands a bound port to anyone
  else (bind to 0 skips it, a plain bind fails), while the coordinator's gRPC server, which also sets SO_REUSEPORT
  (same user), can bind it. Nothing is delivered to a socket that does not listen."""
  s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  try:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("", 0))
    yield s.getsockname()[1]
  finally:
    s.close()


def test_reserved_port_is_taken_by_no_one_but_the_coordinator():
  """While reserved, a plain bind of the port fails and bind-to-0 never returns it; a listener that sets
  SO_REUSEPORT, as gRPC's server (the jax.distributed coordinator) does, binds and accepts on it."""
  with reserved_port() as port:
    with socket.socket() as other, pytest.raises(OSError):
      other.bind(("127.0.0.1", port))
    with socket.socket() as server:
      server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
      server.bind(("127.0.0.1", port))
      server.listen()
      with socket.create_connection(("127.0.0.1", port), timeout=10):
        conn, _ = server.accept()
        conn.close()


def run_two_processes(workdir, args, proc_env: dict, timeout: int = 600) -> list[tuple[str, str]]:
  """`python -m tinyrs_jax.main` as two jax.distributed processes (gloo) on this machine; both must succeed.
  Returns each process's (stdout, stderr)."""
  procs = []
  with reserved_port() as port:  # held until both processes are done (see reserved_port)
    for i in range(2):
      cmd = [sys.executable, "-m", "tinyrs_jax.main", f"--workdir={workdir}", *args,
             f"--config.distributed.coordinator_address=127.0.0.1:{port}", "--config.distributed.num_processes=2",
             f"--config.distributed.process_id={i}", "--config.distributed.initialization_timeout=120"]
      procs.append(subprocess.Popen(cmd, cwd=ROOT, env=proc_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True))
    outs = [p.communicate(timeout=timeout) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-6000:]
  return outs


@pytest.mark.slow
def test_two_processes_equal_one(tiny_reference, tmp_path):
  """jax.distributed over two local processes (2 CPU devices each, gloo), data axis of 4 = one process."""
  wd = str(tmp_path / "two")
  outs = run_two_processes(wd, TINY, env(2))
  assert "over 4 devices (2 processes)" in outs[0][1]
  train, ev = metrics(wd)
  ref_train, ref_ev = metrics(tiny_reference)
  assert_same_losses(train, ref_train)
  assert_same_losses(ev, ref_ev)
  assert_same_params(final_params(wd), final_params(tiny_reference), atol=2e-4)


@pytest.mark.slow
def test_sigkill_then_restart_equals_uninterrupted_with_pipeline(tmp_path):
  """The real data pipeline: a SIGKILL after step 5 (checkpoint at 4 on disk), a restart from the workdir
  restores params, optimizer, step, RNG and the data iterator: same losses and parameters as no kill.
  The workdir holds the tokenizer with the training pixel limits; loads and exports find it there."""
  ref, wd, export = str(tmp_path / "ref"), str(tmp_path / "killed"), str(tmp_path / "hf")
  main(ref, *PIPELINE, f"--config.export_hf_dir={export}")
  import tinyrs_jax
  tok = tinyrs_jax.load(ref).source_dir
  assert tok == os.path.join(ref, "tokenizer")
  for folder in (tok, export):
    assert os.path.exists(os.path.join(folder, "tokenizer.json")), folder
    pre = json.load(open(os.path.join(folder, "preprocessor_config.json")))
    assert (pre["min_pixels"], pre["max_pixels"]) == (56 * 56, 112 * 112), folder  # configs/common.py demo()
  p = main(wd, *PIPELINE, "--config.debug_kill_at_step=5", check=False)
  assert p.returncode == -9, p.stderr[-4000:]
  assert sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")) if s.isdigit()) == [2, 4]
  main(wd, *PIPELINE)
  train, ev = metrics(wd)
  ref_train, ref_ev = metrics(ref)
  assert_same_losses(train, ref_train, rtol=1e-6)
  assert_same_losses(ev, ref_ev, rtol=1e-6)
  assert_same_params(final_params(wd), final_params(ref), atol=1e-6)


@pytest.mark.slow
def test_stage_chain_and_hf_init_and_export(tiny_reference, tmp_path):
  """Stage 2 from stage 1's workdir, stage 3 from an HF export: with lr 0 the weights carry over exactly."""
  export = str(tmp_path / "hf")
  s1 = str(tmp_path / "s1")
  main(s1, *TINY, "--config.total_steps=2", f"--config.export_hf_dir={export}")
  assert os.path.exists(os.path.join(export, "config.json"))
  assert os.path.exists(os.path.join(export, "model.safetensors"))
  stage1 = final_params(s1)
  s2 = str(tmp_path / "s2")
  main(s2, "--config=configs/instruct.py:demo", *TINY[1:], "--config.total_steps=1", "--config.optim.lr=0.0",
       "--config.optim.group_lr.vision=-1.0", f"--config.init.workdir={s1}")
  marker = json.load(open(os.path.join(s2, "tinyrs_model.json")))
  assert marker["init"] == "workdir" and marker["stage"] == "instruct"
  assert_same_params(final_params(s2), stage1)
  s3 = str(tmp_path / "s3")
  main(s3, "--config=configs/cot.py", *TINY[1:], "--config.total_steps=1", "--config.optim.lr=0.0",
       "--config.optim.group_lr.vision=-1.0", f"--config.init.hf_dir={export}", "--config.model.dtype=float32")
  assert json.load(open(os.path.join(s3, "tinyrs_model.json")))["init"] == "hf"
  assert_same_params(final_params(s3), stage1)
