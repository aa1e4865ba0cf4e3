"""Convert between Hugging Face Qwen2-VL folders and tinyrs_jax workdirs.

  # HF folder -> a workdir whose step-0 checkpoint a trainer (init.workdir) or tinyrs_jax.load reads:
  python -m tinyrs_jax.tools.convert --hf_dir=Qwen2-VL-2B-Instruct --workdir=runs/base
  # a trained workdir (latest step, or --step) -> an HF folder transformers / vLLM load:
  python -m tinyrs_jax.tools.convert --workdir=runs/grpo --hf_out=exported --dtype=bfloat16
  # HF folder -> HF folder (re-shard / change dtype), through our parameters:
  python -m tinyrs_jax.tools.convert --hf_dir=in --hf_out=out --dtype=bfloat16

Loading streams tensor by tensor; missing, extra or misshapen keys stop with the key and both shapes.
"""
from __future__ import annotations

import os

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", None, "Source Hugging Face Qwen2-VL folder.")
flags.DEFINE_string("workdir", None, "tinyrs_jax workdir: the destination with --hf_dir, else the source.")
flags.DEFINE_integer("step", None, "Checkpoint step of the source workdir (default: latest).")
flags.DEFINE_string("hf_out", None, "Destination Hugging Face folder.")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "Tensor dtype to write (default: as loaded).")
flags.DEFINE_integer("max_shard_mb", 5 * 1024, "Shard safetensors files above this size (MiB).")


def hf_to_workdir(hf_dir: str, workdir: str, dtype: str = "float32") -> str:
  """Writes the HF weights as step 0 of a workdir (params only), with the marker naming the tokenizer."""
  import orbax.checkpoint as ocp
  from flax import nnx

  import tinyrs_jax
  from tinyrs_jax.checkpoint import orbax_io
  model = tinyrs_jax.load(hf_dir, dtype=dtype)
  if orbax_io.latest_step(workdir) is not None:
    raise app.UsageError(f"{workdir} already holds checkpoints; choose an empty workdir")
  orbax_io.write_marker(workdir, model.cfg, tokenizer_dir=os.path.abspath(hf_dir),
                        extra={"converted_from": os.path.abspath(hf_dir)})
  mngr = orbax_io.checkpoint_manager(workdir, async_save=False)
  params = nnx.state(model, nnx.Param).to_pure_dict()
  mngr.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
  mngr.wait_until_finished()
  mngr.close()
  return workdir


def main(argv):
  del argv
  import tinyrs_jax
  if FLAGS.hf_dir and FLAGS.workdir and not FLAGS.hf_out:
    hf_to_workdir(FLAGS.hf_dir, FLAGS.workdir, FLAGS.dtype or "float32")
    logging.info("wrote %s (step 0)", FLAGS.workdir)
    print(f"converted {FLAGS.hf_dir} -> {FLAGS.workdir}")
    return
  if FLAGS.hf_out and (FLAGS.hf_dir or FLAGS.workdir):
    src = FLAGS.hf_dir or FLAGS.workdir
    if FLAGS.workdir and FLAGS.step is not None:
      src = os.path.join(FLAGS.workdir, "checkpoints", str(FLAGS.step))
    model = tinyrs_jax.load(src, dtype="float32")
    tinyrs_jax.save_hf(model, FLAGS.hf_out, dtype=FLAGS.dtype,
                       source_dir=FLAGS.hf_dir or getattr(model, "source_dir", None),
                       max_shard_bytes=FLAGS.max_shard_mb * 1024 * 1024)
    print(f"converted {src} -> {FLAGS.hf_out}")
    return
  raise app.UsageError("give --hf_dir with --workdir (import), or --hf_out with --hf_dir or --workdir (export)")


if __name__ == "__main__":
  app.run(main)
