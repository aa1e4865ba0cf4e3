"""HF folder ⇄ our params: bit-identical round trips, clear errors, transformers loads our exports."""
import dataclasses
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors import safe_open  # noqa: E402

import tinyrs_jax  # noqa: E402
from hf_reference import build_hf_model, hf_forward, random_image_batch, save_hf_model  # noqa: E402
from tinyrs_jax.checkpoint.hf import CheckpointMismatch  # noqa: E402
from tinyrs_jax.models import Qwen2VL, get_preset  # noqa: E402


def read_all(path):
  out = {}
  for f in sorted(os.listdir(path)):
    if f.endswith(".safetensors"):
      with safe_open(os.path.join(path, f), "np") as h:
        for k in h.keys():
          out[k] = h.get_tensor(k)
  return out


@pytest.mark.parametrize("dtype,tie", [("float32", True), ("bfloat16", False)])
def test_round_trip_bit_identical(tmp_path, dtype, tie):
  hf = build_hf_model(seed=7, tie=tie)
  src = save_hf_model(hf, str(tmp_path / "src"), dtype=dtype)
  (tmp_path / "src" / "tokenizer_config.json").write_text("{}")
  model = tinyrs_jax.load(src, dtype=dtype)
  out = tinyrs_jax.save_hf(model, str(tmp_path / "out"), source_dir=src)
  a, b = read_all(src), read_all(out)
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert a[k].tobytes() == b[k].tobytes(), k
  assert (tmp_path / "out" / "tokenizer_config.json").exists()


def test_transformers_loads_our_export_sharded(tmp_path):
  from transformers import Qwen2VLForConditionalGeneration
  model = Qwen2VL(get_preset("tiny"), rngs=nnx.Rngs(3))
  # Random biases/norms so the comparison sees every tensor.
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  nnx.update(model, jax.tree.unflatten(treedef, [l + 0.1 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]))
  out = tinyrs_jax.save_hf(model, str(tmp_path / "out"), max_shard_bytes=200_000)
  assert (tmp_path / "out" / "model.safetensors.index.json").exists()
  cfg = json.loads((tmp_path / "out" / "config.json").read_text())  # the published flat layout
  assert cfg["rope_scaling"] == {"type": "mrope", "mrope_section": [2, 3, 3]} and "text_config" not in cfg
  hf = Qwen2VLForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
  inp = random_image_batch(np.random.default_rng(0), [(1, 4, 4), (1, 6, 4)], [3, 5], [4, 2], [[0], [1]])
  ref = hf_forward(hf, inp)
  mask = inp["attention_mask"].astype(bool)
  ours = np.asarray(model(**inp))
  assert np.abs(ours - ref)[mask].max() / np.abs(ref[mask]).max() <= 2e-4


def test_mismatched_checkpoint_errors(tmp_path):
  hf = build_hf_model(seed=1)
  src = save_hf_model(hf, str(tmp_path / "ckpt"))
  cfg_path = tmp_path / "ckpt" / "config.json"
  cfg = json.loads(cfg_path.read_text())
  cfg["text_config"]["intermediate_size"] = 128
  cfg["text_config"]["num_hidden_layers"] = 3
  cfg_path.write_text(json.dumps(cfg))
  with pytest.raises(CheckpointMismatch) as e:
    tinyrs_jax.load(src)
  msg = str(e.value)
  assert "model.layers.0.mlp.gate_proj.weight: checkpoint shape (96, 64) != model shape (128, 64)" in msg
  assert "missing key model.layers.2.input_layernorm.weight" in msg


def test_extra_key_errors(tmp_path):
  from safetensors.numpy import save_file
  src = save_hf_model(build_hf_model(seed=1), str(tmp_path / "ckpt"))
  tensors = read_all(src)
  tensors["model.layers.0.self_attn.rotary_emb.extra"] = np.zeros(3, np.float32)
  save_file(tensors, os.path.join(src, "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(CheckpointMismatch, match="unexpected keys.*rotary_emb.extra"):
    tinyrs_jax.load(src)


def test_missing_config_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    tinyrs_jax.load(str(tmp_path))


def test_2b_parameter_count():
  abstract = nnx.eval_shape(lambda: Qwen2VL(get_preset("qwen2_vl_2b")))
  params = nnx.state(abstract, nnx.Param)
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  vision = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params["visual"]))
  assert total == 2_208_985_600
  assert vision == 665_271_296
  assert total - vision == 1_543_714_304


def test_every_param_has_logical_axes():
  abstract = nnx.eval_shape(lambda: Qwen2VL(get_preset("tiny")))
  for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == len(var.get_value().shape), path


def test_demo_wide_is_demo_8m_with_a_wider_decoder():
  """The demo tuning record's larger model: demo_8m's vision tower and special ids, a 6 x 384 decoder."""
  small, wide = get_preset("demo_8m"), get_preset("demo_wide")
  assert (wide.vision.depth, wide.vision.embed_dim) == (small.vision.depth, small.vision.embed_dim)
  assert wide.vision.hidden_size == wide.text.hidden_size == 384 and wide.text.num_hidden_layers == 6
  assert (wide.image_token_id, wide.eos_token_id, wide.text.vocab_size) == (small.image_token_id, small.eos_token_id,
                                                                            small.text.vocab_size)
  counts = []
  for cfg in (small, wide):
    params = nnx.state(nnx.eval_shape(lambda cfg=cfg: Qwen2VL(cfg)), nnx.Param)
    counts.append(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)))
  assert counts == [4_156_928, 10_846_208]  # 2.6 times the parameters


def test_demo_deep_vision_is_demo_8m_with_a_deeper_tower():
  """The demo tuning record's try r1: demo_8m's decoder, merger and ids, a 6-block vision tower of the same width."""
  small, deep = get_preset("demo_8m"), get_preset("demo_deep_vision")
  assert deep.text == small.text and deep.vision.depth == 6
  assert dataclasses.replace(deep.vision, depth=small.vision.depth) == small.vision
  counts = []
  for cfg in (small, deep):
    params = nnx.state(nnx.eval_shape(lambda cfg=cfg: Qwen2VL(cfg)), nnx.Param)
    counts.append(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)))
  # a block: two norms, qkv, proj, and the MLP's two layers (128 -> 512 -> 128), weights and biases
  block = 2 * 2 * 128 + (128 * 384 + 384) + (128 * 128 + 128) + (128 * 512 + 512) + (512 * 128 + 128)
  assert counts == [4_156_928, 4_156_928 + 4 * block]  # 4.95M parameters
