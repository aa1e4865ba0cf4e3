"""Trainer set-up in process: batch split over processes, data state under another process count, the tokenizer
copied into the workdir, special ids, HF init straight into shardings, preemption polling, config defaults."""
import dataclasses
import json
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import tinyrs_jax
from tinyrs_jax import sharding as sharding_lib
from tinyrs_jax.checkpoint import hf, orbax_io
from tinyrs_jax.data import demo_tokenizer, synthetic
from tinyrs_jax.data.image_processor import ImageProcessorConfig
from tinyrs_jax.models import get_preset, presets
from tinyrs_jax.models.qwen2_vl import Qwen2VL
from tinyrs_jax.train import input as input_lib
from tinyrs_jax.train import optimizer as optim_lib
from tinyrs_jax.train import runner
from tinyrs_jax.train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = get_preset("tiny")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  """A small demo tokenizer (Qwen2-VL special tokens after a BPE vocabulary)."""
  root = tmp_path_factory.mktemp("tok")
  synthetic.generate(str(root / "data"), 30, 0)
  demo_tokenizer.build(str(root / "data"), str(root / "tok"))
  return str(root / "tok")


def tok_cfg(tok_dir):
  from tinyrs_jax.data.tokenizer import Tokenizer
  tok = Tokenizer.from_folder(tok_dir)
  return presets.with_tokenizer(CFG.replace(text=dataclasses.replace(CFG.text, vocab_size=4096)), tok)


# ------------------------------------------------------------------------------------ batch over processes

def test_batch_split_over_processes():
  input_lib.check_batch_split(8, 8, 2)
  input_lib.check_batch_split(8, 4, 4)
  with pytest.raises(ValueError, match=r"data x fsdp = 1\) must be a multiple of the process count \(2\)"):
    input_lib.check_batch_split(8, 1, 2)  # mesh (1, 1, 8) over 2 hosts: rows replicated, each host's different
  with pytest.raises(ValueError, match="eval batch size 6 must be divisible by the data axes"):
    input_lib.check_batch_split(6, 4, 1, "eval batch size")


def test_to_global_refuses_a_batch_replicated_across_processes(monkeypatch):
  mesh = sharding_lib.make_mesh(1, 1, 8)
  batch = input_lib.random_batch(CFG, batch_size=4, length=32)
  sh = state_lib.batch_shardings(mesh, batch)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(ValueError, match="splits the rows 1 ways, not a multiple of the 2 processes"):
    input_lib.to_global(batch, sh)


# -------------------------------------------------------------------------------- data state and processes

def test_data_state_restores_under_another_process_count(tmp_path):
  """Saved by 2 processes (one file each), restored by 1: process 0's state (global next batch) is used."""
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state = state_lib.TrainState(step=jnp.asarray(4, jnp.int32), params={"w": jnp.arange(4.0)},
                               opt_state={"mu": jnp.ones(4)}, rng=jax.random.PRNGKey(1))
  mngr = orbax_io.checkpoint_manager(str(tmp_path), async_save=False)
  orbax_io.save_train_state(mngr, state, {"next_batch": 4, "skipped": {"bad_image": 1}})
  data_dir = os.path.join(str(tmp_path), "checkpoints", "4", "data")
  assert "process_0-of-1.json" in os.listdir(data_dir)
  os.rename(os.path.join(data_dir, "process_0-of-1.json"), os.path.join(data_dir, "process_0-of-2.json"))
  with open(os.path.join(data_dir, "process_1-of-2.json"), "w") as f:
    json.dump({"next_batch": 4, "skipped": {"bad_image": 3}}, f)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), state)
  restored, data_state = orbax_io.restore_train_state(mngr, abstract)
  mngr.close()
  assert data_state == {"next_batch": 4, "skipped": {"bad_image": 1}}
  assert int(restored.step) == 4 and np.array_equal(restored.params["w"], np.arange(4.0))


# ------------------------------------------------------------------------------- tokenizer in the workdir

def test_tokenizer_and_pixel_limits_move_with_the_workdir(tok_dir, tmp_path):
  """The marker names <workdir>/tokenizer relatively: a moved workdir still loads with its tokenizer and the
  training pixel limits, and save_hf copies both."""
  wd = str(tmp_path / "run")
  cfg = tok_cfg(tok_dir)
  image_cfg = ImageProcessorConfig(min_pixels=56 * 56, max_pixels=112 * 112)
  rel = orbax_io.save_tokenizer(wd, tok_dir, image_cfg)
  orbax_io.write_marker(wd, cfg, rel)
  params = nnx.state(Qwen2VL(cfg, rngs=nnx.Rngs(0)), nnx.Param).to_pure_dict()
  import orbax.checkpoint as ocp
  mngr = orbax_io.checkpoint_manager(wd, async_save=False)
  mngr.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
  mngr.close()
  assert orbax_io.read_marker(wd)["tokenizer_dir"] == "tokenizer"
  moved = str(tmp_path / "moved")
  shutil.move(wd, moved)
  model = tinyrs_jax.load(moved)
  assert model.source_dir == os.path.join(moved, "tokenizer")
  assert os.path.exists(os.path.join(model.source_dir, "tokenizer.json"))
  assert ImageProcessorConfig.from_folder(model.source_dir) == image_cfg
  out = tinyrs_jax.save_hf(model, str(tmp_path / "hf"))
  assert os.path.exists(os.path.join(out, "tokenizer.json"))
  assert ImageProcessorConfig.from_folder(out) == image_cfg


def test_checkpoint_formats_do_not_import_each_other():
  """hf (HF folders) and orbax_io (our workdirs) share only sidecar; `load` (checkpoint/load.py) sits above both.
  Any import of the other, even inside a function, would bring the cycle back."""
  import ast
  for mine, other in (("hf", "orbax_io"), ("orbax_io", "hf")):
    tree = ast.parse(open(os.path.join(ROOT, "tinyrs_jax", "checkpoint", f"{mine}.py")).read())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    assert not [x for x in names if other in x.split(".")], (mine, names)


def test_find_checkpoint_names_the_workdir_and_step(tmp_path):
  wd = str(tmp_path / "run")
  orbax_io.write_marker(wd, CFG)
  os.makedirs(os.path.join(wd, "checkpoints", "7"))
  assert orbax_io.find_checkpoint(wd) == (wd, None)
  assert orbax_io.find_checkpoint(os.path.join(wd, "checkpoints", "7")) == (wd, 7)
  assert orbax_io.find_checkpoint(str(tmp_path)) is None
  empty = str(tmp_path / "empty")
  orbax_io.write_marker(empty, CFG)
  with pytest.raises(FileNotFoundError, match="no checkpoint steps"):
    orbax_io.restore_params_pure(empty, None, {})


# ------------------------------------------------------------------------------------------ special ids

def init_config(**init):
  c = ml_collections.ConfigDict(dict(hf_dir="", workdir="", step=-1, allow_random=False))
  c.update(init)
  return ml_collections.ConfigDict(dict(init=c))


def test_special_ids_must_match_the_tokenizer(tok_dir, tmp_path):
  cfg = tok_cfg(tok_dir)
  hf_dir = str(tmp_path / "hf")
  shutil.copytree(tok_dir, hf_dir)
  with open(os.path.join(hf_dir, "config.json"), "w") as f:
    json.dump(presets.to_hf_dict(cfg), f)
  assert runner.resolve_model(init_config(hf_dir=hf_dir), str(tmp_path / "wd")).tokenizer_dir == hf_dir
  with open(os.path.join(hf_dir, "config.json"), "w") as f:
    json.dump(presets.to_hf_dict(cfg.replace(image_token_id=7)), f)
  with pytest.raises(ValueError, match=rf"image_token_id is 7 in .*config.json but the tokenizer's <\|image_pad\|> "
                                       rf"is {cfg.image_token_id}"):
    runner.resolve_model(init_config(hf_dir=hf_dir), str(tmp_path / "wd"))
  # An earlier stage's workdir against another tokenizer (data.tokenizer_dir).
  src = str(tmp_path / "stage1")
  orbax_io.write_marker(src, cfg.replace(vision_end_token_id=9), None)
  with pytest.raises(ValueError, match=r"vision_end_token_id is 9 in .*tinyrs_model.json"):
    runner.resolve_model(init_config(workdir=src), str(tmp_path / "wd2"), tok_dir)


def test_ids_taken_from_a_tokenizer_pass_the_check(tok_dir):
  """with_tokenizer and check_tokenizer_ids read one table: what the first sets, the second accepts."""
  from tinyrs_jax.data.tokenizer import Tokenizer
  tok = Tokenizer.from_folder(tok_dir)
  cfg = presets.with_tokenizer(get_preset("demo_8m"), tok)
  presets.check_tokenizer_ids(cfg, tok, "here")
  with pytest.raises(ValueError, match=r"eos_token_id is 5 in here"):
    presets.check_tokenizer_ids(cfg.replace(eos_token_id=5), tok, "here")


# -------------------------------------------------------------------------------------------- HF init

def test_hf_init_goes_straight_into_shardings(tmp_path, monkeypatch):
  """The HF weights stay NumPy on the host and are cut into their (fsdp) shards: equal values, right shardings."""
  module = Qwen2VL(CFG, rngs=nnx.Rngs(3))
  hf_dir = tinyrs_jax.save_hf(module, str(tmp_path / "hf"))
  loaded = []
  real = hf.load_hf_params

  def spy(*a, **kw):
    out = real(*a, **kw)
    loaded.extend(type(x) for x in jax.tree.leaves(out.to_pure_dict()))
    return out
  monkeypatch.setattr(hf, "load_hf_params", spy)
  model = state_lib.make_model(CFG)
  opt = optim_lib.make_optimizer(ml_collections.ConfigDict(dict(name="sgd", lr=0.1)), model.abstract_params, 10)
  sh = state_lib.state_shardings(model, opt, sharding_lib.make_mesh(1, 8, 1))
  params = runner.load_init_params(runner.ModelSource(CFG, None, "hf", hf_dir), model, sh)
  assert loaded and all(t is np.ndarray for t in loaded)
  want = nnx.state(module, nnx.Param).to_pure_dict()
  for got, s, ref in zip(jax.tree.leaves(params), jax.tree.leaves(sh.params), jax.tree.leaves(want)):
    assert got.sharding == s
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
  assert "fsdp" in str(params["embed_tokens"].sharding.spec)


# ------------------------------------------------------------------------------------------- preemption

def test_sigterm_handler_chains_to_the_previous_one():
  seen = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
  try:
    p = runner.Preemption()
    os.kill(os.getpid(), signal.SIGTERM)
    assert p.requested(1) and seen == [signal.SIGTERM]
    p.restore_handler()
    assert signal.getsignal(signal.SIGTERM) is not p._handler
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == [signal.SIGTERM] * 2
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_several_processes_agree_every_n_steps(monkeypatch):
  """No all-gather on most steps (it would wait for the step in flight); the flag is shared every n steps."""
  from jax.experimental import multihost_utils
  calls = []

  def gather(x):
    calls.append(x)
    return np.stack([x, np.zeros_like(x)])  # this process's flag and another one's
  p = runner.Preemption(check_every=10)
  try:
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", gather)
    stops = []
    for step in range(1, 21):
      if step == 3:
        p.flag = True  # SIGTERM on this process
      stops.append(p.requested(step))
  finally:
    p.restore_handler()
  assert len(calls) == 2 and stops.index(True) == 9  # steps 10 and 20 check; step 10 stops


# -------------------------------------------------------------------------------------------- configs

def test_real_configs_export_bfloat16_demo_keeps_fp32():
  import importlib.util
  spec = importlib.util.spec_from_file_location("pretrain_config", os.path.join(ROOT, "configs", "pretrain.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  assert mod.get_config().export_dtype == "bfloat16"
  assert mod.get_config("demo").export_dtype == ""
  assert mod.get_config().checkpoint.preemption_check_every == 10
