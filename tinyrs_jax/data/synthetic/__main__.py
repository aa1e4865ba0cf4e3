"""python -m tinyrs_jax.data.synthetic --out_dir=DIR --num_examples=N --seed=S (see the package docstring)."""
import json

from tinyrs_jax.data.synthetic.scene import IMAGE_SIZES
from tinyrs_jax.data.synthetic.writer import generate


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  sizes = tuple(int(x) for x in f.image_sizes.split(","))
  info = generate(f.out_dir, f.num_examples, f.seed, sizes=sizes)
  print(json.dumps(info["records"]))


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("out_dir", None, "output folder", required=True)
  flags.DEFINE_integer("num_examples", 2000, "number of scenes (each gives records for every stage)")
  flags.DEFINE_integer("seed", 0, "generator seed")
  flags.DEFINE_string("image_sizes", ",".join(map(str, IMAGE_SIZES)), "image side lengths to draw from (px)")
  app.run(main)
