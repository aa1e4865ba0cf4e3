"""Loading streams: peak host memory stays well under two copies of the model (a 150M-parameter fp32 one)."""
import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest

MAKE = textwrap.dedent("""
    import dataclasses, sys
    from flax import nnx
    import tinyrs_jax
    from tinyrs_jax.models import Qwen2VL, get_preset
    base = get_preset("bench_30m")
    cfg = base.replace(text=dataclasses.replace(base.text, vocab_size=32768, hidden_size=1024,
                                                intermediate_size=2816, num_hidden_layers=8,
                                                num_attention_heads=8, num_key_value_heads=2,
                                                mrope_section=(16, 24, 24)),
                       vision=dataclasses.replace(base.vision, hidden_size=1024))
    m = Qwen2VL(cfg, rngs=nnx.Rngs(0))
    tinyrs_jax.save_hf(m, sys.argv[1], max_shard_bytes=200 * 2**20)
""")

LOAD = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from flax import nnx
    import tinyrs_jax
    import tinyrs_jax.checkpoint.hf, safetensors.numpy  # every module the load uses, before the baseline
    jax.numpy.zeros(1).block_until_ready()  # runtime up before the baseline
    def rss_mb():
      return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
    base = rss_mb()
    m = tinyrs_jax.load(sys.argv[1])
    # VmHWM is this address space's own high-water mark. ru_maxrss is not: Linux carries the parent's peak over
    # exec (a vfork'd child reports its parent's), so a pytest worker that had run big tests failed this check.
    peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) / 1024
    n = sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
    print(f"PARAMS_MB {n * 4 / 2**20:.0f} PEAK_OVER_BASE_MB {peak - base:.0f}")
""")


@pytest.mark.slow
def test_load_streams(tmp_path):
  path = str(tmp_path / "ckpt")
  r = subprocess.run([sys.executable, "-c", MAKE, path], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a user's load
  r = subprocess.run([sys.executable, "-c", LOAD, path], capture_output=True, text=True, timeout=600, env=env)
  assert r.returncode == 0, r.stderr[-2000:]
  words = r.stdout.split()
  model_mb, over_mb = float(words[words.index("PARAMS_MB") + 1]), float(words[words.index("PEAK_OVER_BASE_MB") + 1])
  assert model_mb > 400
  # one copy of the model plus transients of about twice its largest tensor (the 128 MiB embedding here)
  # and allocator slack: measured 1.44-1.70x; holding a second copy (the loader before streaming) gave 2.3x
  assert over_mb < 1.85 * model_mb, (model_mb, over_mb)
