"""tools/aot/programs.py builds what the trainers run: its shapes and placements come from the trainers' own
functions, checked here on XLA:CPU with the tiny model (lowering only, and two small compiles), so a trainer change
cannot leave the tool checking something else."""
import dataclasses
import inspect
import os

import jax
import pytest

from tinyrs_jax import main as trainer_main
from tinyrs_jax import sharding as sharding_lib
from tinyrs_jax.data import demo_tokenizer, synthetic
from tinyrs_jax.data.tokenizer import Tokenizer
from tinyrs_jax.models import presets
from tinyrs_jax.sampling import completions
from tinyrs_jax.sampling import generate as gen_lib
from tinyrs_jax.tools.aot import programs as programs_lib
from tinyrs_jax.train import input as input_lib

ROWS, GROUP = 8, 2
TINY = ["--config.model.preset=tiny", "--config.model.dtype=float32", "--config.data.max_length=256",
        "--config.data.length_buckets=(256,)", "--config.data.min_pixels=3136", "--config.data.max_pixels=3136",
        f"--config.batch_size={ROWS}"]
GRPO = ["--config=configs/grpo.py", *TINY, f"--config.grpo.num_generations={GROUP}",
        "--config.grpo.max_new_tokens=8"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """Synthetic records and a demo tokenizer: (data folder, tokenizer folder)."""
  root = tmp_path_factory.mktemp("aot_programs")
  synthetic.generate(str(root / "data"), 30, 0)
  demo_tokenizer.build(str(root / "data"), str(root / "tok"))
  return str(root / "data"), str(root / "tok")


def load(*flags):
  return trainer_main.load_config(list(flags))[0]


def built(config, mesh=None):
  mesh = mesh or sharding_lib.make_mesh(data=8)
  return {p.name: p for p in programs_lib.build_programs(config, mesh)[0]}


def arg_shape(lowered, fn, name):
  """The shape of argument `name` of generate.py's `fn` (prefill, _decode_impl) in a lowering of it (graphdef,
  static, is not among the lowered arguments)."""
  args, _ = lowered.args_info
  return args[list(inspect.signature(fn).parameters).index(name) - 1].shape


def test_image_slots_per_row_are_the_trainers_pipelines(monkeypatch, demo):
  """With two image slots per row in the trainers' pipeline settings, the pipeline's prompt batches and every
  program the tool builds hold two slots per row."""
  data_dir, tok_dir = demo
  monkeypatch.setattr(input_lib, "IMAGES_PER_ROW", 2)
  config = load(*GRPO, f"--config.data.train={os.path.join(data_dir, 'grpo', 'train.jsonl')}",
                f"--config.data.tokenizer_dir={tok_dir}")
  it = input_lib.make_prompt_iterator(config, input_lib.resolve_data(config), batch_size=ROWS,
                                      process_index=0, process_count=1)
  batch = next(it)
  it.close()
  assert batch["pixel_values"].shape[0] == 2 * batch["input_ids"].shape[0]  # the trainer's batches
  shapes = programs_lib.stage_shapes(config)
  assert shapes["images_per_row"] == 2 and batch["pixel_values"].shape[1] <= shapes["patches"]
  progs = built(config)
  prefill = progs["rollout_prefill"].lower()
  patch_dim = presets.get_preset("tiny").vision.patch_dim
  assert arg_shape(prefill, gen_lib.prefill, "pixel_values") == (2 * ROWS, shapes["patches"], patch_dim)
  assert arg_shape(prefill, gen_lib.prefill, "image_grid_thw") == (2 * ROWS, 3)
  sft = built(load("--config=configs/pretrain.py", *TINY))
  train_batch = sft["train_step"].lower().args_info[0][1]
  assert train_batch["pixel_values"].shape[0] == 2 * ROWS and train_batch["image_grid_thw"].shape == (2 * ROWS, 3)


def test_decode_stops_on_as_many_tokens_as_the_trainer(demo):
  """The decode program's stop-token array has the length of the set the trainers pass generate()
  (completions.eos_ids: the tokenizer's eos ids and the model's), which the tool names from the config alone."""
  _, tok_dir = demo
  tiny = presets.get_preset("tiny")
  cfg = presets.with_tokenizer(tiny.replace(text=dataclasses.replace(tiny.text, vocab_size=4096)),
                               Tokenizer.from_folder(tok_dir))
  trainers = completions.eos_ids(tok_dir, cfg.eos_token_id)
  assert sorted(completions.config_eos_ids(cfg)) == sorted(trainers)
  # the published Qwen2-VL-2B-Instruct stops on <|im_end|> and <|endoftext|> (its generation_config.json)
  assert completions.config_eos_ids(presets.get_preset("qwen2_vl_2b")) == [151645, 151643]
  assert gen_lib.eos_array(trainers).shape == (len(trainers),) and gen_lib.eos_array(None).tolist() == [-1]
  progs = built(load(*GRPO))
  for name in ("rollout_decode", "eval_decode"):
    assert arg_shape(progs[name].lower(), gen_lib._decode_impl, "eos_ids") == (len(trainers),), name


def test_decode_takes_the_cache_where_prefill_leaves_it():
  """On a data x fsdp x tensor mesh, the cache argument the tool gives the decode loop (generate.cache_shardings)
  is placed exactly as the compiled prefill returns it (its _constrain_cache), so the lowering needs no resharding
  the trainers' calls would not."""
  mesh = sharding_lib.make_mesh(data=2, fsdp=2, tensor=2)
  progs = built(load(*GRPO), mesh)
  lowered = progs["rollout_prefill"].lower()
  shapes = lowered.out_info[0]
  out_cache = lowered.compile().output_shardings[0]
  in_cache = progs["rollout_decode"].lower().compile().input_shardings[0][1]
  expected = gen_lib.cache_shardings(shapes, mesh)
  for got, arg, want, x in zip(jax.tree.leaves(out_cache), jax.tree.leaves(in_cache), jax.tree.leaves(expected),
                               jax.tree.leaves(shapes)):
    assert got.is_equivalent_to(want, len(x.shape)) and arg.is_equivalent_to(want, len(x.shape)), (got, arg, want)
  assert any(not s.is_fully_replicated for s in jax.tree.leaves(expected))  # the check means something
