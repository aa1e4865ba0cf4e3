"""BUILD mirrors the package: every module and every test file is named by a Bazel target (checked as text)."""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build_srcs():
  text = open(os.path.join(ROOT, "BUILD")).read()
  tree = ast.parse(text)  # BUILD files are Starlark, a Python subset: parse it as such
  srcs = set()
  for call in ast.walk(tree):
    if isinstance(call, ast.Call):
      for kw in call.keywords:
        if kw.arg in ("srcs", "data") and isinstance(kw.value, (ast.List, ast.Call)):
          for node in ast.walk(kw.value):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
              srcs.add(node.value)
  globs = re.findall(r'glob\(\[\s*"([^"]+)"', text)
  return srcs, globs


def _python_files(top):
  for d, _, files in os.walk(os.path.join(ROOT, top)):
    for f in files:
      if f.endswith(".py"):
        yield os.path.relpath(os.path.join(d, f), ROOT)


def test_every_module_and_test_has_a_target():
  srcs, globs = _build_srcs()
  assert not globs, "name files explicitly; no globs"
  missing = [f for top in ("tinyrs_jax", "tests", "benchmarks", "configs") for f in _python_files(top)
             if f not in srcs]
  assert not missing, f"files not covered by BUILD: {missing}"


def test_build_names_only_existing_files():
  srcs, _ = _build_srcs()
  gone = [s for s in srcs if s.endswith(".py") and not os.path.exists(os.path.join(ROOT, s))]
  assert not gone, f"BUILD names files that do not exist: {gone}"
