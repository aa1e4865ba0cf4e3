"""BUILD is generated (.ci/update_build.py) and real: fresh, every module and test named by a target, every import
covered by a dep of its target, every pip requirement declared in setup.py.

The coverage check parses the imports here and reads the deps from the BUILD text, so a bug in the generator's
dependency code does not hide itself; only the import -> pip name table (data) is shared with the generator.
"""
import ast
import importlib.util
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPS = ("tinyrs_jax", "tests", "benchmarks", "configs")


def _generator():
  spec = importlib.util.spec_from_file_location("_update_build", os.path.join(ROOT, ".ci", "update_build.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _build_text():
  return open(os.path.join(ROOT, "BUILD")).read()


def _targets(text):
  """{name: {"kind", "srcs", "deps" (labels without ':'), "reqs" (pip names)}}, from BUILD parsed as Python."""
  out = {}
  for stmt in ast.parse(text).body:  # BUILD files are Starlark, a Python subset
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
      continue
    call = stmt.value
    kw = {k.arg: k.value for k in call.keywords}
    if "name" not in kw:
      continue
    t = {"kind": call.func.id, "srcs": [], "deps": [], "reqs": [], "data": []}
    for key in ("srcs", "deps", "data"):
      for node in getattr(kw.get(key), "elts", []):
        if isinstance(node, ast.Constant):
          t[key].append(node.value if key == "srcs" else node.value.lstrip(":"))
        elif isinstance(node, ast.Call) and node.func.id == "requirement":
          t["reqs"].append(node.args[0].value)
    assert kw["name"].value not in out, f"two targets named {kw['name'].value}"
    out[kw["name"].value] = t
  return out


def _python_files(top):
  for d, _, files in os.walk(os.path.join(ROOT, top)):
    for f in files:
      if f.endswith(".py"):
        yield os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/")


def _norm(pip_name):
  return re.sub(r"[-_.]+", "-", pip_name).lower()


def _candidates(path, module, names, level):
  """Files an import of `path` may resolve to in this tree (most specific first), or None when not internal."""
  folder = os.path.dirname(path)
  is_package = os.path.exists(os.path.join(ROOT, folder, "__init__.py"))
  if level:
    base = folder.split("/")
    base = base[:len(base) - (level - 1)]
    prefix = "/".join(base + (module.split(".") if module else []))
  else:
    prefix = module.replace(".", "/")
    if not is_package and os.path.exists(os.path.join(ROOT, folder, prefix.split("/")[0] + ".py")):
      prefix = f"{folder}/{prefix}"  # a script folder: siblings by bare name
    elif not os.path.exists(os.path.join(ROOT, prefix.split("/")[0])):
      return None
  out = []
  for name in names or [None]:
    p = prefix + ("/" + name if name else "")
    out.append([c for c in (p + ".py", p + "/__init__.py", prefix + ".py", prefix + "/__init__.py")
                if os.path.exists(os.path.join(ROOT, c))])
  return out


def _imports(path):
  tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        yield a.name, None, 0
    elif isinstance(node, ast.ImportFrom):
      yield node.module or "", [a.name for a in node.names], node.level
    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip" and node.args
          and isinstance(node.args[0], ast.Constant)):
      yield node.args[0].value, None, 0


def uncovered(text):
  """Every import of every module that no dep of its target (nor the target itself) covers, as strings."""
  pip = _generator().PIP
  targets = _targets(text)
  srcs_of = {name: set(t["srcs"]) for name, t in targets.items()}
  problems = []
  for name, t in sorted(targets.items()):
    if t["kind"] not in ("py_library", "py_test", "py_binary"):
      continue
    have = set(t["srcs"]).union(*(srcs_of.get(d, set()) for d in t["deps"]))
    reqs = {_norm(r) for r in t["reqs"]}
    for src in t["srcs"]:
      if any(src in srcs_of.get(d, ()) for d in t["deps"]):
        continue  # a test that runs its own library (others import it): checked on that library
      for module, names, level in _imports(src):
        found = _candidates(src, module, names, level)
        if found is not None:
          for options in found:
            if not options:
              problems.append(f"{name}: {src} imports {module} {names}: no such module")
            elif options[0] not in have:  # the most specific: `from p import m` needs m, not p
              problems.append(f"{name}: {src} imports {module} {names or ''} ({options[0]}): no dep has it")
          continue
        top = module.split(".")[0]
        if top in sys.stdlib_module_names:
          continue
        if top not in pip:
          problems.append(f"{name}: {src} imports {top}, unknown to update_build.PIP")
        elif _norm(pip[top]) not in reqs:
          problems.append(f"{name}: {src} imports {top}: no requirement(\"{pip[top]}\")")
  return sorted(set(problems))


def test_build_is_fresh():
  assert _generator().generate() == _build_text(), "BUILD is stale: run python .ci/update_build.py"


def test_every_import_is_covered_by_a_dep():
  problems = uncovered(_build_text())
  assert not problems, "\n".join(problems)


def test_a_removed_dep_is_detected():
  text = _build_text()
  # A third-party dep and an internal one, each taken out of the first library that lists it.
  for needle in ('        requirement("numpy"),\n', '        ":tinyrs_jax_sharding",\n'):
    assert needle in text
    mutated = text.replace(needle, "", 1)
    problems = uncovered(mutated)
    assert problems, f"removing {needle.strip()} went unnoticed"
  # And a single-line deps list emptied.
  one = re.search(r'    deps = \[(":[a-z_]+")\],\n', text)
  assert one and uncovered(text.replace(one.group(0), "", 1))


def _setup_requirements():
  """Normalized names declared by setup.py (install_requires and every extra), with `name[extra]` forms too."""
  tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
  specs = []
  for call in ast.walk(tree):
    if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "setup":
      for k in call.keywords:
        if k.arg in ("install_requires", "extras_require"):
          specs += [n.value for n in ast.walk(k.value) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                    and (k.arg == "install_requires" or n not in getattr(k.value, "keys", []))]
  declared = set()
  for spec in specs:
    m = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?", spec)
    declared.add(_norm(m.group(1)))
    for extra in (m.group(2) or "[]")[1:-1].split(","):
      if extra.strip():
        declared.add(f"{_norm(m.group(1))}[{extra.strip()}]")
  return declared


def test_every_requirement_is_declared_in_setup():
  declared = _setup_requirements()
  provided_by = {_norm(k): v for k, v in _generator().PROVIDED_BY.items()}
  used = {r for t in _targets(_build_text()).values() for r in t["reqs"]}
  assert used, "BUILD has no requirement() deps"
  missing = []
  for r in sorted(used):
    if _norm(r) in declared:
      continue
    via = provided_by.get(_norm(r))
    if via is None or _norm(re.sub(r"\[.*", "", via)) + re.sub(r"^[^\[]*", "", via) not in declared:
      missing.append(r)
  assert not missing, f"requirement()s setup.py does not declare: {missing}"


def test_every_module_and_test_has_a_target():
  targets = _targets(_build_text())
  srcs = {s for t in targets.values() for s in t["srcs"]}
  missing = [f for top in TOPS for f in _python_files(top) if f not in srcs]
  assert not missing, f"files not covered by BUILD: {missing}"
  tests = {t["srcs"][0] for t in targets.values() if t["kind"] == "py_test"}
  assert tests == {f for f in _python_files("tests") if os.path.basename(f).startswith("test_")}


def test_build_names_only_existing_files_and_targets():
  text = _build_text()
  assert "glob(" not in text, "name files explicitly; no globs"
  targets = _targets(text)
  gone = [s for t in targets.values() for s in t["srcs"] if not os.path.exists(os.path.join(ROOT, s))]
  assert not gone, f"BUILD names files that do not exist: {gone}"
  dangling = [(n, d) for n, t in targets.items() for d in t["deps"] + t["data"] if d not in targets]
  assert not dangling, f"deps on targets that do not exist: {dangling}"


def test_build_starts_with_how_to_regenerate():
  head = _build_text().splitlines()[:3]
  assert head[0].startswith("# GENERATED") and any("python .ci/update_build.py" in line for line in head)


def _imported_modules(path: str) -> set[str]:
  """Every module a file imports (absolute names; `from a import b` gives both a and a.b), at any depth."""
  out = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      out.add(node.module)
      out.update(f"{node.module}.{a.name}" for a in node.names)
  return out


def test_evaluation_and_tools_set_up_through_runtime_not_the_trainer():
  """Mesh, model and restored parameters come from tinyrs_jax.runtime: evaluation/ and tools/ never import the
  trainers' runner (train/runner.py), so a change to training's set-up cannot change what they run on."""
  offenders = []
  for package in ("evaluation", "tools"):
    for dirpath, _, files in os.walk(os.path.join(ROOT, "tinyrs_jax", package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(dirpath, name)
          if "tinyrs_jax.train.runner" in _imported_modules(path):
            offenders.append(os.path.relpath(path, ROOT))
  assert not offenders, f"import tinyrs_jax.runtime instead of tinyrs_jax.train.runner: {offenders}"
  assert "tinyrs_jax.runtime" in _imported_modules(os.path.join(ROOT, "tinyrs_jax", "evaluation", "evaluator.py"))
