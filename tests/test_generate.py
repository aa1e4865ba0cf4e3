"""Generation against transformers' generate, teacher-forced scoring, sampling filters, compiles, sharding."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import tinyrs_jax  # noqa: E402
from hf_reference import build_hf_model, random_image_batch, save_hf_model  # noqa: E402
from tinyrs_jax.sampling import generate as gen_lib  # noqa: E402

GRIDS = [(1, 4, 4), (1, 6, 8), (1, 4, 2), (1, 8, 4)]
CASES = {
    "one_image": dict(before=[4], after=[5], rows=[[0]]),
    "left_padded_batch": dict(before=[3, 6, 2], after=[4, 1, 9], rows=[[0], [1], [3]]),
    "two_images_in_a_row": dict(before=[3, 2], after=[2, 3], rows=[[0, 2], [3]]),
    "text_only": dict(before=[7, 3], after=[4, 2], rows=[[], []]),
}
NEW = 12


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  hf = build_hf_model(seed=11)
  return hf, tinyrs_jax.load(save_hf_model(hf, str(tmp_path_factory.mktemp("g"))))


def inputs(case, seed=0):
  c = CASES[case]
  return random_image_batch(np.random.default_rng(seed), GRIDS, c["before"], c["after"], c["rows"])


def hf_generate(hf, inp, eos=None):
  kw = {k: torch.from_numpy(v) for k, v in inp.items() if v is not None}
  if inp["image_grid_thw"] is None:
    kw.pop("mm_token_type_ids")
  hf.model.rope_deltas = None
  with torch.no_grad():
    out = hf.generate(**kw, max_new_tokens=NEW, do_sample=False, eos_token_id=eos, pad_token_id=0,
                      output_logits=True, return_dict_in_generate=True)
  length = inp["input_ids"].shape[1]
  logits = np.stack([l.float().numpy() for l in out.logits], 1)  # (B, steps, V)
  return out.sequences[:, length:].numpy(), logits


def first_tie(logits, atol=1e-4):
  """Per row, the first step whose top-two logits are within atol (a numerical tie), else the row length."""
  top2 = np.sort(logits, axis=-1)[..., -2:]
  tie = (top2[..., 1] - top2[..., 0]) < atol
  return [int(np.argmax(r)) if r.any() else len(r) for r in tie]


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_tokens_and_logprobs_match_hf(pair, case):
  hf, ours = pair
  inp = inputs(case)
  ref_tokens, ref_logits = hf_generate(hf, inp)
  g = tinyrs_jax.generate(ours, inp, max_new_tokens=NEW)
  assert g.tokens.shape == (inp["input_ids"].shape[0], NEW)
  ref_lp = np.take_along_axis(torch.log_softmax(torch.from_numpy(ref_logits), -1).numpy(),
                              ref_tokens[..., None], -1)[..., 0]
  for r, upto in enumerate(first_tie(ref_logits)):
    np.testing.assert_array_equal(g.tokens[r, :upto + 1], ref_tokens[r, :upto + 1])
    np.testing.assert_allclose(g.logprobs[r, :upto + 1], ref_lp[r, :upto + 1], atol=2e-4)


def test_stop_tokens_finish_rows(pair):
  hf, ours = pair
  inp = inputs("left_padded_batch")
  ref_tokens, _ = hf_generate(hf, inp)
  eos = int(ref_tokens[1, 3])  # a token row 1 emits at step 3: that row must stop there
  g = tinyrs_jax.generate(ours, inp, max_new_tokens=NEW, eos_token_ids=[eos])
  for r in range(g.tokens.shape[0]):
    hits = np.flatnonzero(ref_tokens[r] == eos)
    n = hits[0] + 1 if len(hits) else NEW
    assert g.lengths[r] == n
    np.testing.assert_array_equal(g.tokens[r, :n], ref_tokens[r, :n])
    assert (g.tokens[r, n:] == 0).all() and (g.logprobs[r, n:] == 0).all()


def test_rollout_logprobs_equal_teacher_forced_pass(pair):
  """What GRPO's training step recomputes: one forward over prompt + completion, M-RoPE included."""
  _, ours = pair
  inp = inputs("two_images_in_a_row")
  g = tinyrs_jax.generate(ours, inp, max_new_tokens=NEW, temperature=1.0, seed=3, num_samples=2)
  static = gen_lib.left_pad_prompts(inp, pad_token_id=0, patch_dim=1176)
  rep = lambda x: np.repeat(x, 2, axis=0)  # noqa: E731
  ids = np.concatenate([rep(static["input_ids"]), g.tokens], axis=1)
  mask = np.concatenate([rep(static["attention_mask"]), np.ones_like(g.tokens)], axis=1)
  # Each prompt's images appear once per sample row: repeat the slots in row order.
  n_img = [len(r) for r in CASES["two_images_in_a_row"]["rows"]]
  order = np.concatenate([np.arange(sum(n_img[:b]), sum(n_img[:b + 1])) for b in range(len(n_img)) for _ in range(2)])
  pv, thw = static["pixel_values"][order], static["image_grid_thw"][order]
  h = ours.hidden_states(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pv), jnp.asarray(thw))
  p = static["input_ids"].shape[1]
  logp = jax.nn.log_softmax(ours.logits(h[:, p - 1:-1]), axis=-1)
  tf = np.take_along_axis(np.asarray(logp), g.tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(g.logprobs, tf, atol=2e-4)


def test_num_samples_reuse_prefill(pair):
  _, ours = pair
  inp = inputs("left_padded_batch")
  one = tinyrs_jax.generate(ours, inp, max_new_tokens=NEW)
  many = tinyrs_jax.generate(ours, inp, max_new_tokens=NEW, num_samples=3)
  np.testing.assert_array_equal(many.tokens, np.repeat(one.tokens, 3, axis=0))


def test_sampling_reproducible_and_seed_dependent(pair):
  _, ours = pair
  inp = inputs("one_image")
  a = tinyrs_jax.generate(ours, inp, max_new_tokens=NEW, temperature=1.0, top_p=0.9, seed=5, num_samples=4)
  b = tinyrs_jax.generate(ours, inp, max_new_tokens=NEW, temperature=1.0, top_p=0.9, seed=5, num_samples=4)
  c = tinyrs_jax.generate(ours, inp, max_new_tokens=NEW, temperature=1.0, top_p=0.9, seed=6, num_samples=4)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.logprobs, b.logprobs)
  assert not np.array_equal(a.tokens, c.tokens)
  assert len({tuple(r) for r in a.tokens}) > 1  # samples of one prompt differ


def numpy_filter(logits, top_k, top_p):
  out = logits.copy()
  for r, row in enumerate(logits):
    order = np.argsort(-row, kind="stable")
    keep = np.zeros_like(row, bool)
    k = top_k if top_k > 0 else len(row)
    p = np.exp(row[order[:k]] - row[order[:k]].max())
    p /= p.sum()
    mass = 0.0
    for j, idx in enumerate(order[:k]):
      if j == 0 or mass < top_p:
        keep[idx] = True
      mass += p[j]
    out[r, ~keep] = -np.inf
  return out


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.7), (8, 0.5), (1, 1.0), (0, 0.05)])
def test_top_k_top_p_match_numpy(top_k, top_p):
  logits = np.random.default_rng(top_k).standard_normal((4, 64)).astype(np.float32) * 3
  ours = np.asarray(gen_lib.filter_logits(jnp.asarray(logits), jnp.int32(top_k), jnp.float32(top_p)))
  np.testing.assert_array_equal(np.isinf(ours), np.isinf(numpy_filter(logits, top_k, top_p)))


def test_same_bucket_never_recompiles(pair):
  _, ours = pair
  tinyrs_jax.generate(ours, inputs("one_image"), max_new_tokens=10, temperature=0.7, seed=1)
  before = gen_lib.compile_count()
  for seed, new, temp in [(2, 9, 0.5), (3, 13, 1.0), (4, 16, 0.9)]:  # 9..16 share a bucket, as do the prompts
    inp = inputs("one_image", seed=seed)
    tinyrs_jax.generate(ours, inp, max_new_tokens=new, temperature=temp, seed=seed)
  assert gen_lib.compile_count() == before


def test_sharded_generation_equals_single_device(pair):
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake) devices")
  from tinyrs_jax import sharding
  _, ours = pair
  inp = inputs("left_padded_batch")
  inp = {k: (np.concatenate([v, v[:1]]) if k not in ("pixel_values", "image_grid_thw") and v is not None else v)
         for k, v in inp.items()}  # 4 rows (row 0 repeated) so the batch divides the data axis
  n0 = int(np.prod(GRIDS[0]))
  inp["pixel_values"] = np.concatenate([inp["pixel_values"], inp["pixel_values"][:n0]])
  inp["image_grid_thw"] = np.concatenate([inp["image_grid_thw"], inp["image_grid_thw"][:1]])
  single = tinyrs_jax.generate(ours, inp, max_new_tokens=NEW, temperature=1.0, seed=2, num_samples=2)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  from flax import nnx
  on_mesh = sharding.shard_model(nnx.clone(ours), mesh)
  assert not on_mesh.decoder.layers.q_proj.kernel[...].sharding.is_fully_replicated
  sharded = tinyrs_jax.generate(on_mesh, inp, max_new_tokens=NEW, temperature=1.0, seed=2, num_samples=2, mesh=mesh)
  np.testing.assert_array_equal(single.tokens, sharded.tokens)
  np.testing.assert_allclose(single.logprobs, sharded.logprobs, atol=1e-5)


@pytest.mark.parametrize("case,rows", [("text_only", 2), ("one_image", 1), ("left_padded_batch", 3)])
def test_mesh_with_rows_that_do_not_divide_the_data_axes(pair, case, rows):
  """Few prompts (and empty or odd image slots) on a (4, 1, 2) mesh: replicated where they do not divide."""
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake) devices")
  from flax import nnx
  from tinyrs_jax import sharding
  _, ours = pair
  inp = inputs(case)
  assert inp["input_ids"].shape[0] == rows
  single = tinyrs_jax.generate(ours, inp, max_new_tokens=NEW, temperature=1.0, seed=4, num_samples=2)
  mesh = sharding.make_mesh(data=4, fsdp=1, tensor=2)
  on_mesh = sharding.shard_model(nnx.clone(ours), mesh)
  sharded = tinyrs_jax.generate(on_mesh, inp, max_new_tokens=NEW, temperature=1.0, seed=4, num_samples=2,
                                mesh=mesh)
  np.testing.assert_array_equal(single.tokens, sharded.tokens)


def test_eos_token_zero_is_a_stop_token(pair):
  _, ours = pair
  inp = inputs("one_image")
  free = tinyrs_jax.generate(ours, inp, max_new_tokens=NEW)
  stop = int(free.tokens[0, 2])
  g = tinyrs_jax.generate(ours, inp, max_new_tokens=NEW, eos_token_ids=stop)
  assert g.lengths[0] == int(np.flatnonzero(free.tokens[0] == stop)[0]) + 1
