"""Test session setup: 8 fake CPU devices and JAX's persistent compilation cache, set once before jax loads."""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))  # tests/hf_reference.py and friends

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/tinyrs_jax_xla")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
