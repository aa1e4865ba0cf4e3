"""The Flax model against transformers' Qwen2VLForConditionalGeneration on tiny random checkpoints."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

import tinyrs_jax  # noqa: E402
from hf_reference import build_hf_model, hf_forward, random_image_batch, save_hf_model  # noqa: E402
from tinyrs_jax.models import batch as batch_lib  # noqa: E402

TOL = 2e-4
GRIDS = [(1, 4, 4), (1, 6, 8), (1, 4, 2), (1, 10, 6)]


def rel_err(ours, ref, mask=None):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if mask is not None:
    ours, ref = ours[mask], ref[mask]
  return np.abs(ours - ref).max() / np.abs(ref).max()


@pytest.fixture(scope="module", params=["tied", "untied"])
def pair(request, tmp_path_factory):
  hf = build_hf_model(seed=3, tie=request.param == "tied")
  path = save_hf_model(hf, str(tmp_path_factory.mktemp(request.param)))
  return hf, tinyrs_jax.load(path)


CASES = {
    "one_image": dict(grids=GRIDS, before=[4], after=[5], rows=[[0]]),
    "left_padded_mixed_sizes": dict(grids=GRIDS, before=[3, 6, 2], after=[4, 1, 9], rows=[[0], [1], [3]]),
    "text_only_row_mixed": dict(grids=GRIDS, before=[3, 12], after=[4, 20], rows=[[1], []]),
    "two_images_in_a_row": dict(grids=GRIDS, before=[3, 2], after=[2, 3], rows=[[0, 2], [3]]),
}


def make_inputs(case, seed=0, padding_side="left"):
  c = CASES[case]
  return random_image_batch(np.random.default_rng(seed), c["grids"], c["before"], c["after"], c["rows"],
                            padding_side=padding_side)


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match(pair, case):
  hf, ours = pair
  inp = make_inputs(case)
  ref = hf_forward(hf, inp)
  out = np.asarray(ours(**inp))
  assert out.shape == ref.shape
  assert rel_err(out, ref, inp["attention_mask"].astype(bool)) <= TOL


def test_right_padding_matches(pair):
  hf, ours = pair
  inp = make_inputs("left_padded_mixed_sizes", padding_side="right")
  mask = inp["attention_mask"].astype(bool)
  assert rel_err(ours(**inp), hf_forward(hf, inp), mask) <= TOL


def test_text_only_batch(pair):
  hf, ours = pair
  ids = np.random.default_rng(1).integers(3, 240, (2, 11))
  inp = dict(input_ids=ids, attention_mask=np.ones_like(ids))
  assert rel_err(ours(**inp), hf_forward(hf, inp)) <= TOL


def _static(ours, inp):
  b = batch_lib.pad_hf_inputs(inp["input_ids"], inp["attention_mask"], inp["pixel_values"], inp["image_grid_thw"])
  b.pop("length")
  return {k: jnp.asarray(v) for k, v in b.items()}


@pytest.mark.parametrize("case", ["two_images_in_a_row", "left_padded_mixed_sizes"])
def test_vision_features_match(pair, case):
  hf, ours = pair
  inp = make_inputs(case)
  with torch.no_grad():
    ref = hf.model.get_image_features(torch.from_numpy(inp["pixel_values"]),
                                      torch.from_numpy(inp["image_grid_thw"])).pooler_output
  b = _static(ours, inp)
  feats = np.asarray(ours.visual(b["pixel_values"], b["image_grid_thw"]))
  for j, r in enumerate(ref):
    assert rel_err(feats[j, :r.shape[0]], r.numpy()) <= TOL


@pytest.mark.parametrize("case", sorted(CASES))
def test_positions_and_merged_embeddings_match(pair, case):
  hf, ours = pair
  inp = make_inputs(case)
  t = {k: torch.from_numpy(v) for k, v in inp.items() if v is not None}
  pos_ref, delta_ref = hf.model.get_rope_index(t["input_ids"], t["mm_token_type_ids"], t["image_grid_thw"],
                                               attention_mask=t["attention_mask"])
  b = _static(ours, inp)
  length = inp["input_ids"].shape[1]
  pos, delta = ours.positions(b["input_ids"], b["attention_mask"], b["image_grid_thw"])
  np.testing.assert_array_equal(np.asarray(pos)[:, :, :length], pos_ref.numpy())
  np.testing.assert_array_equal(np.asarray(delta), delta_ref.numpy()[:, 0])

  captured = {}
  hook = hf.model.language_model.register_forward_hook(
      lambda mod, args, kwargs, out: captured.update(e=kwargs["inputs_embeds"]), with_kwargs=True)
  try:
    hf_forward(hf, inp)
  finally:
    hook.remove()
  emb = np.asarray(ours.embed(b["input_ids"], b["pixel_values"], b["image_grid_thw"]))[:, :length]
  assert rel_err(emb, captured["e"].numpy()) <= TOL


def test_flat_layout_bf16_shards(tmp_path):
  """A checkpoint as the hub publishes it: flat config.json, bf16, several shards with an index."""
  import json
  hf = build_hf_model(seed=5, tie=True)
  path = save_hf_model(hf, str(tmp_path / "ckpt"), dtype="bfloat16", max_shard_size="60KB")
  assert (tmp_path / "ckpt" / "model.safetensors.index.json").exists()
  cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
  text = cfg.pop("text_config")
  rope = text.pop("rope_parameters")
  flat = {**cfg, **{k: v for k, v in text.items() if k not in ("model_type", "dtype")},
          "rope_theta": rope["rope_theta"], "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]},
          "torch_dtype": "bfloat16"}
  flat["vision_config"]["in_chans"] = flat["vision_config"].pop("in_channels")
  (tmp_path / "ckpt" / "config.json").write_text(json.dumps(flat))
  ours = tinyrs_jax.load(path, dtype="float32")
  hf32 = build_hf_model(seed=5, tie=True)  # fp32 reference (rotary buffers stay fp32) on bf16-rounded weights
  with torch.no_grad():
    for p in hf32.parameters():
      p.copy_(p.bfloat16().float())
  inp = make_inputs("left_padded_mixed_sizes")
  assert rel_err(ours(**inp), hf_forward(hf32, inp), inp["attention_mask"].astype(bool)) <= TOL


def test_bf16_compute_close(pair):
  """bf16 compute with fp32 weights: documented tolerance 5e-2 relative to the fp32 reference."""
  hf, ours32 = pair
  from flax import nnx
  from tinyrs_jax.models.qwen2_vl import Qwen2VL
  graphdef, state = nnx.split(ours32)
  ours = Qwen2VL(ours32.cfg, dtype="bfloat16", param_dtype="float32")
  nnx.update(ours, state)
  inp = make_inputs("one_image")
  assert rel_err(ours(**inp), hf_forward(hf, inp), inp["attention_mask"].astype(bool)) <= 5e-2
