"""Loading, the forward pass and generation never import torch or transformers' model code."""
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

from hf_reference import build_hf_model, save_hf_model  # noqa: E402

SCRIPT = textwrap.dedent("""
    import sys
    {hide}
    import numpy as np
    import tinyrs_jax
    model = tinyrs_jax.load({path!r})
    ids = np.array([[5, 6, 248] + [250] * 4 + [249, 7]])
    out = model(ids, pixel_values=np.ones((16, 1176), np.float32), image_grid_thw=np.array([[1, 4, 4]]))
    assert out.shape == (1, 9, 256)
    gen = tinyrs_jax.generate(model, dict(input_ids=ids, pixel_values=np.ones((16, 1176), np.float32),
                                          image_grid_thw=np.array([[1, 4, 4]])), max_new_tokens=4)
    assert gen.tokens.shape == (1, 4)
    bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.") or
                 m.startswith("transformers.models"))
    print("IMPORTED", bad)
    assert not bad, bad
""")

HIDE = textwrap.dedent("""
    import importlib.abc
    class _Hide(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
          raise ImportError(f"{name} is hidden in this test")
    sys.meta_path.insert(0, _Hide())
""")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  return save_hf_model(build_hf_model(seed=2), str(tmp_path_factory.mktemp("ck")))


@pytest.mark.parametrize("hide", [False, True], ids=["torch_installed", "torch_hidden"])
def test_runtime_does_not_need_torch(ckpt, hide):
  code = SCRIPT.format(path=ckpt, hide=HIDE if hide else "")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                     env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-3000:]
  assert "IMPORTED []" in r.stdout


TRAIN_SCRIPT = textwrap.dedent("""
    import sys, tempfile
    import jax, ml_collections
    from tinyrs_jax.models import get_preset
    from tinyrs_jax.train import input as input_lib, losses, metrics, optimizer, state as state_lib
    cfg = get_preset("tiny")
    model = state_lib.make_model(cfg)
    opt = optimizer.make_optimizer(ml_collections.ConfigDict(dict(lr=1e-3, weight_decay=0.1, max_grad_norm=1.0)),
                                   model.abstract_params, total_steps=2)
    params = jax.jit(model.build)(jax.random.PRNGKey(0))
    state = state_lib._new_state(params, opt, jax.random.PRNGKey(1))
    step = jax.jit(state_lib.make_train_step(model, opt, losses.get_loss("next_token_ce")))
    state, m = step(state, input_lib.random_batch(cfg, batch_size=2, length=48))
    w = metrics.MetricsWriter(tempfile.mkdtemp())
    w.write(1, {k: v for k, v in m.items() if k == "loss"})
    w.close()
    bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.") or
                 m.startswith("transformers.models"))
    print("IMPORTED", bad)
    assert not bad, bad
""")


def test_training_step_and_metrics_do_not_import_torch():
  r = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT], capture_output=True, text=True, timeout=300,
                     env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-3000:]
  assert "IMPORTED []" in r.stdout
