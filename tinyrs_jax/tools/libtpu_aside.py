"""libtpu kept aside: the TPU compiler tools/aot needs, out of the way of every other JAX process.

Installed beside jax (the `tpu` extra, jax[tpu]), libtpu is picked up by every JAX process, which on a machine
without a TPU then tries to initialise it and, on some machines, prints TPU errors ("Failed to find host bounds
for accelerator type ...") that read like a broken install. tools/aot only needs libtpu to compile for TPU
topologies, so the `test` extra does not install it; the tool finds a copy, in this order:

  1. TPU_LIBRARY_PATH, if it names a file (JAX's own variable);
  2. an installed `libtpu` package (the `tpu` extra; what a TPU VM has);
  3. a copy under $TINYRS_CACHE/libtpu-<version> (default ~/.cache/tinyrs_jax), installed there with
     `pip install --target` by

         python -m tinyrs_jax.tools.libtpu_aside

     (<version>: the libtpu series this jax pins for its `tpu` extra; about 700 MB).

and sets TPU_LIBRARY_PATH for its own process only (`activated()`), so nothing else ever loads it.
tests/test_aot.py installs the aside copy on first use.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile

ENV = "TPU_LIBRARY_PATH"
FALLBACK_REQUIREMENT = "libtpu==0.0.42.*"  # what jax 0.10.2's `tpu` extra pins, if jax's metadata cannot be read


def requirement() -> str:
  """The libtpu requirement this jax declares for its `tpu` extra, e.g. 'libtpu==0.0.42.*'."""
  try:
    for req in importlib.metadata.requires("jax") or ():
      name, _, marker = req.partition(";")
      if re.match(r"\s*libtpu\b", name) and "tpu" in marker:
        return name.strip().replace(" ", "")
  except importlib.metadata.PackageNotFoundError:
    pass
  return FALLBACK_REQUIREMENT


def version() -> str:
  """The version part of `requirement()` without wildcards: '0.0.42'."""
  m = re.search(r"==\s*([\w.]+?)(?:\.\*)?$", requirement())
  return m.group(1) if m else "latest"


def cache_root() -> str:
  return os.environ.get("TINYRS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tinyrs_jax")


def aside_dir() -> str:
  """Where `install()` puts the copy (a pip --target folder: aside_dir()/libtpu/libtpu.so)."""
  return os.path.join(cache_root(), f"libtpu-{version()}")


def _aside_library() -> str:
  return os.path.join(aside_dir(), "libtpu", "libtpu.so")


def _installed_library() -> str | None:
  """libtpu.so of an installed `libtpu` package (found, not imported), or None."""
  try:
    spec = importlib.util.find_spec("libtpu")
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.origin:
    return None
  path = os.path.join(os.path.dirname(spec.origin), "libtpu.so")
  return path if os.path.isfile(path) else None


def find() -> str | None:
  """The libtpu.so to use: TPU_LIBRARY_PATH, else an installed package's, else the aside copy's; None if none."""
  env = os.environ.get(ENV)
  if env and os.path.isfile(env):
    return env
  installed = _installed_library()
  if installed:
    return installed
  aside = _aside_library()
  return aside if os.path.isfile(aside) else None


def install(quiet: bool = True) -> str:
  """Installs libtpu (this jax's series) under aside_dir() with `pip install --target`; returns its libtpu.so.
  Atomic: pip writes into a temporary folder beside it, renamed into place when complete, so a concurrent or
  interrupted install never leaves a half copy that find() would take."""
  final = aside_dir()
  if os.path.isfile(_aside_library()):
    return _aside_library()
  os.makedirs(os.path.dirname(final), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(final) + ".tmp-", dir=os.path.dirname(final))
  try:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--target", tmp,
           requirement()]
    if quiet:
      cmd.insert(4, "-q")
    p = subprocess.run(cmd, capture_output=quiet, text=True)
    if p.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {(p.stderr or '')[-2000:]}")
    if not os.path.isfile(os.path.join(tmp, "libtpu", "libtpu.so")):
      raise RuntimeError(f"{' '.join(cmd)} installed no libtpu/libtpu.so")
    try:
      os.rename(tmp, final)
    except OSError:
      if not os.path.isfile(_aside_library()):  # not another process's complete copy: a real failure
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return _aside_library()


@contextlib.contextmanager
def activated():
  """Within the block, JAX (and `import libtpu`) find the libtpu `find()` returns: TPU_LIBRARY_PATH is set to
  it, and an aside copy's folder is first on sys.path. Both are restored after. Yields the path (None: no libtpu;
  the caller reports it)."""
  path = find()
  saved_env, saved_path = os.environ.get(ENV), list(sys.path)
  if path is not None:
    os.environ[ENV] = path
    if path == _aside_library():
      sys.path.insert(0, aside_dir())
  try:
    yield path
  finally:
    if saved_env is None:
      os.environ.pop(ENV, None)
    else:
      os.environ[ENV] = saved_env
    sys.path[:] = saved_path


def main(argv=None) -> int:
  import argparse
  p = argparse.ArgumentParser(prog="python -m tinyrs_jax.tools.libtpu_aside",
                              description="Install libtpu under $TINYRS_CACHE for tools/aot (if no copy is found) "
                                          "and print the libtpu.so it will use.")
  p.add_argument("--find", action="store_true", help="only print what would be used (exit 1 if nothing)")
  args = p.parse_args(argv)
  path = find()
  if path is None and not args.find:
    print(f"installing {requirement()} under {aside_dir()} ...", file=sys.stderr)
    path = install(quiet=False)
  if path is None:
    print(f"no libtpu: run python -m tinyrs_jax.tools.libtpu_aside (installs {requirement()} under {aside_dir()})",
          file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
