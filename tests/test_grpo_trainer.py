"""The GRPO trainer's pieces in process: the training forward's log-probs against the sampler's, the registered loss
(a few updates raise the log-probs of positively-advantaged completions), microbatches and meshes against one
device, reward and completion metrics, the health monitor."""
import ml_collections
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hf_reference import random_image_batch
from tinyrs_jax import sharding as sharding_lib
from tinyrs_jax.models import presets
from tinyrs_jax.sampling import generate as gen_lib
from tinyrs_jax.train import grpo_monitor
from tinyrs_jax.train import grpo_rewards
from tinyrs_jax.train import grpo_trainer
from tinyrs_jax.train import losses as losses_lib
from tinyrs_jax.train import optimizer as optim_lib
from tinyrs_jax.train import state as state_lib

CFG = presets.get_preset("tiny")
GRIDS = [(1, 4, 4), (1, 4, 8), (1, 8, 4)]
G, NEW, TEMP = 3, 10, 0.7


@pytest.fixture(scope="module")
def model():
  return state_lib.make_model(CFG)


@pytest.fixture(scope="module")
def params(model):
  return jax.jit(model.build)(jax.random.PRNGKey(3))


@pytest.fixture(scope="module")
def rollout(model, params):
  """4 prompts (left-padded, images of different sizes, one slot per prompt as the pipeline lays them out)
  sampled G times each."""
  inp = random_image_batch(np.random.default_rng(0), GRIDS, [3, 6, 2, 4], [4, 1, 5, 2], [[0], [1], [2], [1]])
  static = gen_lib.left_pad_prompts(inp, pad_token_id=0, patch_dim=CFG.vision.patch_dim)
  gen = gen_lib.generate(model.merge(params), static, max_new_tokens=NEW, temperature=TEMP, seed=5,
                         eos_token_ids=[7], num_samples=G)
  mask = (np.arange(NEW)[None] < gen.lengths[:, None]).astype(np.int32)
  batch = {"prompt_ids": static["input_ids"], "prompt_mask": static["attention_mask"],
           "pixel_values": static["pixel_values"], "image_grid_thw": static["image_grid_thw"],
           "completion_ids": gen.tokens, "completion_mask": mask, "sampler_logps": gen.logprobs}
  return static, gen, batch


def test_training_forward_logprobs_equal_the_samplers(model, params, rollout):
  """Teacher-forced log-probs at the sampling temperature (M-RoPE positions after the prompt, image slots
  shared by a prompt's G rows) equal what the sampler recorded, fp32."""
  _, gen, batch = rollout
  assert (gen.lengths > 1).any()  # something beyond the first token to compare
  lp = jax.jit(lambda p, b: losses_lib.completion_logprobs(model.merge(p), b, temperature=TEMP))(params, batch)
  mask = batch["completion_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(lp)[mask], gen.logprobs[mask], atol=2e-5, rtol=0)
  assert (np.asarray(lp)[~mask] == 0).all()
  # at another temperature they differ: the temperature really enters
  lp1 = jax.jit(lambda p, b: losses_lib.completion_logprobs(model.merge(p), b, temperature=1.0))(params, batch)
  assert np.abs(np.asarray(lp1)[mask] - gen.logprobs[mask]).max() > 1e-3


def test_entropy_matches_full_softmax(model, params, rollout):
  _, _, batch = rollout
  m = model.merge(params)
  h = m.completion_hidden_states(batch["prompt_ids"], batch["prompt_mask"], batch["pixel_values"],
                                 batch["image_grid_thw"], batch["completion_ids"])
  _, ent = losses_lib.chunked_logprobs(h, m.head_weight(), batch["completion_ids"], batch["completion_mask"],
                                       chunk_size=4, temperature=TEMP, with_entropy=True)
  logits = np.asarray(m.logits(h), np.float64) / TEMP
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ref = -(p * np.log(p)).sum(-1)
  mask = batch["completion_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(ent)[mask], ref[mask], rtol=1e-4)


def _optimizer(lr=1e-2, name="adamw"):
  c = ml_collections.ConfigDict(dict(
      name=name, lr=lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, max_grad_norm=0.0, schedule="constant",
      warmup_frac=0.0, warmup_steps=0, end_lr_frac=0.0, mu_dtype="",
      group_lr=ml_collections.ConfigDict(dict(vision=-1.0, merger=-1.0, llm=-1.0)), freeze=""))
  return c


def _loss_fn(**kw):
  loss = losses_lib.get_loss("grpo")
  kwargs = dict(loss_type="grpo", temperature=TEMP, chunk_size=8, **kw)
  return lambda m, b, r: loss(m, b, r, **kwargs)


def test_updates_raise_logprobs_of_positive_advantages(model, params, rollout):
  _, gen, batch = rollout
  adv = np.tile(np.asarray([1.0, -1.0, 0.0], np.float32), 4)  # per prompt: one up, one down, one untouched
  b = {**batch, "advantages": adv}
  opt = optim_lib.make_optimizer(_optimizer(lr=3e-3), model.abstract_params, 10)
  state = state_lib._new_state(params, opt, jax.random.PRNGKey(0))
  step = jax.jit(state_lib.make_train_step(model, opt, _loss_fn()))
  score = jax.jit(lambda p, bb: losses_lib.completion_logprobs(model.merge(p), bb, temperature=TEMP))
  before = np.asarray(score(state.params, b)).sum(1)
  for _ in range(4):
    state, metrics = step(state, b)
  after = np.asarray(score(state.params, b)).sum(1)
  delta = after - before
  assert (delta[adv > 0] > 0).all(), delta
  assert (delta[adv < 0] < 0).all(), delta
  assert float(metrics["sampling/logprob_abs_diff"]) > 0  # the policy moved away from the sampler


def test_microbatches_equal_one_batch(model, params, rollout):
  """grad_accum 4 (one prompt and its G completions per microbatch) = the whole batch, for every loss type."""
  _, _, batch = rollout
  b = {**batch, "advantages": np.linspace(-1, 1, 4 * G).astype(np.float32)}
  for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
    kw = dict(loss_type=loss_type, max_completion_length=NEW, beta=0.0)
    loss = losses_lib.get_loss("grpo")
    f = lambda m, bb, r: loss(m, bb, r, temperature=TEMP, chunk_size=8, **kw)
    opt = optim_lib.make_optimizer(_optimizer(lr=0.0), model.abstract_params, 10)
    st = state_lib._new_state(params, opt, jax.random.PRNGKey(0))
    _, m1 = jax.jit(state_lib.make_train_step(model, opt, f))(st, b)
    micro = grpo_trainer.split_microbatches({k: np.asarray(v) for k, v in b.items()}, 4)
    _, m3 = jax.jit(state_lib.make_train_step(model, opt, f, grad_accum=4))(st, micro)
    for key in ("loss", "grad_norm", "entropy", "clip_ratio/region_mean"):
      np.testing.assert_allclose(float(m3[key]), float(m1[key]), rtol=2e-5, atol=1e-7, err_msg=f"{loss_type} {key}")


def test_mesh_gradients_equal_one_device(model, params, rollout):
  """The GRPO loss's gradients on a (2,2,2) mesh (rows over data x fsdp, weights over fsdp/tensor) equal one
  device's, relative to the gradient's norm."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  _, _, batch = rollout
  b = {k: np.asarray(v) for k, v in batch.items() if k != "sampler_logps"}
  n = 4 * G
  b["advantages"] = np.linspace(-1, 1, n).astype(np.float32)
  b["ref_logps"] = np.where(b["completion_mask"], -2.0, 0.0).astype(np.float32)
  loss = _loss_fn(beta=0.04)

  def grads(p, bb):
    return jax.grad(lambda q: loss(model.merge(q), bb, None).loss)(p)

  ref = jax.jit(grads)(params, b)
  mesh = sharding_lib.make_mesh(2, 2, 2)
  psh = model.param_shardings(mesh)
  bsh = state_lib.batch_shardings(mesh, b)
  with sharding_lib.use_mesh(mesh):
    got = jax.jit(grads, in_shardings=(psh, bsh))(jax.device_put(params, psh), jax.device_put(b, bsh))
  norm = float(jnp.sqrt(sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree.leaves(ref))))
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    assert float(jnp.max(jnp.abs(x - y))) <= 1e-5 * norm


def test_reward_and_completion_stats():
  total = np.asarray([1.0, 0.0, 1.0, 1.0, 0.5, 0.5], np.float32)  # 3 groups of 2
  comps = {"accuracy": np.asarray([1, 0, 1, 1, 0, 0], np.float32)}
  s = grpo_rewards.reward_stats(total, comps, 2)
  assert s["reward"] == pytest.approx(4.0 / 6)
  assert s["frac_reward_zero_std"] == pytest.approx(2 / 3)
  assert s["reward_std"] == pytest.approx(np.std([1, 0], ddof=1) / 3)
  assert s["rewards/accuracy/mean"] == pytest.approx(0.5)
  lengths = np.asarray([5, 10, 10, 3], np.int32)
  trunc = np.asarray([False, True, True, False])
  c = grpo_rewards.completion_stats(lengths, trunc)
  assert c["completions/clipped_ratio"] == 0.5 and c["completions/mean_terminated_length"] == 4.0
  assert (c["completions/min_length"], c["completions/max_length"]) == (3, 10)


def test_health_monitor_warns_once_per_condition():
  cfg = ml_collections.ConfigDict({"grpo": {"max_new_tokens": 64}})
  mon = grpo_monitor.Monitor(cfg, patience=2, baseline_steps=2)
  ok = {"frac_reward_zero_std": 0.2, "completions/clipped_ratio": 0.0, "rewards/format/mean": 0.9, "kl": 0.001,
        "clip_ratio/region_mean": 0.0, "completions/mean_length": 40.0}
  assert mon.update(1, ok) == [] and mon.update(2, ok) == []
  assert mon.update(3, {**ok, "frac_reward_zero_std": 1.0}) == []
  assert mon.update(4, {**ok, "frac_reward_zero_std": 1.0}) == ["no_signal"]
  assert mon.update(5, {**ok, "frac_reward_zero_std": 1.0}) == []  # once
  assert mon.update(6, {**ok, "completions/clipped_ratio": 0.9}) == ["truncated"]
  assert mon.update(7, {**ok, "kl": 0.5}) == ["kl_jump"]
  assert mon.update(8, {**ok, "clip_ratio/region_mean": 0.5}) == ["clip_jump"]
  assert mon.update(9, {**ok, "completions/mean_length": 10.0}) == ["length_collapse"]
  mon.update(10, {**ok, "rewards/format/mean": 0.0})
  assert mon.update(11, {**ok, "rewards/format/mean": 0.0}) == ["no_format"]
  assert mon.warned == ["no_signal", "truncated", "kl_jump", "clip_jump", "length_collapse", "no_format"]
