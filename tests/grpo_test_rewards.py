"""A user reward module, as a lab would write one (tests load it with --config.reward_modules)."""
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
