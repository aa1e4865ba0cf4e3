"""Model configurations: one source of truth for every preset, and the config.json mapping.

`Qwen2VLConfig` mirrors the fields of a Hugging Face Qwen2-VL `config.json` that change the computation.
Presets are plain functions returning a config; `get_preset(name)` looks them up by name.
`from_hf_dict` accepts both layouts a checkpoint may carry (the flat one of the published hub files and the
nested one transformers 5 writes); `to_hf_dict` writes the nested layout.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  depth: int = 32
  embed_dim: int = 1280
  num_heads: int = 16
  mlp_ratio: float = 4.0
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  hidden_size: int = 1536  # merger output width == text hidden size
  layer_norm_eps: float = 1e-6
  rope_theta: float = 10000.0

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def mlp_dim(self) -> int:
    return int(self.embed_dim * self.mlp_ratio)

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

  @property
  def merge_unit(self) -> int:
    return self.spatial_merge_size ** 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 151936
  hidden_size: int = 1536
  intermediate_size: int = 8960
  num_hidden_layers: int = 28
  num_attention_heads: int = 12
  num_key_value_heads: int = 2
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1_000_000.0
  mrope_section: tuple[int, int, int] = (16, 24, 24)
  max_position_embeddings: int = 32768
  tie_word_embeddings: bool = True

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class Qwen2VLConfig:
  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()
  # Special token ids (Qwen2-VL's tokenizer). Tiny test vocabularies override them.
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  bos_token_id: int | None = 151643
  eos_token_id: int | None = 151645
  pad_token_id: int | None = 151643

  def replace(self, **kw) -> "Qwen2VLConfig":
    return dataclasses.replace(self, **kw)

  def validate(self) -> "Qwen2VLConfig":
    t, v = self.text, self.vision
    if t.hidden_size % t.num_attention_heads:
      raise ValueError(f"text hidden_size {t.hidden_size} not divisible by heads {t.num_attention_heads}")
    if t.num_attention_heads % t.num_key_value_heads:
      raise ValueError(f"text heads {t.num_attention_heads} not a multiple of kv heads {t.num_key_value_heads}")
    if 2 * sum(t.mrope_section) != t.head_dim:
      raise ValueError(f"mrope_section {t.mrope_section} must sum to head_dim/2 = {t.head_dim // 2}")
    if v.hidden_size != t.hidden_size:
      raise ValueError(f"vision hidden_size {v.hidden_size} must equal text hidden_size {t.hidden_size}")
    if v.embed_dim % v.num_heads or v.head_dim % 4:
      raise ValueError(f"vision embed_dim {v.embed_dim} / heads {v.num_heads} must give a head_dim divisible by 4")
    return self


# ----------------------------------------------------------------------------------------------- presets

_PRESETS: dict[str, Callable[[], Qwen2VLConfig]] = {}


def register_preset(fn: Callable[[], Qwen2VLConfig]) -> Callable[[], Qwen2VLConfig]:
  _PRESETS[fn.__name__] = fn
  return fn


def get_preset(name: str) -> Qwen2VLConfig:
  if name not in _PRESETS:
    raise KeyError(f"unknown model preset {name!r}; known: {sorted(_PRESETS)}")
  return _PRESETS[name]().validate()


def preset_names() -> list[str]:
  return sorted(_PRESETS)


@register_preset
def qwen2_vl_2b() -> Qwen2VLConfig:
  """The published Qwen2-VL-2B(-Instruct) architecture: 2,208,985,600 parameters."""
  return Qwen2VLConfig()


@register_preset
def bench_30m() -> Qwen2VLConfig:
  """The benchmark model: small enough for this CPU, shaped like the real one (GQA, M-RoPE, merger)."""
  return Qwen2VLConfig(
      text=TextConfig(vocab_size=16384, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=2, mrope_section=(8, 12, 12)),
      vision=VisionConfig(depth=4, embed_dim=256, num_heads=8, hidden_size=512),
      image_token_id=16384 - 2, video_token_id=16384 - 1, vision_start_token_id=16384 - 4,
      vision_end_token_id=16384 - 3, bos_token_id=None, eos_token_id=1, pad_token_id=0)


@register_preset
def demo_8m() -> Qwen2VLConfig:
  """The demo model (configs' :demo variants): trains in minutes on a laptop CPU with the demo tokenizer.

  Its vocabulary holds the demo tokenizer (tinyrs_jax.data.demo_tokenizer, under 1,024 ids incl. specials);
  special ids are taken from the tokenizer by `with_tokenizer`.
  """
  return Qwen2VLConfig(
      text=TextConfig(vocab_size=1024, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, mrope_section=(8, 12, 12)),
      vision=VisionConfig(depth=2, embed_dim=128, num_heads=4, hidden_size=256),
      image_token_id=1023, video_token_id=1022, vision_start_token_id=1020, vision_end_token_id=1021,
      bos_token_id=None, eos_token_id=1019, pad_token_id=1018)


@register_preset
def demo_wide() -> Qwen2VLConfig:
  """demo_8m with a wider, deeper decoder (6 layers of 384; 10.8M parameters against demo_8m's 4.2M): a lever
  the demo's tuning record measures (docs/demo_tuning.md, tries t4-t6); same vision tower and special ids."""
  base = demo_8m()
  return base.replace(text=dataclasses.replace(base.text, hidden_size=384, intermediate_size=1024,
                                               num_hidden_layers=6, num_attention_heads=6),
                      vision=dataclasses.replace(base.vision, hidden_size=384))


@register_preset
def demo_deep_vision() -> Qwen2VLConfig:
  """demo_8m with a vision tower three times as deep (6 blocks of 128 against 2): a lever the demo's tuning record
  measures (docs/demo_tuning.md), for the small objects the 2-block tower counts worst. The tower is about a
  twentieth of demo_8m's compute at 112² (64 patches against a ~150-token decoder sequence), so it costs little."""
  base = demo_8m()
  return base.replace(vision=dataclasses.replace(base.vision, depth=6))


@register_preset
def tiny() -> Qwen2VLConfig:
  """Tests: the smallest shapes that still exercise GQA, M-RoPE sections and the merger."""
  return Qwen2VLConfig(
      text=TextConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, mrope_section=(2, 3, 3)),
      vision=VisionConfig(depth=2, embed_dim=32, num_heads=2, hidden_size=64),
      image_token_id=250, video_token_id=251, vision_start_token_id=248, vision_end_token_id=249,
      bos_token_id=None, eos_token_id=2, pad_token_id=0)


# The special ids a model config takes from its tokenizer: config field, Tokenizer attribute, the token. The
# data marks images with the tokenizer's ids and the model looks for its own, so these must agree.
TOKENIZER_IDS = (("image_token_id", "image_pad_id", "<|image_pad|>"),
                 ("video_token_id", "video_pad_id", "<|video_pad|>"),
                 ("vision_start_token_id", "vision_start_id", "<|vision_start|>"),
                 ("vision_end_token_id", "vision_end_id", "<|vision_end|>"))
UNCHECKED_IDS = ("video_token_id",)  # the processor rejects videos: the model never reads this one


def with_tokenizer(cfg: Qwen2VLConfig, tokenizer) -> Qwen2VLConfig:
  """The config with special token ids taken from a tokenizer (tinyrs_jax.data.tokenizer.Tokenizer).

  The tokenizer is the one source of truth for ids; the vocabulary must fit the embedding table.
  """
  if tokenizer.vocab_size > cfg.text.vocab_size:
    raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary is {cfg.text.vocab_size}")
  return cfg.replace(**{field: getattr(tokenizer, attr) for field, attr, _ in TOKENIZER_IDS},
                     eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, bos_token_id=None).validate()


def check_tokenizer_ids(cfg: Qwen2VLConfig, tokenizer, where: str, tokenizer_name: str = "") -> None:
  """The one special-id check: raises when `cfg` (read from `where`) and the tokenizer disagree on an id the
  model reads (a mismatch trains on garbage without any error). pad is checked when the config sets one; the
  config's eos must be one of the tokenizer's eos ids (generation_config may add some)."""
  tok = tokenizer
  pairs = [(field, getattr(cfg, field), token, getattr(tok, attr)) for field, attr, token in TOKENIZER_IDS
           if field not in UNCHECKED_IDS]
  if cfg.pad_token_id is not None:
    pairs.append(("pad_token_id", cfg.pad_token_id, f"pad {tok.pad_token!r}", tok.pad_id))
  bad = [f"{name} is {ours} in {where} but the tokenizer's {token} is {theirs}"
         for name, ours, token, theirs in pairs if ours != theirs]
  if cfg.eos_token_id is not None and cfg.eos_token_id not in tok.eos_ids:
    bad.append(f"eos_token_id is {cfg.eos_token_id} in {where} but the tokenizer's eos ids are {tok.eos_ids}")
  if bad:
    raise ValueError(f"model and tokenizer ({tokenizer_name}) disagree on special tokens: " + "; ".join(bad)
                     + ". Use the tokenizer the model was trained with (data.tokenizer_dir)")


# --------------------------------------------------------------------------------- config.json mapping

_TEXT_KEYS = [f.name for f in dataclasses.fields(TextConfig)]
_VISION_KEYS = {  # ours -> HF vision_config key
    "depth": "depth", "embed_dim": "embed_dim", "num_heads": "num_heads", "mlp_ratio": "mlp_ratio",
    "in_channels": "in_channels", "patch_size": "patch_size", "temporal_patch_size": "temporal_patch_size",
    "spatial_merge_size": "spatial_merge_size", "hidden_size": "hidden_size",
}
_TOP_IDS = ["image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"]


def from_hf_dict(d: dict[str, Any], source: str = "config.json") -> Qwen2VLConfig:
  """Parses a Qwen2-VL config.json (flat hub layout or nested transformers-5 layout)."""
  if d.get("model_type") not in (None, "qwen2_vl"):
    raise ValueError(f"{source}: model_type is {d.get('model_type')!r}, expected 'qwen2_vl'")
  text = dict(d.get("text_config") or {})
  for k in _TEXT_KEYS + ["rope_scaling", "rope_parameters"]:  # flat layout keeps text keys at the top
    if k not in text and k in d:
      text[k] = d[k]
  rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
  mrope = rope.get("mrope_section")
  if mrope is None:
    raise ValueError(f"{source}: no mrope_section in rope_scaling/rope_parameters")
  theta = rope.get("rope_theta", text.get("rope_theta", 1_000_000.0))
  tie = d.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
  missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                         "num_attention_heads", "num_key_value_heads") if k not in text]
  if missing:
    raise ValueError(f"{source}: text config lacks {missing}")
  tc = TextConfig(
      vocab_size=int(text["vocab_size"]), hidden_size=int(text["hidden_size"]),
      intermediate_size=int(text["intermediate_size"]), num_hidden_layers=int(text["num_hidden_layers"]),
      num_attention_heads=int(text["num_attention_heads"]),
      num_key_value_heads=int(text["num_key_value_heads"]),
      rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)), rope_theta=float(theta),
      mrope_section=tuple(int(x) for x in mrope),
      max_position_embeddings=int(text.get("max_position_embeddings", 32768)), tie_word_embeddings=bool(tie))
  if text.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{source}: text hidden_act {text.get('hidden_act')!r} unsupported (silu only)")
  v = dict(d.get("vision_config") or {})
  if "in_chans" in v and "in_channels" not in v:
    v["in_channels"] = v["in_chans"]
  if v.get("hidden_act", "quick_gelu") != "quick_gelu":
    raise ValueError(f"{source}: vision hidden_act {v.get('hidden_act')!r} unsupported (quick_gelu only)")
  vc = {ours: type(getattr(VisionConfig, ours))(v[hf]) for ours, hf in _VISION_KEYS.items() if hf in v}
  vrope = v.get("rope_parameters") or v.get("rope_scaling") or {}
  if "rope_theta" in vrope or "rope_theta" in v:
    vc["rope_theta"] = float(vrope.get("rope_theta", v.get("rope_theta")))
  vc = VisionConfig(**vc)
  ids = {k: int(d[k]) for k in _TOP_IDS if k in d}
  for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
    val = text.get(k, d.get(k))
    if isinstance(val, list):
      val = val[0]
    ids[k] = None if val is None else int(val)
  return Qwen2VLConfig(text=tc, vision=vc, **ids).validate()


def to_hf_dict(cfg: Qwen2VLConfig, dtype: str = "float32") -> dict[str, Any]:
  """config.json in the flat layout the published Qwen2-VL checkpoints carry.

  Text fields at the top with `rope_scaling: {type: mrope, mrope_section}`: transformers 5 reads it (moving
  the fields into its nested text_config), and so do transformers 4.x and the serving stacks built on it,
  which know only this layout.
  """
  t, v = cfg.text, cfg.vision
  vision = {**{hf: getattr(v, ours) for ours, hf in _VISION_KEYS.items()},
            "mlp_ratio": int(v.mlp_ratio) if float(v.mlp_ratio).is_integer() else v.mlp_ratio,
            "hidden_act": "quick_gelu", "in_chans": v.in_channels, "model_type": "qwen2_vl"}
  if v.rope_theta != 10000.0:
    vision["rope_theta"] = v.rope_theta
  return {
      "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
      "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
      "num_hidden_layers": t.num_hidden_layers, "num_attention_heads": t.num_attention_heads,
      "num_key_value_heads": t.num_key_value_heads, "hidden_act": "silu", "rms_norm_eps": t.rms_norm_eps,
      "max_position_embeddings": t.max_position_embeddings, "max_window_layers": t.num_hidden_layers,
      "use_sliding_window": False, "sliding_window": t.max_position_embeddings, "attention_dropout": 0.0,
      "use_cache": True, "rope_theta": t.rope_theta,
      "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
      "tie_word_embeddings": t.tie_word_embeddings, "torch_dtype": dtype, "vision_config": vision,
      **{k: getattr(cfg, k) for k in _TOP_IDS},
      "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
  }
