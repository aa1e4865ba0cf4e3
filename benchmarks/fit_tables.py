"""The README's real-2B recipe flags and docs/fit_tables.md: tools/aot for every stage on every recipe target.

    python benchmarks/fit_tables.py --out=runs/fit --gpu_python=/path/to/gpu-venv/bin/python
    python benchmarks/fit_tables.py --out=runs/fit --markdown=docs/fit_tables.md   # only rewrite the tables

Each (stage, target) runs `python -m tinyrs_jax.tools.aot --config=configs/<stage>.py --target=<target>` from the
config's defaults with the levers on, so the flags it reports are the first standard ones that fit; its JSON and
log go to OUT/<stage>_<target>.{json,log}, and a pair already there is not recompiled. pretrain stands for the
three SFT stages (instruct and cot have its shapes and compile to the same programs). TPU targets need the tpu
extra (libtpu), GPU targets the gpu extra (jax[cuda12], in its own environment: --gpu_python); neither needs
the accelerator. GPU capacities are the 75 % JAX preallocates by default (XLA_PYTHON_CLIENT_MEM_FRACTION unset),
and the verdicts keep tools/aot's default headroom (5 % of that on GPUs, none on TPUs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tinyrs_jax.tools import aot  # noqa: E402  (parsing only: no libtpu or CUDA in this process)

STAGES = ("pretrain", "grpo", "eval")
TARGETS = ("h100x1", "h100x8", "h200x1", "h200x8", "h100x16", "v5p-8", "v5e-16")
WHAT = {"pretrain": "pretrain, instruct, cot", "grpo": "grpo", "eval": "eval"}


def compile_all(out: str, stages, targets, gpu_python: str) -> None:
  out = os.path.abspath(out)  # the tool runs in the repository root
  os.makedirs(out, exist_ok=True)
  for target in targets:
    py = gpu_python if aot.parse_target(target).platform == "cuda" else sys.executable
    for stage in stages:
      base = os.path.join(out, f"{stage}_{target}")
      if os.path.exists(base + ".json"):
        continue
      env = dict(os.environ, JAX_PLATFORMS="cpu")
      for k in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION"):
        env.pop(k, None)
      t0 = time.time()
      with open(base + ".log", "w") as log:
        rc = subprocess.call([py, "-m", "tinyrs_jax.tools.aot", f"--config=configs/{stage}.py", f"--target={target}",
                              f"--json={base}.json"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
      print(f"{stage} on {target}: exit {rc} in {time.time() - t0:.0f} s", flush=True)


def _gib(n: float) -> str:
  return f"{n / aot.GiB:.2f}"


def fitting(report: dict) -> tuple[dict | None, list[dict]]:
  """(flags added to the defaults or None when nothing fits, the fitting configuration's programs)."""
  if report["fits"]:
    return {}, report["programs"]
  if report.get("suggestion"):
    config = aot._load_config_module(os.path.join(ROOT, report["config"]))
    flags = {k: v for k, v in report["suggestion"]["flags"].items() if _get(config, k) != v}
    return flags, report["suggestion"]["programs"]
  return None, report["programs"]


def _get(config, dotted: str):
  for k in dotted.split("."):
    config = config[k]
  return config


def program_table(programs: list[dict], target: aot.Target) -> list[str]:
  peak = target.spec.peak_tflops * 1e12
  rows = ["| program | arguments | outputs | temps | aliased | other live | total | TFLOP/chip | t@peak |",
          "|---|---|---|---|---|---|---|---|---|"]
  for p in programs:
    if p["error"]:
      rows.append(f"| {p['name']} | | | | | {_gib(p['other_live'])} | > capacity | | |")
      continue
    rows.append(f"| {p['name']} | {_gib(p['arguments'])} | {_gib(p['outputs'])} | {_gib(p['temporaries'])} | "
                f"{_gib(p['aliased'])} | {_gib(p['other_live'])} | **{_gib(p['total'])}** | "
                f"{p['model_flops_per_chip'] / 1e12:.0f} | {p['model_flops_per_chip'] / peak:.2f} s |")
  return rows


def flags_text(flags: dict | None) -> str:
  if flags is None:
    return "nothing from the standard levers fits"
  return "defaults" if not flags else " ".join(f"`--config.{k}={v}`" for k, v in flags.items())


def estimate_of(report: dict) -> dict | None:
  """The step estimate of the configuration that fits (the defaults', or the suggestion's)."""
  if report["fits"]:
    return report.get("estimate")
  return (report.get("suggestion") or {}).get("estimate")


def estimate_table(reports: dict, stages, targets) -> list[str]:
  """Step time, run time and chip-hours per 1,000 steps (evaluation: batches) of each stage on each target, from
  tools/aot's roofline estimate: lower bounds (estimate.py)."""
  rows, any_estimate = [], False
  for target in targets:
    cells = []
    for stage in stages:
      r = reports.get((stage, target))
      e = estimate_of(r) if r is not None else None
      if e is None:
        cells.append("not estimated" if r is not None else "not run")
        continue
      any_estimate = True
      per_k = e["step_s"] * 1000
      step = (f"{e['step_s']:.3g} s ({e['step_s_at_max']:.3g} s at max new tokens)" if e["completion_tokens"]
              else f"{e['step_s']:.3g} s")
      cells.append(f"{step}; {per_k / 3600:.3g} h, {per_k * e['num_chips'] / 3600:.3g} chip-h per 1,000")
    rows.append(f"| {target} | " + " | ".join(cells) + " |")
  if not any_estimate:
    return []
  return ["", "Estimated step time (roofline lower bound: tools/aot's estimate, docs/fitting.md \"What will it "
          "cost?\"), and wall time and chip-hours per 1,000 steps (evaluation: batches); GRPO and evaluation at "
          "256 new tokens per completion and at the limit:", "",
          "| target | " + " | ".join(WHAT[s] for s in stages) + " |", "|---|" + "---|" * len(stages)] + rows


def markdown(out: str, stages, targets) -> str:
  reports = {}
  for stage in stages:
    for target in targets:
      path = os.path.join(out, f"{stage}_{target}.json")
      if os.path.exists(path):
        with open(path) as f:
          reports[stage, target] = json.load(f)
  lines = ["# Will the 2B fit? tools/aot at the recipes' real shapes",
           "",
           "Written by `python benchmarks/fit_tables.py` (jax 0.10.2, libtpu 0.0.42.1, jax-cuda12-plugin 0.10.2, "
           "compile-only devices on a 2-core CPU). Every run starts from the stage config's defaults with the "
           "levers on; the flags are the first standard ones that fit. GiB per chip; GPU capacity is the 75 % "
           "JAX preallocates, and a GPU program fits under 95 % of it (tools/aot's default headroom for what no "
           "program accounts for: NCCL buffers, fragmentation); t@peak is the step at 100 % MFU (bf16 dense peak).",
           "",
           "| target | " + " | ".join(WHAT[s] for s in stages) + " |",
           "|---|" + "---|" * len(stages)]
  for target in targets:
    cells = []
    for stage in stages:
      r = reports.get((stage, target))
      if r is None:
        cells.append("not run")
        continue
      flags, progs = fitting(r)
      peak = max((p["total"] for p in progs if not p["error"]), default=0)
      cells.append(f"{flags_text(flags)} ({_gib(peak)} of {_gib(progs[0]['capacity'])})" if flags is not None
                   else flags_text(flags))
    lines.append(f"| {target} | " + " | ".join(cells) + " |")
  lines += estimate_table(reports, stages, targets)
  for target in targets:
    t = aot.parse_target(target)
    done = [r for (_, tg), r in reports.items() if tg == target]
    if not done:
      continue
    capacity = done[0]["programs"][0]["capacity"]  # as the compile saw it (GPU: its memory fraction)
    lines += ["", f"## {target}: {t.num_chips} x {t.spec.kind}, {_gib(capacity)} GiB per chip", ""]
    for stage in stages:
      r = reports.get((stage, target))
      if r is None:
        continue
      flags, progs = fitting(r)
      over = [f"{p['name']} ({'refused by the compiler' if p['error'] else _gib(p['total']) + ' GiB'})"
              for p in r["programs"] if p["error"] or not p["fits"]]
      head = f"`configs/{stage}.py` ({WHAT[stage]}): {flags_text(flags)}"
      if over:
        head += f"; the defaults do not fit: {', '.join(over)}"
      lines += [head, ""] + program_table(progs, t) + [""]
  return "\n".join(lines).rstrip() + "\n"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="runs/fit", help="where the JSON reports and logs go")
  p.add_argument("--stages", default=",".join(STAGES))
  p.add_argument("--targets", default=",".join(TARGETS))
  p.add_argument("--gpu_python", default=sys.executable, help="a python with the gpu extra, for GPU targets")
  p.add_argument("--markdown", default="", help="write the tables here (and compile nothing)")
  args = p.parse_args()
  stages, targets = args.stages.split(","), args.targets.split(",")
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(markdown(args.out, stages, targets))
    print(f"wrote {args.markdown}")
    return
  compile_all(args.out, stages, targets, args.gpu_python)


if __name__ == "__main__":
  main()
