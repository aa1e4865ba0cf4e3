"""The grain pipeline on a small synthetic dataset with the demo tokenizer: shapes, masks, state, hosts, bad input."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from tinyrs_jax.data import demo_tokenizer, pipeline, synthetic
from tinyrs_jax.data.padding import pad_token_rows
from tinyrs_jax.data.processor import Processor
from tinyrs_jax.data.readers import load_records
from tinyrs_jax.data.records import DataError, Record, SkipCounter
from tinyrs_jax.sampling import generate as gen_lib

LENGTH_BUCKETS = (96, 128, 192, 256)
PATCH_BUCKETS = (64, 128, 192, 256)
IM_END = "<|im_end|>"


@dataclasses.dataclass
class Assets:
  data_dir: str
  processor: Processor
  instruct: list[Record]
  cot: list[Record]
  grpo: list[Record]
  bad: dict[str, Record]  # case -> record
  bad_dir: str


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
  root = tmp_path_factory.mktemp("pipeline")
  data_dir, tok_dir = str(root / "data"), str(root / "tokenizer")
  synthetic.generate(data_dir, num_examples=40, seed=0)
  demo_tokenizer.build(data_dir, tok_dir)
  # Demo images are 112-224 px: 64-256 patches, so every patch bucket comes up.
  processor = Processor.from_folder(tok_dir, min_pixels=56 * 56, max_pixels=224 * 224)
  instruct = load_records("llava", os.path.join(data_dir, "instruct", "train.jsonl"))
  cot = load_records("llava", os.path.join(data_dir, "cot", "train.jsonl"))
  grpo = load_records("llava", os.path.join(data_dir, "grpo", "train.jsonl"), require_assistant=False)

  bad_dir = root / "bad"
  bad_dir.mkdir()
  png = open(instruct[0].image, "rb").read()
  (bad_dir / "truncated.png").write_bytes(png[:len(png) // 3])  # header fine, pixels cut off
  (bad_dir / "garbage.png").write_bytes(b"this is not an image")
  source = str(bad_dir / "bad.jsonl")
  good = instruct[0]
  user = good.messages[0]["content"]

  def bad(line, **kw):
    return dataclasses.replace(good, id=f"bad-{line}", source=source, line=line, **kw)

  cases = {
      "missing_image": bad(1, image=str(bad_dir / "missing.png")),
      "garbage_image": bad(2, image=str(bad_dir / "garbage.png")),
      "truncated_image": bad(3, image=str(bad_dir / "truncated.png")),
      "box_outside_image": bad(4, boxes=(("ship", (10.0, 10.0, 900.0, 40.0)),)),
      "sequence_too_long": bad(5, messages=[{"role": "user", "content": user + " please" * 300},
                                            {"role": "assistant", "content": "no"}]),
      "no_assistant_turn": bad(6, messages=[{"role": "user", "content": user}]),
  }
  return Assets(data_dir, processor, instruct, cot, grpo, cases, str(bad_dir))


# case -> (reason, field) the DataError must carry
BAD_EXPECT = {
    "missing_image": ("missing_image", "image"),
    "garbage_image": ("corrupt_image", "image"),
    "truncated_image": ("corrupt_image", "image"),
    "box_outside_image": ("box_outside_image", "boxes[0]"),
    "sequence_too_long": ("sequence_too_long", "messages"),
    "no_assistant_turn": ("no_assistant_turn", "messages"),
}


def make(assets, records, **kw):
  kw = {"global_batch_size": 4, "seed": 0, "length_buckets": LENGTH_BUCKETS, "patch_buckets": PATCH_BUCKETS,
        "max_length": 256, "process_index": 0, "process_count": 1, **kw}
  return pipeline.make_dataset(records, assets.processor, **kw)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if k == "meta":
      assert a[k] == b[k]
    else:
      assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


class Recording(SkipCounter):
  """A lenient counter that keeps the errors too."""

  def __init__(self):
    super().__init__(strict=False)
    self.errors = []

  def skip(self, error):
    self.errors.append(error)
    super().skip(error)


def text_record(i, turns):
  roles = ["user", "assistant"] * len(turns)
  return Record(id=f"text-{i}", image=None, messages=[{"role": r, "content": c} for r, c in zip(roles, turns)],
                source="memory", line=i)


# ---------------------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("mode", ["sft", "prompt"])
def test_shapes_stay_within_the_declared_buckets(assets, mode):
  records = (assets.cot if mode == "sft" else assets.grpo)[:60] + [text_record(0, ["Say hi.", "hi"])]
  it = make(assets, records, mode=mode, global_batch_size=2)  # small batches: more of them pick small buckets
  tok = assets.processor.tokenizer
  most = it.max_batch_shapes()
  assert it.length_buckets == LENGTH_BUCKETS and it.patch_buckets == PATCH_BUCKETS
  seen_lengths, seen_patches = set(), set()
  for batch in take(it, 16):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    b, length = ids.shape
    slots, patches, dim = batch["pixel_values"].shape
    seen_lengths.add(length)
    seen_patches.add(patches)
    assert b == 2 and length in LENGTH_BUCKETS and patches in PATCH_BUCKETS and dim == 1176 and slots == 2
    for k, spec in most.items():
      assert batch[k].dtype == spec.dtype and all(s <= m for s, m in zip(batch[k].shape, spec.shape)), k
    assert ("loss_mask" in batch) == (mode == "sft")
    for r in range(b):
      n = mask[r].sum()
      expected = np.r_[np.ones(n), np.zeros(length - n)] if mode == "sft" else np.r_[np.zeros(length - n), np.ones(n)]
      np.testing.assert_array_equal(mask[r], expected)
      grid = batch["image_grid_thw"][r]
      count = int(np.prod(grid))
      assert (ids[r] == tok.image_pad_id).sum() == count // 4  # row r's image sits in slot r
      assert not batch["pixel_values"][r, count:].any() and batch["pixel_values"][r, :count].any() == (count > 0)
    if mode == "sft":
      assert not (batch["loss_mask"] & (1 - mask)).any()
  assert len(seen_lengths) >= 2 and len(seen_patches) >= 2  # bucketing, not one fixed shape


def test_max_batch_shapes_and_bucket_limits(assets):
  shapes = pipeline.max_batch_shapes(assets.processor, batch_size=8, max_length=200, length_buckets=LENGTH_BUCKETS,
                                     patch_buckets=PATCH_BUCKETS, max_images_per_row=2)
  assert shapes["input_ids"].shape == (8, 256) and shapes["loss_mask"].shape == (8, 256)
  assert shapes["pixel_values"].shape == (16, 256, 1176) and shapes["image_grid_thw"].shape == (16, 3)
  prompt = pipeline.max_batch_shapes(assets.processor, batch_size=8, mode="prompt", max_length=100,
                                     length_buckets=LENGTH_BUCKETS, patch_buckets=PATCH_BUCKETS)
  assert "loss_mask" not in prompt and prompt["input_ids"].shape == (8, 128)
  with pytest.raises(ValueError, match="largest length bucket"):
    make(assets, assets.instruct, max_length=512)
  hub = Processor(assets.processor.tokenizer)  # hub max_pixels: 65,536 patches, beyond the buckets
  with pytest.raises(ValueError, match="max_pixels"):
    pipeline.make_dataset(assets.instruct, hub, global_batch_size=4, process_index=0, process_count=1,
                          patch_buckets=PATCH_BUCKETS)


# ---------------------------------------------------------------------------------------------- masks

def test_loss_mask_covers_only_assistant_content_and_im_end(assets):
  multi = text_record(1, ["What is 2+2?", "4", "And 3+3?", "It is 6."])
  records = assets.cot[:20] + assets.instruct[:20] + [multi]
  it = make(assets, records, with_meta=True, num_epochs=1, shuffle=False, drop_remainder=False)
  tok = assets.processor.tokenizer
  rows = 0
  for batch in it:
    for r, meta in enumerate(batch["meta"]):
      if meta["is_padding"]:
        assert not batch["loss_mask"][r].any()
        continue
      record = records[meta["record_index"]]
      ids = batch["input_ids"][r]
      learned = tok.decode(ids[batch["loss_mask"][r] == 1], skip_special_tokens=False)
      assert learned == "".join(m["content"] + IM_END for m in record.messages if m["role"] == "assistant")
      # And the whole row is the rendered conversation.
      text = tok.decode(ids[batch["attention_mask"][r] == 1], skip_special_tokens=False)
      assert text.endswith(record.messages[-1]["content"] + IM_END + "\n")
      rows += 1
  assert rows == len(records)


# ---------------------------------------------------------------------------------------------- state, seeds, hosts

def test_iterator_state_restores_the_next_batch(assets):
  records = assets.instruct[:30] + [assets.bad["missing_image"]]
  it = make(assets, records, with_meta=True)
  take(it, 9)
  state = json.loads(json.dumps(it.get_state()))
  expected = next(it)
  assert state["skipped"] == {"missing_image": 1}
  fresh = make(assets, records, with_meta=True)
  fresh.set_state(state)
  assert fresh.next_batch_index == 9 and dict(fresh.skips.skipped) == {"missing_image": 1}
  assert_batches_equal(next(fresh), expected)
  it.set_state(state)  # rewinding the same iterator works too
  assert_batches_equal(next(it), expected)
  with pytest.raises(ValueError, match="seed"):
    make(assets, records, seed=1).set_state(state)


def test_same_seed_same_batches_other_seed_other_order(assets):
  a = take(make(assets, assets.instruct, with_meta=True), 3)
  b = take(make(assets, assets.instruct, with_meta=True), 3)
  for x, y in zip(a, b):
    assert_batches_equal(x, y)
  c = take(make(assets, assets.instruct, with_meta=True, seed=1), 3)
  ids = lambda batches: [m["id"] for x in batches for m in x["meta"]]  # noqa: E731
  assert ids(a) != ids(c)


def test_epochs_are_reshuffled_and_cover_every_record(assets):
  records = assets.instruct[:12]
  it = make(assets, records, with_meta=True, num_epochs=2)
  assert it.num_batches == 6
  ids = [m["id"] for batch in it for m in batch["meta"]]
  first, second = ids[:12], ids[12:]
  assert sorted(first) == sorted(second) == sorted(r.id for r in records) and first != second


@pytest.mark.parametrize("mode", ["sft", "prompt"])
def test_one_process_global_batch_is_the_concatenation_of_two_process_slices(assets, mode):
  # Text-only rows (empty image slots), an in-memory image, an unreadable file (seen by every process at planning)
  # and a truncated one (seen only by the process that decodes it) all included.
  in_memory = dataclasses.replace(assets.instruct[1], id="array", image=np.asarray(Image.open(assets.instruct[1].image)))
  records = (assets.instruct[:16] + [text_record(2, ["Hello?", "Hello."]), text_record(3, ["Hi?", "Hi."]), in_memory]
             + [assets.bad["garbage_image"], assets.bad["truncated_image"]])
  if mode == "prompt":
    records += assets.grpo[:4]
  seen = Recording()
  one = make(assets, records, mode=mode, with_meta=True, global_batch_size=8, skips=seen)
  halves = [make(assets, records, mode=mode, with_meta=True, global_batch_size=8, process_index=i, process_count=2)
            for i in range(2)]
  for _ in range(6):
    whole = next(one)
    parts = [next(h) for h in halves]
    joined = {k: (parts[0][k] + parts[1][k] if k == "meta" else np.concatenate([parts[0][k], parts[1][k]]))
              for k in whole}
    assert_batches_equal(whole, joined)
  assert {"garbage.png", "truncated.png"} <= {os.path.basename(e.detail.split(":")[0].split()[-1]) for e in seen.errors}


def test_worker_processes_give_the_same_batches(assets):
  ref = take(make(assets, assets.instruct, with_meta=True), 4)
  it = make(assets, assets.instruct, with_meta=True, worker_count=2, read_threads=2)
  try:
    for x in ref:
      assert_batches_equal(x, next(it))
  finally:
    it.close()


# ---------------------------------------------------------------------------------------------- bad input

def test_lenient_resample_skips_counts_and_keeps_batches_full(assets):
  records = assets.instruct[:12] + list(assets.bad.values())
  it = make(assets, records, with_meta=True, shuffle=False)
  batches = take(it, 10)  # 40 rows: the first epoch (18 records) and more
  for batch in batches:
    assert len(batch["meta"]) == 4 and not any(m["is_padding"] for m in batch["meta"])
    assert not any(m["id"].startswith("bad-") for m in batch["meta"])
  reasons = {reason for reason, _ in BAD_EXPECT.values()}
  assert reasons <= set(it.skips.skipped) and it.skips.skipped["corrupt_image"] >= 2


def test_lenient_pad_skips_each_bad_record_once_and_keeps_every_good_one(assets):
  good = assets.instruct[:13]
  records = good[:5] + list(assets.bad.values()) + good[5:]
  it = make(assets, records, with_meta=True, shuffle=False, num_epochs=1, drop_remainder=False, bad_rows="pad")
  metas = [m for batch in it for m in batch["meta"]]
  assert len(metas) == 20  # 19 records in 5 batches of 4
  assert sorted(m["id"] for m in metas if not m["is_padding"]) == sorted(r.id for r in good)
  expected = {}
  for reason, _ in BAD_EXPECT.values():
    expected[reason] = expected.get(reason, 0) + 1
  assert dict(it.skips.skipped) == expected


@pytest.mark.parametrize("case", sorted(BAD_EXPECT))
def test_strict_mode_raises_naming_file_line_and_field(assets, case):
  reason, field = BAD_EXPECT[case]
  record = assets.bad[case]
  it = make(assets, assets.instruct[:3] + [record], strict=True, shuffle=False)
  with pytest.raises(DataError) as info:
    next(it)
  e = info.value
  assert e.reason == reason and e.field == field and e.line == record.line
  assert f"{record.source}:{record.line}" in str(e) and f"field {field}" in str(e)


def test_reader_spec_source_counts_reader_skips(assets, tmp_path):
  path = tmp_path / "train.jsonl"
  lines = open(os.path.join(assets.data_dir, "instruct", "train.jsonl")).read().splitlines()[:8]
  lines.insert(3, '{"id": "broken", "conversations": [')
  path.write_text("\n".join(lines) + "\n")
  options = {"image_root": os.path.join(assets.data_dir, "instruct")}
  it = make(assets, ("llava", str(path), options))
  next(it)
  assert dict(it.skips.skipped) == {"bad_json": 1}
  with pytest.raises(DataError, match=f"{path}:4"):
    make(assets, ("llava", str(path), options), strict=True)


# ---------------------------------------------------------------------------------------------- prompts

def test_prompt_mode_is_left_padded_with_metadata(assets):
  records = assets.grpo[:20] + assets.cot[:20]  # prompt-only records and whole conversations
  it = make(assets, records, mode="prompt", num_epochs=1, shuffle=False, drop_remainder=False)
  tok = assets.processor.tokenizer
  by_id = {r.id: r for r in records}
  n = 0
  for batch in it:
    assert "loss_mask" not in batch
    assert batch["attention_mask"][:, -1].all()  # every prompt ends at the last column
    for r, meta in enumerate(batch["meta"]):
      record = by_id[meta["id"]]
      text = tok.decode(batch["input_ids"][r][batch["attention_mask"][r] == 1], skip_special_tokens=False)
      assert text.endswith(f"{IM_END}\n<|im_start|>assistant\n")
      assert text.count("<|im_start|>assistant") == 1  # the answer turn of a cot record is not in the prompt
      assert meta["task"] == record.task and meta["answer"] == record.answer
      assert (meta["width"], meta["height"]) == Image.open(record.image).size
      assert meta["source"] == record.source and meta["line"] == record.line and not meta["is_padding"]
      assert meta["boxes"] == [{"label": label, "box": list(map(float, box))} for label, box in record.boxes]
      n += 1
  assert n == len(records)


def test_prompt_batches_feed_generate(assets):
  import jax
  from flax import nnx

  from tinyrs_jax.models import presets
  from tinyrs_jax.models.qwen2_vl import Qwen2VL

  it = make(assets, assets.grpo, mode="prompt")
  batch = next(it)
  tok = assets.processor.tokenizer
  arrays = {k: v for k, v in batch.items() if k != "meta"}
  # generate's own static form changes nothing: the pipeline already produces it.
  again = gen_lib.left_pad_prompts(arrays, pad_token_id=tok.pad_id, patch_dim=1176, length_buckets=it.length_buckets)
  assert_batches_equal(arrays, again)
  cfg = presets.with_tokenizer(presets.get_preset("demo_8m"), tok)
  model = Qwen2VL(cfg, rngs=nnx.Rngs(0))
  out = gen_lib.generate(model, arrays, max_new_tokens=2, length_buckets=it.length_buckets)
  assert out.tokens.shape == (4, 2) and out.prompt_length == arrays["input_ids"].shape[1]
  assert jax.numpy.isfinite(out.logprobs).all()


def test_pad_token_rows_places_prompts_flush_right_and_sequences_flush_left():
  """The one padding rule the processor, the pipeline and the sampler share."""
  rows = [np.array([5, 6, 7]), np.array([8])]
  ids, mask = pad_token_rows(rows, 4, 0, side="left")
  assert ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]] and mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
  ids, mask = pad_token_rows(rows, 4, 9, side="right")
  assert ids.tolist() == [[5, 6, 7, 9], [8, 9, 9, 9]] and mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
  assert ids.dtype == mask.dtype == np.int32
  with pytest.raises(ValueError, match="more than the padded length"):
    pad_token_rows(rows, 2, 0)
  with pytest.raises(ValueError, match="side"):
    pad_token_rows(rows, 4, 0, side="middle")
