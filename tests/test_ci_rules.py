"""CI cannot pass by skipping: under CI=true a skip for a missing test dependency or too few devices fails the
run (tests/conftest.py), with what is missing and how to install it; other skips stay skips; every skip is
listed with its reason (pytest.ini's -rfEs). Each case runs pytest in a subprocess on generated test files with
a copy of this suite's conftest.py and pytest.ini.

Also the README's promises: its first command is the main job, its test command is .ci/run's verbatim, it stays
a front door (size, links into docs/ that resolve, the demo table equal to docs/demo.md's)."""
import os
import re
import shutil
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))

MODULE_SKIP = """
import pytest
pytest.importorskip("tinyrs_no_such_module")

def test_never_runs():
  pass
"""

IN_TEST_SKIPS = """
import jax
import pytest

def test_passes():
  pass

def test_optional_dependency():
  pytest.importorskip("tinyrs_no_such_module.sub")

def test_needs_devices():
  if jax.device_count() < 64:
    pytest.skip("needs 64 (fake) devices")

def test_legitimately_conditional():
  pytest.skip("only on a TPU VM")

@pytest.mark.skipif(True, reason="not on this platform")
def test_marked():
  pass
"""


def pytest_run(tmp_path, files: dict, ci: bool) -> subprocess.CompletedProcess:
  for name in ("conftest.py", "pytest.ini"):
    shutil.copy(os.path.join(TESTS if name == "conftest.py" else os.path.dirname(TESTS), name), tmp_path)
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  env = {k: v for k, v in os.environ.items() if k != "CI"}
  if ci:
    env["CI"] = "true"
  return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_missing_module_dependency_fails_the_run_under_ci(tmp_path):
  p = pytest_run(tmp_path, {"test_mod.py": MODULE_SKIP}, ci=True)
  assert p.returncode != 0, p.stdout
  assert "ERROR test_mod.py" in p.stdout, p.stdout
  assert "CI=true, so this skip fails the run: the test dependency 'tinyrs_no_such_module' is missing" in p.stdout
  assert 'pip install -e ".[test]"' in p.stdout
  assert "test_mod.py:3:" in p.stdout, p.stdout  # where the importorskip is


def test_in_test_dependency_and_device_skips_fail_others_stay_skips_under_ci(tmp_path):
  p = pytest_run(tmp_path, {"test_in.py": IN_TEST_SKIPS}, ci=True)
  assert p.returncode == 1, p.stdout
  assert "2 failed, 1 passed, 2 skipped" in p.stdout, p.stdout
  summary = p.stdout[p.stdout.index("short test summary info"):]
  assert "FAILED test_in.py::test_optional_dependency - CI=true, so this skip fails the run: the test dependency " \
         "'tinyrs_no_such_module' is missing" in summary, summary
  assert "FAILED test_in.py::test_needs_devices - CI=true, so this skip fails the run: too few devices " \
         "(needs 64 (fake) devices; jax sees" in summary, summary
  assert "XLA_FLAGS=--xla_force_host_platform_device_count=8" in p.stdout
  assert "SKIPPED [1] test_in.py:16: only on a TPU VM" in summary, summary
  assert "SKIPPED [1] test_in.py:18: not on this platform" in summary, summary


def test_without_ci_they_are_skips_listed_with_their_reasons(tmp_path):
  p = pytest_run(tmp_path, {"test_mod.py": MODULE_SKIP, "test_in.py": IN_TEST_SKIPS}, ci=False)
  assert p.returncode == 0, p.stdout
  assert "1 passed, 5 skipped" in p.stdout, p.stdout
  assert "SKIPPED [1] test_mod.py:3: could not import 'tinyrs_no_such_module'" in p.stdout, p.stdout
  assert "SKIPPED [1] test_in.py:9: could not import 'tinyrs_no_such_module.sub'" in p.stdout, p.stdout
  assert "SKIPPED [1] test_in.py:13: needs 64 (fake) devices" in p.stdout, p.stdout
  assert "CI=true" not in p.stdout


def test_ci_skip_classification():
  import conftest
  assert "'torch'" in conftest.ci_skip_problem("could not import 'torch': No module named 'torch'")
  assert "'tensorflow-datasets'" in conftest.ci_skip_problem(
      "could not import 'tensorflow_datasets': No module named 'tensorflow_datasets'")
  assert "'transformers'" in conftest.ci_skip_problem(
      "could not import 'transformers.models.qwen2_vl.image_processing_pil_qwen2_vl': No module named ...")
  for devices in ("needs 8 (fake) devices", "needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)",
                  "fewer than 2 devices", "device count too small"):
    assert "too few devices" in conftest.ci_skip_problem(devices), devices
  for legit in ("only on a TPU VM", "not on this platform", "slow", "GPU only"):
    assert conftest.ci_skip_problem(legit) is None, legit


# ------------------------------------------------------------------ the README's commands, its links, its size
REPO = os.path.dirname(TESTS)


def _read(*parts: str) -> str:
  with open(os.path.join(REPO, *parts), encoding="utf-8") as f:
    return f.read()


def _fenced_blocks(text: str) -> list[str]:
  return [m.group(1).strip() for m in re.finditer(r"^```[a-z]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def _demo_table(text: str) -> str:
  lines = text.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith("| stage | caption CIDEr"))
  end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
  return "\n".join(lines[start:end])


def test_readme_first_block_is_the_main_job_and_the_test_command_is_what_ci_runs():
  readme = _read("README.md")
  blocks = _fenced_blocks(readme)
  main_job = blocks[0]
  assert main_job.startswith("pip install -e ") and "&& " in main_job, main_job  # installs, then runs
  assert main_job in _fenced_blocks(_read("docs", "demo.md")), "docs/demo.md shows the README's main job"
  ci_lines = [l for l in _read(".ci", "run").splitlines() if l.strip() and not l.lstrip().startswith("#")]
  test_command = next(l for l in ci_lines if "pytest" in l)
  assert blocks[1] == test_command, (blocks[1], test_command)
  assert test_command == 'pip install -e ".[test]" && python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests'
  assert '"pytest-xdist"' in _read("setup.py"), "-n 2 needs pytest-xdist in the test extra"
  assert _fenced_blocks(_read("docs", "testing.md"))[0] == test_command


def test_readme_is_a_front_door_and_its_links_resolve():
  readme = _read("README.md")
  assert len(readme.encode()) <= 12_000, f"README.md is {len(readme.encode())} bytes: move detail into docs/"
  assert _demo_table(readme) == _demo_table(_read("docs", "demo.md")), "the demo's table: README != docs/demo.md"
  pages = ["README.md"] + [os.path.join("docs", n) for n in sorted(os.listdir(os.path.join(REPO, "docs")))
                           if n.endswith(".md")]
  for page in pages:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _read(page)):
      if "://" in target:
        continue
      path = os.path.normpath(os.path.join(REPO, os.path.dirname(page), target))
      assert os.path.exists(path), f"{page} links to {target}, which does not exist"
  for name in ("demo", "testing", "qwen2_vl", "data", "grpo", "ablations", "evaluation", "fitting", "benchmarks"):
    assert f"(docs/{name}.md)" in readme, name


# ------------------------------------------------------------------------------------------ .ci/run itself
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1 $2" = "-m pytest" ]; then echo "pytest saw CI=$CI"; exit "$FAKE_PYTEST_RC"; fi
cat >/dev/null 2>&1 || true
echo "python stub $*"
"""


@pytest.mark.parametrize("rc", [0, 1])
def test_ci_run_exports_ci_and_prints_its_wall_time_even_on_failure(tmp_path, rc):
  """.ci/run with python and pip stubbed: pytest sees CI=true whatever the runner set, the script's status is
  pytest's, and the last line is the wall time, also when the tests fail."""
  (tmp_path / ".ci").mkdir()
  shutil.copy(os.path.join(REPO, ".ci", "run"), tmp_path / ".ci" / "run")
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in (("python", FAKE_PYTHON), ("pip", "#!/usr/bin/env bash\necho pip stub\n")):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  env = {k: v for k, v in os.environ.items() if k != "CI"}
  env.update(PATH=f"{bin_dir}:{env['PATH']}", FAKE_PYTEST_RC=str(rc), HOME=str(tmp_path))
  p = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
  assert p.returncode == rc, (p.stdout, p.stderr)
  assert "pytest saw CI=true" in p.stdout, p.stdout
  last = p.stdout.strip().splitlines()[-1]
  assert re.fullmatch(r"CI wall time: 0 min \d+ s", last), last
