"""The joint Qwen2-VL model: vision tower → features scattered into <|image_pad|> positions → decoder → head.

Two ways in:
- `hidden_states(batch arrays...)` / `logits_at(...)`: the static-shape path jitted steps use (see batch.py);
  the head is applied only where asked, so nobody holds batch × length × vocab logits by accident.
- `__call__(input_ids, attention_mask, pixel_values, image_grid_thw, **ignored)`: the Hugging Face-style call on
  what transformers' processor returns (flat pixel_values); pads into buckets, runs a cached jitted forward,
  returns full logits (B, L, vocab) cropped to the input length.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tinyrs_jax import sharding
from tinyrs_jax.models import batch as batch_lib
from tinyrs_jax.models.decoder import Decoder, KVCache
from tinyrs_jax.models.layers import param
from tinyrs_jax.models.presets import Qwen2VLConfig
from tinyrs_jax.models.rope import image_token_index, mrope_cos_sin, mrope_positions
from tinyrs_jax.models.vision import VisionTower

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "fp32": jnp.float32, "bf16": jnp.bfloat16,
          "float16": jnp.float16}


def as_dtype(d):
  return DTYPES[d] if isinstance(d, str) else d


class Qwen2VL(nnx.Module):

  def __init__(self, cfg: Qwen2VLConfig, *, dtype="float32", param_dtype="float32", remat_policy="none",
               rngs: nnx.Rngs | None = None):
    cfg.validate()
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    dtype, param_dtype = as_dtype(dtype), as_dtype(param_dtype)
    self.cfg = cfg
    self.dtype = dtype
    t = cfg.text
    self.visual = VisionTower(cfg.vision, dtype=dtype, param_dtype=param_dtype, remat_policy=remat_policy,
                              rngs=rngs)
    self.embed_tokens = param(rngs, (t.vocab_size, t.hidden_size), ("vocab", "embed"), param_dtype)
    self.decoder = Decoder(t, dtype=dtype, param_dtype=param_dtype, remat_policy=remat_policy, rngs=rngs)
    self.lm_head = (None if t.tie_word_embeddings else
                    param(rngs, (t.hidden_size, t.vocab_size), ("embed", "vocab"), param_dtype))

  # ------------------------------------------------------------------------------------------ pieces

  def embed(self, input_ids, pixel_values=None, image_grid_thw=None):
    """Token embeddings with image features scattered into the image-pad positions (in slot order).

    Under a mesh (`sharding.use_mesh`), with I = B x m image slots, the features are gathered row by row from
    the row's own m slots (the pipeline's layout: row r's images in slots [r·m, r·m + m)): rows and their
    slots are sharded alike over the data axes, so the gather stays on each device instead of all-gathering
    every image's features. A batch that breaks that layout there (an image token of row r whose image sits
    in another row's slots) gets NaN embeddings, loudly. Without a mesh (or when B does not divide I) the
    features are gathered from all slots: any slot order works (Hugging Face's packed one included).
    """
    x = jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.dtype)
    if pixel_values is None or pixel_values.shape[0] == 0:
      return x
    feats = self.visual(pixel_values, image_grid_thw)  # (I, P/4, D)
    is_image, slot, within, _ = image_token_index(input_ids, image_grid_thw, self.cfg.image_token_id,
                                                  self.cfg.vision.spatial_merge_size)
    n_img, per_img, d = feats.shape
    within = jnp.clip(within, 0, per_img - 1)
    b = input_ids.shape[0]
    if sharding.current_mesh() is not None and n_img % b == 0:  # a mesh is active (sharding.use_mesh)
      m = n_img // b
      local = slot - (jnp.arange(b, dtype=jnp.int32) * m)[:, None]  # the slot among the row's own m
      rows = sharding.constrain(feats.reshape(b, m * per_img, d), ("batch", None, "act_embed"))
      idx = jnp.clip(local, 0, m - 1) * per_img + within
      img = jnp.take_along_axis(rows, idx[..., None], axis=1)  # (B, L, D), per row
      outside = is_image & ((local < 0) | (local >= m))
      img = jnp.where(outside[..., None], jnp.nan, img)
    else:
      img = feats[slot, within]  # (B, L, D) gather from every slot
    return jnp.where(is_image[..., None], img.astype(self.dtype), x)

  def positions(self, input_ids, attention_mask, image_grid_thw=None):
    if image_grid_thw is None or image_grid_thw.shape[0] == 0:  # no image slots: all tokens are text
      image_grid_thw = jnp.zeros((1, 3), jnp.int32)
    return mrope_positions(input_ids, attention_mask, image_grid_thw, self.cfg.image_token_id,
                           self.cfg.vision.spatial_merge_size)

  def rope(self, positions):
    t = self.cfg.text
    return mrope_cos_sin(positions, t.head_dim, t.rope_theta, t.mrope_section, self.dtype)

  def head_weight(self):
    """(D, vocab) output projection: the embedding table's transpose when tied."""
    if self.lm_head is None:
      return self.embed_tokens[...].T
    return self.lm_head[...]

  def logits(self, hidden):
    """Logits for the given hidden states (..., D) -> (..., vocab), fp32."""
    return jnp.dot(hidden.astype(self.dtype), self.head_weight().astype(self.dtype),
                   preferred_element_type=jnp.float32)

  # ------------------------------------------------------------------------------------------ forward

  def hidden_states(self, input_ids, attention_mask, pixel_values=None, image_grid_thw=None):
    """Static batch -> final normed hidden states (B, L, D); no cache (training and scoring)."""
    input_ids = sharding.constrain(input_ids, ("batch", "length"))
    x = self.embed(input_ids, pixel_values, image_grid_thw)
    x = sharding.constrain(x, ("batch", "length", "act_embed"))
    pos, _ = self.positions(input_ids, attention_mask, image_grid_thw)
    cos, sin = self.rope(pos)
    l = input_ids.shape[1]
    causal = jnp.arange(l)[None, :] <= jnp.arange(l)[:, None]
    allowed = causal[None] & attention_mask.astype(bool)[:, None, :]
    h, _ = self.decoder(x, cos, sin, allowed)
    return h

  def completion_hidden_states(self, prompt_ids, prompt_mask, pixel_values, image_grid_thw, completion_ids):
    """Teacher-forced scoring of sampled completions, G per prompt: the hidden states (N, Lc, D) that predict
    completion tokens 0..Lc-1 (N = G x prompts; a prompt's G completions are consecutive rows).

    prompt_ids / prompt_mask (B, Lp): left-padded prompts as the sampler saw them; pixel_values / image_grid_thw:
    the prompts' image slots, run through the vision tower once and shared by the G rows of each prompt;
    completion_ids (N, Lc). Positions are those the sampler used: M-RoPE ids over the prompt, then text positions
    continuing from the prompt's last position; a sampled token that happens to be an image id is text here, as
    it was for the sampler. Tokens after a row's stop token are attended to by nothing before them (causal), so
    their values do not matter.
    """
    b, lp = prompt_ids.shape
    n, lc = completion_ids.shape
    if n % b:
      raise ValueError(f"{n} completions are not a whole number per prompt for {b} prompts")
    g = n // b
    prompt_ids = sharding.constrain(prompt_ids, ("batch", "length"))
    xp = self.embed(prompt_ids, pixel_values, image_grid_thw)  # vision once per prompt
    pos_p, deltas = self.positions(prompt_ids, prompt_mask, image_grid_thw)  # (3, B, Lp), (B,)
    next_pos = prompt_mask.sum(axis=1).astype(jnp.int32) + deltas  # what the sampler calls next_pos
    rep = functools.partial(jnp.repeat, repeats=g, axis=0)
    xc = jnp.take(self.embed_tokens[...], completion_ids, axis=0).astype(self.dtype)
    x = jnp.concatenate([rep(xp), xc], axis=1)
    x = sharding.constrain(x, ("batch", "length", "act_embed"))
    pos_c = rep(next_pos)[:, None] + jnp.arange(lc, dtype=jnp.int32)[None]
    pos = jnp.concatenate([jnp.repeat(pos_p, g, axis=1), jnp.broadcast_to(pos_c[None], (3, n, lc))], axis=2)
    cos, sin = self.rope(pos)
    length = lp + lc
    causal = jnp.arange(length)[None, :] <= jnp.arange(length)[:, None]
    keys = jnp.concatenate([rep(prompt_mask).astype(bool), jnp.ones((n, lc), bool)], axis=1)
    h, _ = self.decoder(x, cos, sin, causal[None] & keys[:, None, :])
    return h[:, lp - 1:lp + lc - 1]

  def prefill(self, input_ids, attention_mask, pixel_values, image_grid_thw, cache: KVCache):
    """Runs the prompt into cache slots [0, L); returns (hidden (B, L, D), cache, rope deltas (B,))."""
    x = self.embed(input_ids, pixel_values, image_grid_thw)
    pos, deltas = self.positions(input_ids, attention_mask, image_grid_thw)
    cos, sin = self.rope(pos)
    l, s = input_ids.shape[1], cache.key_mask.shape[1]
    key_mask = jax.lax.dynamic_update_slice(cache.key_mask, attention_mask.astype(jnp.int32), (0, 0))
    allowed = (jnp.arange(s)[None, :] <= jnp.arange(l)[:, None])[None] & key_mask.astype(bool)[:, None, :]
    h, cache = self.decoder(x, cos, sin, allowed, cache._replace(key_mask=key_mask), write_index=0)
    return h, cache, deltas

  def decode_step(self, tokens, positions, cache: KVCache, write_index, layers=None):
    """One token per row at cache slot `write_index`: tokens (B,), positions (B,) text positions (all 3 rows).

    Fastest with a per-layer cache (`cache.unstacked()`) and `layers=self.decoder.unstacked_layers()` made
    once outside the decode loop."""
    x = jnp.take(self.embed_tokens[...], tokens[:, None], axis=0).astype(self.dtype)
    pos = jnp.broadcast_to(positions[None, :, None], (3,) + tokens.shape + (1,))
    cos, sin = self.rope(pos)
    s = cache.key_mask.shape[1]
    key_mask = cache.key_mask.at[:, write_index].set(1)
    allowed = (jnp.arange(s) <= write_index)[None, None, :] & key_mask.astype(bool)[:, None, :]
    h, cache = self.decoder(x, cos, sin, allowed, cache._replace(key_mask=key_mask), write_index=write_index,
                            layers=layers)
    return h[:, 0], cache

  # ------------------------------------------------------------------------------------------ HF-style call

  def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, **ignored):
    b = batch_lib.pad_hf_inputs(
        np.asarray(input_ids), None if attention_mask is None else np.asarray(attention_mask),
        None if pixel_values is None else np.asarray(pixel_values, np.float32),
        None if image_grid_thw is None else np.asarray(image_grid_thw), pad_token_id=0,
        patch_dim=self.cfg.vision.patch_dim, length_buckets=batch_lib.PROMPT_LENGTH_BUCKETS)
    batch_lib.check_image_tokens(b["input_ids"], b["image_grid_thw"], self.cfg.image_token_id,
                                 self.cfg.vision.merge_unit)
    length = b.pop("length")
    graphdef, state = nnx.split(self)
    logits = _forward_logits(graphdef, state, b)
    return logits[:, :length]


# jax.jit over (graphdef, state) rather than nnx.jit: the latter walks the module graph on every call, which
# costs more than a small model's whole forward pass on CPU.
@functools.partial(jax.jit, static_argnums=0)
def _forward_logits(graphdef, state, batch: dict):
  model = nnx.merge(graphdef, state)
  h = model.hidden_states(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                          batch["image_grid_thw"])
  return model.logits(h)
