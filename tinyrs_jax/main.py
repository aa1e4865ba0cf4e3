"""Entry point of every trainer: `python -m tinyrs_jax.main --config=configs/<stage>.py[:variant] --workdir=DIR`.

  --config            a config file; `:variant` after the path picks a variant (e.g. `:demo`)
  --config.<field>=x  overrides any field of the config (a field that does not exist is an error)
  --workdir           checkpoints, metrics.jsonl, TensorBoard events; an existing workdir is resumed

config.trainer picks the trainer module (sft for stages 1-3, grpo for stage 4, eval for configs/eval.py: the
benchmarks, tinyrs_jax/evaluation). Reward weights are config fields
`rewards.<name>`; a reward a user module registers (config.reward_modules) is weighted the same way, e.g.
`--config.reward_modules=my_lab.rewards --config.rewards.my_iou=1.0`. Multi-host: every host runs the same command;
see config.distributed (TPU pods and SLURM are detected, or pass the coordinator explicitly).
"""
from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

TRAINERS = {"sft": "tinyrs_jax.train.sft", "grpo": "tinyrs_jax.train.grpo_trainer",
            "eval": "tinyrs_jax.evaluation.evaluator"}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/pretrain.py or configs/pretrain.py:demo. Any field can be "
    "overridden with --config.<field>=<value>.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics.jsonl, TensorBoard events. "
                               "An existing one is resumed from its latest checkpoint.")
flags.mark_flags_as_required(["config", "workdir"])

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the job stopped early (checkpoint saved) and should be rerun


class _QuietLibraries:
  """Keeps orbax's and grain's per-file INFO chatter out of the log (their warnings and errors stay)."""

  def filter(self, record) -> bool:
    path = getattr(record, "pathname", "")
    return record.levelno >= 30 or not any(f"/{lib}/" in path for lib in ("orbax", "grain"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  if _REWARD_WEIGHTS:
    if "rewards" not in config:
      raise app.UsageError(f"--config.rewards.* given but {config.trainer!r} has no rewards")
    with config.unlocked():
      for name, weight in _REWARD_WEIGHTS.items():
        config.rewards[name] = weight
  if "://" in _WORKDIR.value:
    raise app.UsageError(f"--workdir={_WORKDIR.value}: use a filesystem path every host sees (NFS, Filestore, or "
                         "a bucket mounted with gcsfuse), not a URL")
  workdir = os.path.abspath(_WORKDIR.value)
  from tinyrs_jax.train import distributed
  distributed.initialize(config.get("distributed"))
  if config.trainer not in TRAINERS:
    raise app.UsageError(f"config.trainer={config.trainer!r}; known trainers: {sorted(TRAINERS)}")
  logging.info("config:\n%s", config)
  trainer = importlib.import_module(TRAINERS[config.trainer])
  summary = trainer.train_and_evaluate(config, workdir)
  if summary.get("preempted"):
    sys.exit(PREEMPTED_EXIT_CODE)


_REWARD_WEIGHTS: dict[str, float] = {}


def _take_reward_weights(argv):
  """`--config.rewards.<name>=<weight>` may name a reward the config does not list yet (one a user module
  registers), which a locked config refuses: these are taken out of argv and set after parsing."""
  rest = []
  for a in argv:
    if a.startswith("--config.rewards.") and "=" in a:
      name, value = a[len("--config.rewards."):].split("=", 1)
      try:
        _REWARD_WEIGHTS[name] = float(value)
      except ValueError:
        sys.stderr.write(f"FATAL config override error: {a}: a reward weight must be a number\n")
        sys.exit(1)
    else:
      rest.append(a)
  return rest


def load_config(argv: list[str]):
  """The config the trainer would run for these arguments (`--config=FILE[:variant]` and `--config.<field>=value`
  overrides, parsed by the same ml_collections flag the trainer defines, on flag values of their own), without
  running anything: tools/aot loads its configuration here, so an override it accepts or suggests is one the
  trainer accepts. Returns (config, the arguments that are not config flags)."""
  mine = [a for a in argv if a == "--config" or a.startswith("--config=") or a.startswith("--config.")]
  rest = [a for a in argv if a not in mine]
  weights = {}
  for a in list(mine):
    if a.startswith("--config.rewards.") and "=" in a:  # as _take_reward_weights: a user reward may be new
      name, value = a[len("--config.rewards."):].split("=", 1)
      weights[name] = float(value)
      mine.remove(a)
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv, lock_config=True,
                                           sys_argv=["load_config", *mine])
  fv(["load_config", *mine])
  config = holder.value
  if weights:
    with config.unlocked():
      for name, weight in weights.items():
        config.rewards[name] = weight
  return config, rest


def _parse_flags(argv):
  """absl's flag parsing, with a one-line error for a config override that names no field."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.\n")
  except (AttributeError, KeyError) as e:
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    msg = str(e.args[0] if e.args else e).strip("\"'").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
    sys.stderr.write(f"FATAL config override error: no such config field {msg} (overrides given: {bad}).\n")
  sys.exit(1)


def run():
  sys.argv = _take_reward_weights(sys.argv)  # config_flags reads overrides from sys.argv itself
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
