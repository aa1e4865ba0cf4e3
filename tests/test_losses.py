"""The chunked log-prob / cross-entropy equals the plain full-logits computation, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tinyrs_jax.models import Qwen2VL, get_preset
from tinyrs_jax.train import input as input_lib
from tinyrs_jax.train import losses


def _rand(seed, b=3, l=37, d=16, v=50):
  rng = np.random.default_rng(seed)
  h = jnp.asarray(rng.standard_normal((b, l, d)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((d, v)) * 0.3, jnp.float32)
  t = jnp.asarray(rng.integers(0, v, (b, l)), jnp.int32)
  m = rng.random((b, l)) < 0.3
  m[1] = False  # a row with nothing selected
  m[2, -1] = True  # the last position selected
  return h, w, t, jnp.asarray(m)


@pytest.mark.parametrize("chunk", [1, 5, 8, 37, 64])
def test_chunked_logprobs_equal_plain(chunk):
  h, w, t, m = _rand(0)
  got = losses.chunked_logprobs(h, w, t, m, chunk_size=chunk)
  ref = losses.plain_logprobs(jnp.einsum("bld,dv->blv", h, w), t, m)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(got)[~np.asarray(m)] == 0)


def test_chunked_gradients_equal_plain():
  h, w, t, m = _rand(1)
  g = jnp.asarray(np.random.default_rng(2).standard_normal(t.shape), jnp.float32)  # any cotangent

  def chunked(h, w):
    return jnp.sum(g * losses.chunked_logprobs(h, w, t, m, chunk_size=8))

  def plain(h, w):
    return jnp.sum(g * losses.plain_logprobs(jnp.einsum("bld,dv->blv", h, w), t, m))

  (gh, gw), (rh, rw) = jax.grad(chunked, (0, 1))(h, w), jax.grad(plain, (0, 1))(h, w)
  np.testing.assert_allclose(np.asarray(gh), np.asarray(rh), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gw), np.asarray(rw), rtol=1e-4, atol=1e-6)


def test_nothing_selected_gives_zero_and_zero_grad():
  h, w, t, m = _rand(3)
  m = jnp.zeros_like(m)
  val, (gh, gw) = jax.value_and_grad(lambda h, w: losses.chunked_logprobs(h, w, t, m, chunk_size=4).sum(),
                                     (0, 1))(h, w)
  assert float(val) == 0.0 and not np.any(np.asarray(gh)) and not np.any(np.asarray(gw))


@pytest.fixture(scope="module")
def tiny_model_and_batch():
  cfg = get_preset("tiny")
  model = Qwen2VL(cfg, rngs=nnx.Rngs(0))
  batch = {k: jnp.asarray(v) for k, v in input_lib.random_batch(cfg, batch_size=3, length=32, seed=4).items()}
  return model, batch


def test_next_token_ce_equals_plain_model_loss(tiny_model_and_batch):
  """The registered SFT loss: sum of -log p(token i | < i) over loss_mask[i] = 1, weight = their count."""
  model, batch = tiny_model_and_batch
  out = losses.get_loss("next_token_ce")(model, batch, None, chunk_size=8)
  h = model.hidden_states(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                          batch["image_grid_thw"])
  logits = np.asarray(model.logits(h), np.float64)  # (B, L, V): fine at this size
  ids, lm = np.asarray(batch["input_ids"]), np.asarray(batch["loss_mask"])
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
  nll, count = 0.0, 0
  for b in range(ids.shape[0]):
    for i in range(1, ids.shape[1]):
      if lm[b, i]:
        nll -= logp[b, i - 1, ids[b, i]]
        count += 1
  assert float(out.weight) == count
  np.testing.assert_allclose(float(out.loss), nll, rtol=1e-5)


def test_next_token_ce_gradient_equals_plain(tiny_model_and_batch):
  model, batch = tiny_model_and_batch
  graphdef, params = nnx.split(model, nnx.Param)
  targets, mask = losses.next_token_targets(batch)

  def chunked(p):
    return losses.next_token_ce(nnx.merge(graphdef, p), batch, chunk_size=5).loss

  def plain(p):
    m = nnx.merge(graphdef, p)
    return -losses.plain_logprobs(m.logits(losses.hidden_states(m, batch)), targets, mask).sum()

  ga, gb = jax.grad(chunked)(params), jax.grad(plain)(params)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)


def test_registry():
  assert "next_token_ce" in losses.loss_names()
  with pytest.raises(KeyError, match="unknown loss"):
    losses.get_loss("nope")
