"""A user reward module, as a lab would write one (tests load it with --config.reward_modules)."""
import os

from tinyrs_jax.rewards import register_reward


@register_reward("vowels")
def vowels(completions, examples, **options):
  """The share of vowels among the letters: varies even for a random policy's output, so GRPO has advantages."""
  del examples, options
  out = []
  for text in completions:
    letters = [c for c in text.lower() if c.isalpha()]
    out.append(sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0)
  return out


@register_reward("starts_with_vowel")
def starts_with_vowel(completions, examples, **options):
  """1 when the first letter is a vowel: a binary reward on which a random policy's groups sometimes agree (what
  dynamic sampling filters on). Also checks what the trainer promises a reward: the prompt's text, no padding."""
  del options
  for e in examples:
    assert not e["is_padding"] and isinstance(e["prompt"], str) and e["prompt"], e
  out = []
  for text in completions:
    letters = [c for c in text.lower() if c.isalpha()]
    out.append(float(bool(letters) and letters[0] in "aeiou"))
  return out


_CALLS = {"n": 0}


@register_reward("explode")
def explode(completions, examples, **options):
  """Raises from its TINYRS_TEST_EXPLODE_AT-th call on (a user reward with a bug that shows after a while)."""
  del options
  _CALLS["n"] += 1
  if 0 < int(os.environ.get("TINYRS_TEST_EXPLODE_AT", "0")) <= _CALLS["n"]:
    raise KeyError("bbox")
  return [0.0] * len(completions)
