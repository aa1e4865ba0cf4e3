"""libtpu kept aside (tinyrs_jax/tools/libtpu_aside.py): the test extra does not install it, tools/aot finds it
(TPU_LIBRARY_PATH, an installed package, the copy under $TINYRS_CACHE) and sets TPU_LIBRARY_PATH for its own call
only, and a plain JAX process does not load it. The real install and compile are tests/test_aot.py's."""
import ast
import os
import subprocess
import sys

import pytest

from tinyrs_jax.tools import libtpu_aside

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _touch(path) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  open(path, "wb").close()
  return str(path)


@pytest.fixture
def clean(monkeypatch, tmp_path):
  """No TPU_LIBRARY_PATH, no installed libtpu, an empty $TINYRS_CACHE."""
  monkeypatch.delenv(libtpu_aside.ENV, raising=False)
  monkeypatch.setenv("TINYRS_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(libtpu_aside, "_installed_library", lambda: None)
  return tmp_path


def test_the_test_extra_does_not_install_libtpu():
  tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
  extras = next(kw.value for node in ast.walk(tree) if isinstance(node, ast.Call)
                for kw in node.keywords if kw.arg == "extras_require")
  extras = ast.literal_eval(extras)
  assert not [r for r in extras["test"] if "libtpu" in r or "[tpu]" in r], extras["test"]
  assert any("[tpu]" in r for r in extras["tpu"])  # TPU users still get it the usual way


def test_requirement_is_the_series_jax_pins():
  assert libtpu_aside.requirement().startswith("libtpu==")
  assert libtpu_aside.aside_dir().endswith(f"libtpu-{libtpu_aside.version()}")
  assert "*" not in libtpu_aside.version()


def test_find_order(clean, monkeypatch):
  assert libtpu_aside.find() is None
  aside = _touch(os.path.join(libtpu_aside.aside_dir(), "libtpu", "libtpu.so"))
  assert libtpu_aside.find() == aside
  installed = _touch(clean / "site" / "libtpu" / "libtpu.so")
  monkeypatch.setattr(libtpu_aside, "_installed_library", lambda: installed)
  assert libtpu_aside.find() == installed
  env = _touch(clean / "elsewhere" / "libtpu.so")
  monkeypatch.setenv(libtpu_aside.ENV, env)
  assert libtpu_aside.find() == env
  monkeypatch.setenv(libtpu_aside.ENV, str(clean / "missing.so"))  # not a file: the next in line
  assert libtpu_aside.find() == installed


def test_install_runs_pip_target_and_is_atomic(clean, monkeypatch):
  calls = []

  def fake_pip(cmd, **kw):
    calls.append(cmd)
    target = cmd[cmd.index("--target") + 1]
    if len(calls) == 1:  # the first install fails half-way
      _touch(os.path.join(target, "libtpu", "__init__.py"))
      return subprocess.CompletedProcess(cmd, 1, "", "no network")
    _touch(os.path.join(target, "libtpu", "libtpu.so"))
    return subprocess.CompletedProcess(cmd, 0, "", "")

  monkeypatch.setattr(libtpu_aside.subprocess, "run", fake_pip)
  with pytest.raises(RuntimeError, match="no network"):
    libtpu_aside.install()
  parent = os.path.dirname(libtpu_aside.aside_dir())
  assert os.listdir(parent) == [], "a failed install leaves nothing behind"
  assert libtpu_aside.find() is None
  path = libtpu_aside.install()
  assert path == os.path.join(libtpu_aside.aside_dir(), "libtpu", "libtpu.so") == libtpu_aside.find()
  assert calls[-1][:3] == [sys.executable, "-m", "pip"] and libtpu_aside.requirement() in calls[-1]
  assert "--no-deps" in calls[-1]
  assert os.listdir(parent) == [os.path.basename(libtpu_aside.aside_dir())]
  assert libtpu_aside.install() == path and len(calls) == 2  # already there: no second download


def test_activated_sets_tpu_library_path_for_the_block_only(clean):
  with libtpu_aside.activated() as path:
    assert path is None and libtpu_aside.ENV not in os.environ
  aside = _touch(os.path.join(libtpu_aside.aside_dir(), "libtpu", "libtpu.so"))
  before = list(sys.path)
  with libtpu_aside.activated() as path:
    assert path == aside and os.environ[libtpu_aside.ENV] == aside
    assert sys.path[0] == libtpu_aside.aside_dir()  # `import libtpu` finds the aside copy too
  assert libtpu_aside.ENV not in os.environ and sys.path == before


def test_aot_sets_it_for_its_own_call(clean, monkeypatch):
  from tinyrs_jax.tools.aot import cli
  aside = _touch(os.path.join(libtpu_aside.aside_dir(), "libtpu", "libtpu.so"))
  seen = {}

  def fake_main(argv):
    seen["env"] = os.environ.get(libtpu_aside.ENV)
    return 0

  monkeypatch.setattr(cli, "_main", fake_main)
  assert cli.main([]) == 0
  assert seen["env"] == aside
  assert libtpu_aside.ENV not in os.environ


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")
def test_a_plain_jax_process_does_not_load_libtpu():
  """What a user of the test extra gets: `import jax; jax.devices()` never loads libtpu (on machines without a TPU
  it would try to initialise it, and some print TPU errors)."""
  if libtpu_aside._installed_library() is not None:
    pytest.skip("libtpu is installed in this environment (the tpu extra), so JAX loads it: nothing to check")
  env = {k: v for k, v in os.environ.items() if k not in (libtpu_aside.ENV, "JAX_PLATFORMS")}
  p = subprocess.run([sys.executable, "-c", "import jax; jax.devices(); "
                      "print(any('libtpu' in l for l in open('/proc/self/maps')))"],
                     env=env, capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr
  assert p.stdout.strip() == "False", p.stdout
  assert "tpu" not in p.stderr.lower(), p.stderr
