"""`python -m tinyrs_jax.tools.aot ...`: see cli.py."""
import sys

from tinyrs_jax.tools.aot.cli import main

if __name__ == "__main__":
  sys.exit(main())
