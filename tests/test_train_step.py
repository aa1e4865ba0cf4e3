"""The train step in process: sharded meshes equal one device, freezing, accumulation, clipping, groups, compiles."""
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tinyrs_jax import sharding as sharding_lib
from tinyrs_jax.models import get_preset
from tinyrs_jax.train import input as input_lib
from tinyrs_jax.train import losses
from tinyrs_jax.train import optimizer as optim_lib
from tinyrs_jax.train import state as state_lib

CFG = get_preset("tiny")
B, L, STEPS = 8, 32, 3
# What a mesh (or gradient accumulation) changes is the summation order of the gradients: relative errors ~1e-6
# (measured <= 1.4e-6 per parameter leaf). Parameters after several AdamW steps are the wrong thing to compare: Adam
# divides by sqrt(v) + 1e-8, so on a gradient that is ~0 it turns that noise into a step of size lr (parameters
# then differed by up to 2e-4, a flake), and the next steps' gradients inherit it (measured 1.8e-5 at step 3). So
# the gradients of the first step are compared, relatively: Adam's first moment after one step is exactly
# (1 - b1) x the clipped gradient. Losses and gradient norms (insensitive to the amplified noise) are compared at
# every step, with relative tolerances too.
RTOL_GRADS = 1e-4  # per parameter leaf: ||got - ref|| <= RTOL_GRADS * ||ref||; a wrong sharding is off by > 1e-2


def optim_config(**kw):
  c = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, max_grad_norm=1.0,
      schedule="cosine", warmup_frac=0.0, warmup_steps=-1, end_lr_frac=0.0, mu_dtype="",
      group_lr=ml_collections.ConfigDict(dict(vision=1e-3, merger=-1.0, llm=-1.0)), freeze=""))
  for k, v in kw.items():
    setattr(c, k, v) if not isinstance(v, dict) else c[k].update(v)
  return c


def batches(n=STEPS, seed=0, batch_size=B):
  return [input_lib.random_batch(CFG, batch_size=batch_size, length=L, seed=seed + i) for i in range(n)]


def loss_fn(chunk=8):
  return lambda m, b, r: losses.next_token_ce(m, b, r, chunk_size=chunk)


def run(mesh, host_batches, *, optim=None, grad_accum=1, dtype="float32", remat="none", seed=0, chunk=8,
        place=None, first_grads=None):
  """Steps on `mesh`; returns (metrics per step, final params on host, the CompiledStep, the state).
  `place(host_batch, shardings)` puts a batch on the mesh (default: input_lib.to_global); a list passed as
  `first_grads` receives the first step's gradients (see first_moments)."""
  model = state_lib.make_model(CFG, dtype=dtype, remat_policy=remat)
  opt = optim_lib.make_optimizer(optim or optim_config(), model.abstract_params, total_steps=10)
  sh = state_lib.state_shardings(model, opt, mesh)
  state = state_lib.init_state(model, opt, sh, seed)
  step = state_lib.CompiledStep(state_lib.make_train_step(model, opt, loss_fn(chunk), grad_accum=grad_accum),
                                mesh, sh, donate=True, grad_accum=grad_accum)
  out = []
  for hb in host_batches:
    gb = (place or input_lib.to_global)(hb, state_lib.batch_shardings(mesh, hb, grad_accum))
    state, m = step(state, gb)
    out.append({k: float(v) for k, v in jax.device_get(m).items()})
    if first_grads is not None and len(out) == 1:
      first_grads.append(first_moments(state))
  return out, jax.device_get(state.params), step, state


def one_device_mesh():
  return sharding_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def first_moments(state):
  """Adam's first moments, on host (a list: one params-shaped tree per parameter group, masked elsewhere). After
  the first step they are (1 - b1) x the clipped gradient: the gradients, sharded like the parameters."""
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  return jax.device_get([x.mu for x in jax.tree.leaves(state.opt_state, is_leaf=is_adam) if is_adam(x)])


def assert_same_step(got, ref):
  """(metrics per step, first gradients) of two runs agree to summation-order noise, relatively."""
  (got_metrics, got_grads), (ref_metrics, ref_grads) = got, ref
  bad = []
  for i, (a, b) in enumerate(zip(got_metrics, ref_metrics)):
    for key, rtol in (("loss", 1e-5), ("grad_norm", 1e-4)):
      if abs(a[key] - b[key]) > rtol * abs(b[key]):
        bad.append(f"step {i} {key}: {a[key]} vs {b[key]}")
  total = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(ref_grads)))
  for (path, b), a in zip(jax.tree_util.tree_leaves_with_path(ref_grads), jax.tree.leaves(got_grads)):
    ref_norm = np.linalg.norm(np.asarray(b, np.float64))
    err = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    if err > RTOL_GRADS * ref_norm + 1e-7 * total:  # the floor only matters for a leaf whose gradient is 0
      bad.append(f"gradient {jax.tree_util.keystr(path)}: relative error {err / max(ref_norm, 1e-30):.2e}")
  assert not bad, f"{len(bad)} differences:\n  " + "\n  ".join(bad)


@pytest.fixture(scope="module")
def baseline():
  """Three steps on one device (the reference for everything else), and the initial parameters."""
  hb = batches()
  _, initial, _, _ = run(one_device_mesh(), [])
  first = []
  metrics, params, step, _ = run(one_device_mesh(), hb, first_grads=first)
  return {"batches": hb, "metrics": metrics, "params": params, "initial": initial, "step": step,
          "first_grads": first[0]}


def reference(baseline):
  return baseline["metrics"], baseline["first_grads"]


def test_eight_fake_devices():
  assert jax.device_count() == 8, "conftest sets --xla_force_host_platform_device_count=8"


def test_loss_decreases_and_one_compile(baseline):
  losses_ = [m["loss"] for m in baseline["metrics"]]
  assert losses_[-1] < losses_[0]
  assert baseline["step"].num_compiles == 1  # same shapes every step: compiled once, never again


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_meshes_equal_one_device(baseline, shape):
  mesh = sharding_lib.make_mesh(*shape)
  first = []
  metrics, _, _, state = run(mesh, baseline["batches"], first_grads=first)
  assert_same_step((metrics, first[0]), reference(baseline))
  # Parameters and optimizer moments really are sharded when an axis is > 1.
  emb = state.params["embed_tokens"].sharding.spec
  if shape[1] > 1:
    assert "fsdp" in str(emb), emb
  if shape[2] > 1:
    assert "tensor" in str(emb), emb
  mu = [x for x in jax.tree.leaves(state.opt_state) if x.shape == state.params["embed_tokens"].shape]
  assert mu and all(x.sharding.spec == state.params["embed_tokens"].sharding.spec for x in mu)


def place_as_two_hosts(batch: dict, shardings: dict) -> dict:
  """What two processes build with `jax.make_array_from_process_local_data` (input_lib.to_global), simulated in
  this one: process h owns the h-th half of jax.devices() and loads the h-th half of the rows (and of the image
  slots); its rows fill, in order, the row blocks its devices hold (jax's documented mapping)."""
  devices = jax.devices()
  host = {d: i * 2 // len(devices) for i, d in enumerate(devices)}
  out = {}
  for k, x in batch.items():
    s, n = shardings[k], x.shape[0]
    index = s.devices_indices_map(x.shape)
    pieces = []
    for h in range(2):
      local = x[h * n // 2:(h + 1) * n // 2]
      own = [d for d in index if host[d] == h]
      starts = sorted({index[d][0].indices(n)[0] for d in own})
      block = len(local) // len(starts)
      for d in own:
        rows = local[starts.index(index[d][0].indices(n)[0]) * block:][:block]
        pieces.append(jax.device_put(rows[(slice(None),) + tuple(index[d][1:])], d))
    out[k] = jax.make_array_from_single_device_arrays(x.shape, s, pieces)
  return out


def test_mesh_comparison_catches_a_wrong_sharding(baseline, monkeypatch):
  """A wrong batch rule, ("fsdp", "data") where the image rule says ("data", "fsdp"), is harmless in one process
  (GSPMD keeps the math) but on two hosts each host's text rows and image slots land in different global rows:
  rows are paired with other rows' images. The placement with the real rules is exact; with the wrong rule the
  gradients differ by far more than RTOL_GRADS, and the comparison says so."""
  mesh = sharding_lib.make_mesh(2, 2, 2)
  hb = baseline["batches"][0]
  placed = place_as_two_hosts(hb, state_lib.batch_shardings(mesh, hb))
  for k, v in hb.items():  # the simulation, with the real rules, puts every row where one process puts it
    np.testing.assert_array_equal(np.asarray(placed[k]), v)

  rules = tuple((n, ("fsdp", "data") if n == "batch" else a) for n, a in sharding_lib.DEFAULT_RULES)
  real = sharding_lib.named_sharding
  monkeypatch.setattr(sharding_lib, "named_sharding",
                      lambda mesh, names, shape=None, **_: real(mesh, names, shape, rules=rules))
  placed = place_as_two_hosts(hb, state_lib.batch_shardings(mesh, hb))
  assert not np.array_equal(np.asarray(placed["input_ids"]), hb["input_ids"])  # rows 2, 3 <-> 4, 5
  np.testing.assert_array_equal(np.asarray(placed["pixel_values"]), hb["pixel_values"])
  first = []
  metrics, _, _, _ = run(mesh, baseline["batches"], place=place_as_two_hosts, first_grads=first)
  with pytest.raises(AssertionError, match="differences") as e:
    assert_same_step((metrics, first[0]), reference(baseline))
  print(e.value)


def test_batch_without_supervised_tokens_changes_nothing(baseline):
  """loss_mask all zero: no AdamW decay or moment update (params, opt_state equal), and the step does not count
  (state.step drives the schedule: the logged lr stays the applied one)."""
  mesh = one_device_mesh()
  model = state_lib.make_model(CFG)
  opt = optim_lib.make_optimizer(optim_config(), model.abstract_params, total_steps=10)
  sh = state_lib.state_shardings(model, opt, mesh)
  state = state_lib.init_state(model, opt, sh, 0)
  step = state_lib.CompiledStep(state_lib.make_train_step(model, opt, loss_fn()), mesh, sh, donate=True)
  hb = baseline["batches"][0]
  put = lambda b: input_lib.to_global(b, state_lib.batch_shardings(mesh, b))
  state, m = step(state, put(hb))  # non-zero moments first
  assert float(m["skipped"]) == 0.0
  before = jax.device_get((state.params, state.opt_state))
  state, m = step(state, put(dict(hb, loss_mask=np.zeros_like(hb["loss_mask"]))))
  assert float(m["skipped"]) == 1.0 and float(m["weight"]) == 0.0 and int(state.step) == 1
  for a, b in zip(jax.tree.leaves(jax.device_get((state.params, state.opt_state))), jax.tree.leaves(before)):
    assert np.array_equal(a, b)


def test_freezing_keeps_params_bit_identical(baseline):
  opt = optim_config(freeze="vision,merger")
  _, params, _, state = run(one_device_mesh(), baseline["batches"], optim=opt)
  init = baseline["initial"]
  changed = optim_lib.map_with_path(lambda p, x: p, params)
  for path, new, old in zip(jax.tree.leaves(changed, is_leaf=lambda x: isinstance(x, tuple)),
                            jax.tree.leaves(params), jax.tree.leaves(init)):
    if path[0] == "visual":
      assert np.array_equal(new, old) and new.dtype == old.dtype, path  # bit-identical
    elif path[-1] in ("kernel",) or path == ("embed_tokens",):
      assert not np.array_equal(new, old), path  # trained
  # The optimizer holds no state for frozen parameters.
  mu_shapes = {x.shape for x in jax.tree.leaves(state.opt_state)}
  assert init["visual"]["patch_embed"].shape not in mu_shapes


def test_all_frozen_is_an_error():
  model = state_lib.make_model(CFG)
  with pytest.raises(ValueError, match="freezes every"):
    optim_lib.make_optimizer(optim_config(freeze="vision,merger,llm"), model.abstract_params, 10)
  with pytest.raises(ValueError, match="unknown parameter group"):
    optim_lib.make_optimizer(optim_config(freeze="visoin"), model.abstract_params, 10)


def test_param_groups():
  model = state_lib.make_model(CFG)
  labels = optim_lib.group_labels(model.abstract_params)
  assert labels["visual"]["merger"]["fc1"]["kernel"] == "merger"
  assert labels["visual"]["blocks"]["qkv"]["kernel"] == "vision"
  assert labels["visual"]["patch_embed"] == "vision"
  assert labels["embed_tokens"] == "llm" and labels["decoder"]["layers"]["q_proj"]["kernel"] == "llm"
  lrs = optim_lib.group_lrs(optim_config())
  assert lrs == {"vision": 1e-3, "merger": 1e-2, "llm": 1e-2}


def test_per_group_learning_rates(baseline):
  """SGD with lr 0 for vision: the vision tower does not move, the merger and LLM do; lrs are logged."""
  opt = optim_config(name="sgd", max_grad_norm=0.0, group_lr={"vision": 0.0, "merger": 0.5, "llm": 0.1})
  metrics, params, _, _ = run(one_device_mesh(), baseline["batches"][:1], optim=opt)
  init = baseline["initial"]
  assert metrics[0]["lr/vision"] == 0.0 and metrics[0]["lr/merger"] == 0.5
  assert metrics[0]["lr/llm"] == pytest.approx(0.1)
  assert np.array_equal(params["visual"]["blocks"]["qkv"]["kernel"], init["visual"]["blocks"]["qkv"]["kernel"])
  assert not np.array_equal(params["visual"]["merger"]["fc2"]["kernel"], init["visual"]["merger"]["fc2"]["kernel"])


def test_grad_clipping(baseline):
  """SGD lr 1 with max_grad_norm 1e-3: the whole update has norm 1e-3 (the raw gradient norm is larger)."""
  opt = optim_config(name="sgd", lr=1.0, max_grad_norm=1e-3, group_lr={"vision": -1.0})
  metrics, params, _, _ = run(one_device_mesh(), baseline["batches"][:1], optim=opt)
  init = baseline["initial"]
  delta = np.sqrt(sum(np.sum((np.asarray(a, np.float64) - b) ** 2)
                      for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(init))))
  assert metrics[0]["grad_norm"] > 1e-2
  np.testing.assert_allclose(delta, 1e-3, rtol=1e-3)


def test_grad_accumulation_equals_big_batch(baseline):
  """Two microbatches of 4 rows accumulated == one batch of the same 8 rows (token-weighted mean)."""
  hb = baseline["batches"]
  halves = [input_lib.stack_microbatches([input_lib.slice_rows(b, 0, 2), input_lib.slice_rows(b, 1, 2)])
            for b in hb]
  first = []
  metrics, _, _, _ = run(one_device_mesh(), halves, grad_accum=2, first_grads=first)
  assert [m["weight"] for m in metrics] == [m["weight"] for m in baseline["metrics"]]
  assert_same_step((metrics, first[0]), reference(baseline))


def test_bf16_compute_keeps_fp32_master_weights_and_remat(baseline):
  metrics, params, _, _ = run(one_device_mesh(), baseline["batches"][:2], dtype="bfloat16", remat="full")
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  ref = baseline["metrics"]
  for got, r in zip(metrics, ref):
    assert abs(got["loss"] - r["loss"]) < 0.05 * r["loss"]  # bf16 matmuls: close, not equal


def test_step_never_builds_full_logits():
  """The compiled step holds logits for a chunk of positions, never batch x length x vocab."""
  mesh = one_device_mesh()
  model = state_lib.make_model(CFG)
  opt = optim_lib.make_optimizer(optim_config(), model.abstract_params, 10)
  sh = state_lib.state_shardings(model, opt, mesh)
  hb = batches(1)[0]
  step = state_lib.CompiledStep(state_lib.make_train_step(model, opt, loss_fn(chunk=8)), mesh, sh, donate=True)
  text = step.compiled(state_lib.abstract_state(model, opt, sh), hb).as_text()
  v = CFG.text.vocab_size
  assert re.search(rf"f32\[{B * 8},{v}\]", text), "expected (B x chunk, vocab) logits"
  assert not re.search(rf"\[{B},{L},{v}\]", text) and not re.search(rf"\[{B * L},{v}\]", text)


def test_real_2b_recipe_lowers_on_an_fsdp_mesh():
  """The default pretrain config (2B, bf16, full remat, its optimizer) traces and lowers on a (1, 8, 1) mesh
  from abstract shapes alone: nothing is allocated; parameters and Adam moments are sharded over fsdp. (Its
  compiled memory against a chip's capacity, for every stage: tests/test_aot.py.)"""
  import importlib.util
  import os
  spec = importlib.util.spec_from_file_location(
      "pretrain_config", os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "pretrain.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  mesh = sharding_lib.make_mesh(1, 8, 1)
  model = state_lib.make_model(get_preset(c.model.preset), dtype=c.model.dtype, remat_policy=c.model.remat_policy)
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.abstract_params)) == 2_208_985_600
  opt = optim_lib.make_optimizer(c.optim, model.abstract_params, total_steps=1000)
  sh = state_lib.state_shardings(model, opt, mesh)
  assert "fsdp" in str(sh.params["embed_tokens"].spec)
  assert "fsdp" in str(sh.params["decoder"]["layers"]["gate_proj"]["kernel"].spec)
  assert any("fsdp" in str(s.spec) for s in jax.tree.leaves(sh.opt_state))
  b, l, i, p = 8, 2048, 8, 5120
  shapes = {"input_ids": ((b, l), jnp.int32), "attention_mask": ((b, l), jnp.int32), "loss_mask": ((b, l), jnp.int32),
            "pixel_values": ((i, p, 1176), jnp.float32), "image_grid_thw": ((i, 3), jnp.int32)}
  bsh = state_lib.batch_shardings(mesh, {k: jax.ShapeDtypeStruct(*v) for k, v in shapes.items()})
  batch = {k: jax.ShapeDtypeStruct(s, d, sharding=bsh[k]) for k, (s, d) in shapes.items()}
  fn = state_lib.make_train_step(model, opt, loss_fn(c.loss.chunk_size))
  with sharding_lib.use_mesh(mesh):
    lowered = jax.jit(fn, in_shardings=(sh, bsh), donate_argnums=0).lower(
        state_lib.abstract_state(model, opt, sh), batch)
  assert "bf16" in lowered.as_text()
