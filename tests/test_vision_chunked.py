"""Real-scale memory fixes: query-chunked vision and decoder attention (= dense = transformers), the per-row image
gather on a mesh, generation's last position before the repeat and the donated cache, restoring onto a mesh, skip steps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tinyrs_jax  # noqa: E402
from hf_reference import build_hf_model, random_image_batch, save_hf_model  # noqa: E402
from tinyrs_jax import sharding as sharding_lib  # noqa: E402
from tinyrs_jax.models import batch as batch_lib  # noqa: E402
from tinyrs_jax.models import decoder, vision  # noqa: E402

# Patch counts 16..240: with a chunk of 16 queries every image is split in 1..15 chunks, the last one padded
# where P is not a multiple of the chunk (P = 64 slots of 60 patches: 4 chunks of 16, the last one padded).
GRIDS = [(1, 4, 4), (1, 6, 10), (1, 12, 20), (1, 2, 8)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  hf = build_hf_model(seed=11, tie=True)
  return hf, tinyrs_jax.load(save_hf_model(hf, str(tmp_path_factory.mktemp("hf"))))


def _inputs():
  return random_image_batch(np.random.default_rng(4), GRIDS, [3, 5], [2, 6], [[0, 1], [2, 3]])


def _vision(model, static, chunk, monkeypatch):
  monkeypatch.setattr(vision, "ATTN_QUERY_CHUNK", chunk)
  f = jax.jit(lambda pv, g: model.visual(pv, g))  # traced anew per chunk size (the constant is read at trace)
  return np.asarray(f(jnp.asarray(static["pixel_values"]), jnp.asarray(static["image_grid_thw"])))


def test_chunked_attention_equals_dense_and_transformers(pair, monkeypatch):
  hf, ours = pair
  inp = _inputs()
  static = batch_lib.pad_hf_inputs(inp["input_ids"], inp["attention_mask"], inp["pixel_values"],
                                   inp["image_grid_thw"])
  p = static["pixel_values"].shape[1]
  dense = _vision(ours, static, p, monkeypatch)
  for chunk in (16, 24, 100):  # divides P, does not (padded queries), a few chunks
    chunked = _vision(ours, static, chunk, monkeypatch)
    np.testing.assert_allclose(chunked, dense, rtol=1e-5, atol=1e-5)
  with torch.no_grad():
    ref = hf.model.get_image_features(torch.from_numpy(inp["pixel_values"]),
                                      torch.from_numpy(inp["image_grid_thw"])).pooler_output
  for j, r in enumerate(ref):
    r = r.numpy()
    assert np.abs(chunked[j, :r.shape[0]] - r).max() / np.abs(r).max() <= 2e-4


def test_chunked_attention_gradient_equals_dense(monkeypatch):
  """The chunks are rematerialised in the backward pass: same gradients as the dense attention."""
  rng = np.random.default_rng(0)
  i, h, p, d = 2, 2, 40, 8
  q, k, v = (jnp.asarray(rng.normal(size=(i, h, p, d)), jnp.float32) for _ in range(3))
  frame = jnp.zeros((i, p), jnp.int32)
  valid = jnp.asarray(np.arange(p)[None] < np.array([[40], [27]]))
  loss = lambda chunk: jax.grad(lambda a, b, c: jnp.sum(jnp.sin(  # noqa: E731
      vision.vision_attention(a, b, c, frame, valid, jnp.float32, chunk=chunk))), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(loss(64), loss(16)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_chunked_attention_memory_is_linear_in_patches():
  """No (heads, P, P) buffer: the compiled temporaries of a 4096-patch slot stay far below dense scores."""
  i, h, p, d = 1, 4, 4096, 16
  x = jax.ShapeDtypeStruct((i, h, p, d), jnp.float32)
  fr = jax.ShapeDtypeStruct((i, p), jnp.int32)
  va = jax.ShapeDtypeStruct((i, p), jnp.bool_)
  f = jax.jit(lambda a, b, c, fr, va: vision.vision_attention(a, b, c, fr, va, jnp.float32, chunk=256))
  temps = f.lower(x, x, x, fr, va).compile().memory_analysis().temp_size_in_bytes
  dense_scores = i * h * p * p * 4
  assert temps < dense_scores / 4, (temps, dense_scores)


def _logits(model, static, chunk, monkeypatch):
  monkeypatch.setattr(decoder, "ATTN_QUERY_CHUNK", chunk)
  f = jax.jit(lambda *b: model.logits(model.hidden_states(*b)))  # traced anew per chunk size
  return np.asarray(f(*(jnp.asarray(static[k]) for k in ("input_ids", "attention_mask", "pixel_values",
                                                         "image_grid_thw"))))


def test_chunked_decoder_attention_equals_dense_and_transformers(pair, monkeypatch):
  """Training, prefill and GRPO scoring at real lengths attend in query chunks: the model's logits with chunks of
  8 or 13 query rows (13: the last one padded) equal the dense ones and transformers'."""
  from hf_reference import hf_forward
  hf, ours = pair
  inp = _inputs()
  static = batch_lib.pad_hf_inputs(inp["input_ids"], inp["attention_mask"], inp["pixel_values"],
                                   inp["image_grid_thw"], pad_token_id=0, patch_dim=ours.cfg.vision.patch_dim)
  n = static.pop("length")
  length = static["input_ids"].shape[1]
  assert length > 26
  dense = _logits(ours, static, length, monkeypatch)
  for chunk in (8, 13):
    np.testing.assert_allclose(_logits(ours, static, chunk, monkeypatch), dense, rtol=1e-5, atol=1e-5)
  ref = hf_forward(hf, inp)
  mask = inp["attention_mask"].astype(bool)
  got = _logits(ours, static, 13, monkeypatch)[:, :n]
  assert np.abs(got[mask] - ref[mask]).max() / np.abs(ref[mask]).max() <= 2e-4


def test_chunked_decoder_attention_gradient_and_cache_shapes():
  """Against a cache longer than the queries (prefill into a preallocated cache), left padding and grouped KV
  heads: chunked = dense, values and gradients (the chunks are rematerialised in the backward pass)."""
  rng = np.random.default_rng(1)
  b, l, s, h, kvh, d = 2, 21, 32, 4, 2, 8
  q = jnp.asarray(rng.normal(size=(b, l, h, d)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, s, kvh, d)), jnp.float32) for _ in range(2))
  valid = np.arange(s)[None] >= np.array([[0], [5]])  # row 1 left-padded by 5
  allowed = jnp.asarray((np.arange(s)[None, None] <= np.arange(l)[None, :, None]) & valid[:, None])
  att = lambda chunk: lambda a, b_, c: decoder.gqa_attention(a, b_, c, allowed, jnp.float32, chunk=chunk)  # noqa
  np.testing.assert_allclose(np.asarray(att(5)(q, k, v)), np.asarray(att(64)(q, k, v)), rtol=1e-6, atol=1e-6)
  grads = [jax.grad(lambda a, b_, c: jnp.sum(jnp.sin(att(chunk)(a, b_, c))), argnums=(0, 1, 2))(q, k, v)
           for chunk in (64, 7)]
  for a, b_ in zip(*grads):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b_), rtol=1e-5, atol=1e-6)


def test_chunked_decoder_attention_memory_is_linear_in_length():
  """No (B, H, L, L) scores: a 4096-token sequence's compiled temporaries stay far below its dense fp32 scores."""
  b, l, h, kvh, d = 1, 4096, 4, 2, 16
  q = jax.ShapeDtypeStruct((b, l, h, d), jnp.float32)
  kv = jax.ShapeDtypeStruct((b, l, kvh, d), jnp.float32)
  allowed = jax.ShapeDtypeStruct((b, l, l), jnp.bool_)
  f = jax.jit(lambda a, b_, c, m: decoder.gqa_attention(a, b_, c, m, jnp.float32, chunk=256))
  temps = f.lower(q, kv, kv, allowed).compile().memory_analysis().temp_size_in_bytes
  dense_scores = b * h * l * l * 4
  assert temps < dense_scores / 4, (temps, dense_scores)


def test_image_gather_on_a_mesh_equals_the_global_one(pair):
  """On a mesh the features are gathered per row from the row's own slots (the pipeline layout), equal to the
  gather from all slots; a batch that breaks the layout there gets NaN, not another row's image."""
  _, ours = pair
  inp = _inputs()
  static = batch_lib.pad_hf_inputs(inp["input_ids"], inp["attention_mask"], inp["pixel_values"],
                                   inp["image_grid_thw"])
  static.pop("length")
  from tinyrs_jax.sampling.generate import rows_own_slots
  rows = rows_own_slots(static, ours.cfg.image_token_id, ours.cfg.vision.merge_unit)
  assert rows["pixel_values"].shape[0] == 2 * 2  # 2 rows x 2 slots
  ref = np.asarray(ours.embed(*(jnp.asarray(static[k]) for k in ("input_ids", "pixel_values", "image_grid_thw"))))
  mesh = sharding_lib.make_mesh(2, 1, 1, devices=jax.devices()[:2]) if jax.device_count() >= 2 else \
      sharding_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  with sharding_lib.use_mesh(mesh):
    f = jax.jit(lambda a, b, c: ours.embed(a, b, c))
    got = np.asarray(f(*(jnp.asarray(rows[k]) for k in ("input_ids", "pixel_values", "image_grid_thw"))))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5)  # sharded matmuls: summation order
    # Hugging Face's packed layout with one image in row 0 and three in row 1: row 1's first image sits in
    # row 0's slots (4 slots, 2 per row), which the per-row gather cannot reach: NaN there, never a wrong image.
    two = random_image_batch(np.random.default_rng(5), GRIDS, [3, 5], [2, 6], [[0], [1, 2, 3]])
    packed = batch_lib.pad_hf_inputs(two["input_ids"], two["attention_mask"], two["pixel_values"],
                                     two["image_grid_thw"])
    assert packed["pixel_values"].shape[0] == 4
    out = np.asarray(f(*(jnp.asarray(packed[k]) for k in ("input_ids", "pixel_values", "image_grid_thw"))))
  image = packed["input_ids"] == ours.cfg.image_token_id
  assert np.isnan(out[1][image[1]]).any() and not np.isnan(out[0]).any()
  assert not np.isnan(np.asarray(ours.embed(*(jnp.asarray(packed[k]) for k in (
      "input_ids", "pixel_values", "image_grid_thw"))))).any()  # without a mesh: the global gather


def test_generate_on_a_mesh_with_flat_images_equals_without(pair):
  _, ours = pair
  inp = _inputs()
  plain = tinyrs_jax.generate(ours, inp, max_new_tokens=6, temperature=1.0, seed=2, num_samples=2)
  n = 2 if jax.device_count() >= 2 else 1
  mesh = sharding_lib.make_mesh(n, 1, 1, devices=jax.devices()[:n])
  meshed = tinyrs_jax.generate(ours, inp, max_new_tokens=6, temperature=1.0, seed=2, num_samples=2, mesh=mesh)
  np.testing.assert_array_equal(meshed.tokens, plain.tokens)
  np.testing.assert_allclose(meshed.logprobs, plain.logprobs, atol=1e-5)


def test_decode_scanning_the_stacked_layers_equals_the_unrolled_one(pair):
  """TPU / GPU decode (a scan over the stacked weights and cache, the cache donated) and the CPU one (weights
  sliced per layer once) sample the same tokens."""
  from flax import nnx

  from tinyrs_jax.sampling import generate as gen_lib
  _, ours = pair
  static = gen_lib.left_pad_prompts(_inputs(), pad_token_id=0, patch_dim=1176)
  graphdef, state = nnx.split(ours)
  scal = (jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0))
  outs = []
  for unroll in (True, False):
    cache, first, lp, pos = gen_lib.prefill(graphdef, state, *(jnp.asarray(static[k]) for k in (
        "input_ids", "attention_mask", "pixel_values", "image_grid_thw")), jax.random.key(1), *scal,
        cache_size=static["input_ids"].shape[1] + 16, num_samples=2, mode="sample")
    fn = gen_lib.decode_loop_unrolled if unroll else gen_lib.decode_loop
    outs.append(jax.device_get(fn(graphdef, state, cache, first, lp, pos, jnp.int32(static["input_ids"].shape[1]),
                                  jnp.int32(12), jax.random.key(2), *scal, jnp.asarray([-1], jnp.int32),
                                  jnp.int32(0), buffer=16, mode="sample", unroll_layers=unroll)))
    if not unroll:
      assert cache.k.is_deleted()  # donated into the decode loop
  np.testing.assert_array_equal(outs[0][0], outs[1][0])
  np.testing.assert_allclose(outs[0][1], outs[1][1], atol=1e-5)


def test_load_model_restores_onto_the_mesh(pair, tmp_path):
  """orbax_io.load_model(mesh=...) puts every parameter in its logical sharding on the mesh (no device-0 copy),
  with the same values as the one-device load."""
  from flax import nnx

  from tinyrs_jax.checkpoint import orbax_io
  _, ours = pair
  wd = str(tmp_path / "run")
  orbax_io.write_marker(wd, ours.cfg)
  import orbax.checkpoint as ocp
  mngr = orbax_io.checkpoint_manager(wd, async_save=False)
  mngr.save(3, args=ocp.args.Composite(params=ocp.args.StandardSave(nnx.state(ours, nnx.Param).to_pure_dict())))
  mngr.close()
  n = min(jax.device_count(), 4)
  mesh = sharding_lib.make_mesh(1, n, 1, devices=jax.devices()[:n])
  one = orbax_io.load_model(wd)
  meshed = orbax_io.load_model(wd, mesh=mesh)
  want = sharding_lib.state_shardings(nnx.state(meshed, nnx.Param), mesh)
  got_leaves = jax.tree.leaves(nnx.state(meshed, nnx.Param))
  for x, s, y in zip(got_leaves, jax.tree.leaves(want), jax.tree.leaves(nnx.state(one, nnx.Param))):
    assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  emb = nnx.state(meshed, nnx.Param)["embed_tokens"].get_value()
  if n > 1:
    assert len(emb.sharding.device_set) == n and "fsdp" in str(emb.sharding.spec)


def test_a_step_without_supervised_tokens_is_not_a_step():
  """Neither the step counter nor the schedule advance on a skipped batch: the logged lr stays the applied one."""
  import ml_collections

  from tinyrs_jax.models.presets import get_preset
  from tinyrs_jax.train import input as input_lib
  from tinyrs_jax.train import losses
  from tinyrs_jax.train import optimizer as optim_lib
  from tinyrs_jax.train import state as state_lib
  cfg = get_preset("tiny")
  oc = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, max_grad_norm=1.0, schedule="cosine",
      warmup_frac=0.0, warmup_steps=2, end_lr_frac=0.0, mu_dtype="",
      group_lr=ml_collections.ConfigDict(dict(vision=-1.0, merger=-1.0, llm=-1.0)), freeze=""))
  mesh = sharding_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  model = state_lib.make_model(cfg)
  opt = optim_lib.make_optimizer(oc, model.abstract_params, total_steps=10)
  sh = state_lib.state_shardings(model, opt, mesh)
  step = state_lib.CompiledStep(state_lib.make_train_step(
      model, opt, lambda m, b, r: losses.next_token_ce(m, b, r, chunk_size=8)), mesh, sh, donate=True)
  hb = input_lib.random_batch(cfg, batch_size=2, length=16, seed=0)
  put = lambda b: input_lib.to_global(b, state_lib.batch_shardings(mesh, b))  # noqa: E731
  empty = dict(hb, loss_mask=np.zeros_like(hb["loss_mask"]))
  a = state_lib.init_state(model, opt, sh, 0)
  a, m1 = step(a, put(hb))
  a, m_skip = step(a, put(empty))
  assert float(m_skip["skipped"]) == 1.0 and int(a.step) == 1
  a, m2 = step(a, put(hb))
  b = state_lib.init_state(model, opt, sh, 0)
  b, _ = step(b, put(hb))
  b, m2_ref = step(b, put(hb))  # the same run without the skipped batch
  assert int(a.step) == int(b.step) == 2
  lrs = lambda m: {k: float(v) for k, v in m.items() if k.startswith("lr/")}  # noqa: E731
  assert lrs(m2) == lrs(m2_ref) and lrs(m_skip) == lrs(m2)  # the skipped batch logs the lr it did not apply
  for x, y in zip(jax.tree.leaves(jax.device_get(a.params)), jax.tree.leaves(jax.device_get(b.params))):
    np.testing.assert_array_equal(x, y)
