"""The readers' command line: reads one file (folder, TFDS name) and prints its record, task, skip and note counts.

    python -m tinyrs_jax.data.readers --format=llava --path=data/train.jsonl [--strict] [--verify_images]
"""
import json

from tinyrs_jax.data.readers import read_records, reader_names
from tinyrs_jax.data.records import SkipCounter


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  skips = SkipCounter(strict=f.strict, name=f.path)
  options = json.loads(f.options)
  n, tasks = 0, {}
  for record in read_records(f.format, f.path, skips=skips, verify_images=f.verify_images, **options):
    n += 1
    tasks[record.task] = tasks.get(record.task, 0) + 1
  print(json.dumps({"records": n, "tasks": tasks, "skipped": dict(skips.skipped), "notes": dict(skips.notes)},
                   indent=1))


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("format", "llava", f"one of {reader_names()}")
  flags.DEFINE_string("path", None, "file, folder or TFDS name", required=True)
  flags.DEFINE_bool("strict", False, "raise on the first bad record instead of counting skips")
  flags.DEFINE_bool("verify_images", False, "decode every image")
  flags.DEFINE_string("options", "{}", "reader options as JSON, e.g. '{\"split\": \"test\"}'")
  app.run(main)
