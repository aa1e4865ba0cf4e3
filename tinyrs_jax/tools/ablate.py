"""Ablations in one command: a grid of config variants x seeds, run (or launched), compared in one table and one plot.

    python -m tinyrs_jax.tools.ablate --config=configs/grpo.py:demo --workdir=runs/ablate \\
      --sweep=rewards.accuracy=0.5,1.0 --sweep=grpo.loss_type=grpo,dapo --seeds=0,1 [--config.field=value ...]

  --sweep=FIELD=V1,V2,...  one axis of the grid (repeatable; the grid is their product), FIELD a config field
                           (`rewards.<name>` may name a reward a user module registers)
  --sweep_file=sweep.py    instead: get_sweep() returns a list of {field: value} dicts, one per variant
  --seeds=0,1              every variant runs once per seed (config.seed)
  --config.field=value     applies to every variant (e.g. --config.total_steps=20, --config.reward_modules=...)
  --launch=local           run the grid here, one run after another (default); then write the comparison
           print           print one command per run (also WORKDIR/commands.sh); run them anywhere, then
           report          write the comparison from whatever has finished
           slurm           submit one `sbatch launch/slurm_gpu.sbatch` job per run
           tpu_pod         run each through `launch/tpu_pod.sh --tpu_name --zone`, one after another

Every run is a normal workdir, WORKDIR/<variant>/seed<k>, started with the ordinary command
(`python -m tinyrs_jax.main --config=... --workdir=... --config.seed=k <overrides>`) and holding its overrides in
ablation.json. Rerunning the same ablate command skips finished runs (their trainer wrote finished.json) and
resumes interrupted ones from their checkpoints. A run that fails is reported as failed with its error, never
dropped; a run killed by a signal (SIGKILL, an out-of-memory kill) stops the sweep, to be rerun.

The comparison (from each run's metrics.jsonl alone, so it can be recomputed): WORKDIR/results.json and
results.md, per variant the mean ± std (sample std, over seeds) of the last held-out evaluation's rewards
(each component), its strict accuracy per task and grounding mean IoU, the final KL, the mean completion length
and truncated share over the run, the step time (sum of step times) and, for local runs, the wall time this tool
measured (status.json; everything else comes from metrics.jsonl); and WORKDIR/curves.png, training reward and
held-out strict accuracy by step, one colour per variant, seeds thin, their mean bold.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

_CONFIG = flags.DEFINE_string("config", None, "the config every variant starts from, e.g. configs/grpo.py:demo",
                              required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "the sweep's folder: WORKDIR/<variant>/seed<k>", required=True)
_SWEEP = flags.DEFINE_multi_string("sweep", [], "FIELD=V1,V2,...: one axis of the grid (repeatable)")
_SWEEP_FILE = flags.DEFINE_string("sweep_file", "", "a Python file whose get_sweep() returns override dicts")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "seeds (config.seed) each variant runs with")
_LAUNCH = flags.DEFINE_enum("launch", "local", ["local", "print", "report", "slurm", "tpu_pod"], "where runs go")
_TPU = flags.DEFINE_string("tpu_name", "", "--launch=tpu_pod: the TPU VM pod slice")
_ZONE = flags.DEFINE_string("zone", "", "--launch=tpu_pod: its zone")
_PYTHON = flags.DEFINE_string("python", sys.executable, "the interpreter local runs use")
_RESUBMIT = flags.DEFINE_bool("resubmit", False, "--launch=slurm: submit again runs already submitted and not "
                              "finished (after their jobs failed)")

RUN_FILE, STATUS = "ablation.json", "status.json"
NOT_IDENTITY = re.compile(r"^(debug_|log_every|checkpoint\.)")  # overrides that do not change what a run computes


# ------------------------------------------------------------------------------------------------ the grid

def parse_sweep(specs: list[str]) -> list[dict[str, str]]:
  """--sweep=a=1,2 --sweep=b=x,y -> [{a: 1, b: x}, {a: 1, b: y}, {a: 2, b: x}, {a: 2, b: y}]."""
  axes = []
  for spec in specs:
    field, sep, values = spec.partition("=")
    field = field.strip().removeprefix("--config.").removeprefix("config.")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not field or not vals:
      raise app.UsageError(f"--sweep={spec!r}: expected FIELD=V1,V2,...")
    axes.append([(field, v) for v in vals])
  return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def load_sweep_file(path: str) -> list[dict[str, str]]:
  spec = importlib.util.spec_from_file_location("_tinyrs_sweep", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  variants = module.get_sweep()
  if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
    raise app.UsageError(f"{path}: get_sweep() must return a list of {{field: value}} dicts")
  return [{str(k).removeprefix("config."): _text(v) for k, v in v.items()} for v in variants]


def _text(v) -> str:
  if isinstance(v, (list, tuple)):
    return "(" + ",".join(_text(x) for x in v) + ("," if len(v) == 1 else "") + ")"
  return str(v)


def variant_name(overrides: dict[str, str]) -> str:
  if not overrides:
    return "base"
  """'rewards.accuracy=0.5+loss_type=dapo': the last part of each field, '+' between them, a folder-safe name."""
  parts = [f"{k.split('.')[-1]}={v}" for k, v in overrides.items()]
  return re.sub(r"[^A-Za-z0-9._=+-]+", "-", "+".join(parts))[:120]


def check_fields(config_arg: str, fields) -> None:
  """Every swept field exists in the config (rewards.<name> may be a user reward), before anything runs."""
  path, _, variant = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_tinyrs_cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant or None)
  for field in fields:
    if field.startswith("rewards."):
      continue
    node = config
    for part in field.split("."):
      if not hasattr(node, "keys") or part not in node.keys():
        raise app.UsageError(f"swept field {field!r} is not a field of {config_arg}")
      node = node[part]


# ------------------------------------------------------------------------------------------------- runs

def run_args(config_arg: str, workdir: str, seed: str, overrides: dict[str, str], common: list[str]) -> list[str]:
  """The ordinary trainer arguments of one run (what `python -m tinyrs_jax.main` takes)."""
  return ([f"--config={config_arg}", f"--workdir={workdir}"] + common + [f"--config.seed={seed}"]
          + [f"--config.{k}={v}" for k, v in overrides.items()])


def plan(root: str, config_arg: str, variants: list[dict], seeds: list[str], common: list[str]) -> list[dict]:
  runs = []
  names = [variant_name(v) for v in variants]
  if len(set(names)) != len(names):
    raise app.UsageError(f"two variants share a name: {names}")
  identity = [c for c in common if not NOT_IDENTITY.match(c.removeprefix("--config."))]
  for name, overrides in zip(names, variants):
    for seed in seeds:
      wd = os.path.join(root, name, f"seed{seed}")
      runs.append({"variant": name, "seed": seed, "workdir": wd, "overrides": overrides,
                   "args": run_args(config_arg, wd, seed, overrides, common), "identity": identity})
  return runs


def record_run(run: dict, config_arg: str) -> None:
  """WORKDIR/<variant>/seed<k>/ablation.json: what this run is; a workdir reused with other settings is refused."""
  os.makedirs(run["workdir"], exist_ok=True)
  path = os.path.join(run["workdir"], RUN_FILE)
  mine = {"config": config_arg, "variant": run["variant"], "seed": run["seed"], "overrides": run["overrides"],
          "common": run["identity"]}
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if {k: old.get(k) for k in mine} != mine:
      raise app.UsageError(f"{run['workdir']} holds a run with other settings ({old}); use another --workdir")
  with open(path, "w") as f:
    json.dump({**mine, "command": "python -m tinyrs_jax.main " + shlex.join(run["args"])}, f, indent=1)


def _error_of(log_path: str) -> str:
  """The last error line of a run's log (a traceback's last line or a FATAL flag message)."""
  try:
    with open(log_path, encoding="utf-8", errors="replace") as f:
      lines = [l.rstrip() for l in f if l.strip()]
  except OSError:
    return "no log"
  for line in reversed(lines):
    if re.match(r"^(\w+(\.\w+)*(Error|Exception)|FATAL|UsageError)\b", line.strip()) or "Error:" in line:
      return line.strip()[:500]
  return lines[-1][:500] if lines else "no output"


def run_local(run: dict, status: dict) -> str:
  """Runs one workdir to completion here (a finished one is skipped); returns done | failed | killed."""
  wd = run["workdir"]
  if _finished(wd):
    return "done"
  log_path = os.path.join(wd, "run.log")
  t0 = time.time()
  print(f"[ablate] {run['variant']} seed {run['seed']}: python -m tinyrs_jax.main {shlex.join(run['args'])}",
        flush=True)
  with open(log_path, "a", encoding="utf-8") as log:
    child = subprocess.Popen([_PYTHON.value, "-m", "tinyrs_jax.main", *run["args"]], stdout=log,
                             stderr=subprocess.STDOUT)
    # a SIGTERM to the sweep goes to the run (which checkpoints and exits 143), never leaving it orphaned
    previous = signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    try:
      rc = child.wait()
    finally:
      signal.signal(signal.SIGTERM, previous)
  entry = status.setdefault(run["variant"], {}).setdefault(run["seed"], {})
  entry["seconds"] = round(entry.get("seconds", 0.0) + time.time() - t0, 1)
  if rc == 0 and _finished(wd):
    entry.update(state="done", error=None)
    return "done"
  if rc < 0 or rc == 143:
    entry.update(state="interrupted", error=f"stopped by signal {-rc if rc < 0 else 15}; rerun to resume")
    return "killed"
  entry.update(state="failed", error=_error_of(log_path), returncode=rc)
  return "failed"


def launcher_command(run: dict, launch: str, config_arg: str) -> list[str]:
  rest = run["args"][2:]  # the launchers take CONFIG WORKDIR first
  if launch == "slurm":
    return ["sbatch", f"--job-name=ablate-{run['variant']}-s{run['seed']}",
            f"--output={os.path.join(run['workdir'], 'slurm-%j.out')}", "launch/slurm_gpu.sbatch", config_arg,
            run["workdir"], *rest]
  if launch == "tpu_pod":
    if not (_TPU.value and _ZONE.value):
      raise app.UsageError("--launch=tpu_pod needs --tpu_name and --zone")
    return ["bash", "launch/tpu_pod.sh", _TPU.value, _ZONE.value, config_arg, run["workdir"], *rest]
  return ["python", "-m", "tinyrs_jax.main", *run["args"]]


# ----------------------------------------------------------------------------------------------- compare

def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def run_summary(rows: list[dict]) -> dict[str, float]:
  """The numbers of one run, from its metrics.jsonl rows."""
  train = [r for r in rows if "reward" in r]
  evals = [r for r in rows if "eval/reward" in r]
  out: dict[str, float] = {}
  if evals:
    last = evals[-1]
    out["eval/reward"] = last["eval/reward"]
    for k, v in last.items():
      if k.startswith("eval/rewards/") or (k.startswith("eval/strict/") and (
          k.startswith("eval/strict/accuracy") or k == "eval/strict/ground/miou")):
        out[k] = v
  if train:
    out["final_kl"] = train[-1].get("kl", float("nan"))
    out["mean_completion_length"] = float(np.mean([r["completions/mean_length"] for r in train
                                                   if "completions/mean_length" in r]))
    out["truncated_share"] = float(np.mean([r["completions/clipped_ratio"] for r in train
                                            if "completions/clipped_ratio" in r]))
    out["train_time_s"] = float(sum(r.get("step_time_s", 0.0) for r in train))
    out["steps"] = float(train[-1]["step"])
  return out


def compare(runs: list[dict], status: dict) -> dict:
  """results.json's content: per variant, per metric, mean / std / per-seed values; failed runs listed."""
  results: dict = {}
  for variant in dict.fromkeys(r["variant"] for r in runs):
    mine = [r for r in runs if r["variant"] == variant]
    entry = {"overrides": mine[0]["overrides"], "seeds": {}, "metrics": {}, "failed": {}}
    for r in mine:
      st = status.get(variant, {}).get(r["seed"], {})
      finished = _finished(r["workdir"])
      if st.get("state") in ("failed", "interrupted") and not finished:
        entry["failed"][r["seed"]] = st.get("error")
        continue
      if not finished:
        entry["failed"][r["seed"]] = "not finished"
        continue
      entry["seeds"][r["seed"]] = run_summary(read_metrics(r["workdir"]))
      if st.get("seconds"):  # measured by this tool around local runs (not in metrics.jsonl)
        entry["seeds"][r["seed"]]["wall_time_s"] = float(st["seconds"])
    keys = sorted({k for s in entry["seeds"].values() for k in s})
    for k in keys:
      vals = [s[k] for s in entry["seeds"].values() if k in s]
      entry["metrics"][k] = {"mean": float(np.mean(vals)),
                             "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, "n": len(vals)}
    results[variant] = entry
  return results


TABLE_COLUMNS = (("eval/reward", "held-out reward"), ("eval/rewards/accuracy", "accuracy reward"),
                 ("eval/rewards/format", "format reward"), ("eval/strict/accuracy", "strict accuracy"),
                 ("eval/strict/ground/miou", "ground mIoU"), ("final_kl", "final KL"),
                 ("mean_completion_length", "mean length"), ("truncated_share", "truncated"),
                 ("train_time_s", "step time (s)"), ("wall_time_s", "wall time (s)"))


def markdown(results: dict, seeds: list[str]) -> str:
  cols = [c for c in TABLE_COLUMNS if any(c[0] in e["metrics"] for e in results.values())]
  extra = sorted({k for e in results.values() for k in e["metrics"]
                  if (k.startswith("eval/rewards/") or k.startswith("eval/strict/accuracy/"))
                  and k not in dict(TABLE_COLUMNS)})
  cols += [(k, k.removeprefix("eval/")) for k in extra]
  head = "| variant | seeds | " + " | ".join(c[1] for c in cols) + " |"
  lines = [head, "|---|---|" + "---:|" * len(cols)]
  for name, e in results.items():
    cells = []
    for k, _ in cols:
      m = e["metrics"].get(k)
      cells.append("–" if m is None else f"{m['mean']:.3f} ± {m['std']:.3f}")
    lines.append(f"| {name} | {len(e['seeds'])}/{len(seeds)} | " + " | ".join(cells) + " |")
  failed = [(n, s, err) for n, e in results.items() for s, err in e["failed"].items()]
  text = "\n".join(lines) + "\n\nMean ± sample std over the seeds that finished; held-out numbers from each run's " \
                            "last evaluation (greedy).\n"
  if failed:
    text += "\nFailed or unfinished runs:\n" + "".join(f"- {n} seed {s}: {err}\n" for n, s, err in failed)
  return text


def plot(runs: list[dict], results: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  strict = any("eval/strict/accuracy" in row for r in runs for row in read_metrics(r["workdir"])[:50])
  held = "eval/strict/accuracy" if strict else "eval/rewards/accuracy"
  panels = (("reward", "training reward", lambda r: "reward" in r),
            (held, "held-out accuracy (greedy, strict)" if strict else "held-out accuracy reward (greedy)",
             lambda r: held in r))
  for i, variant in enumerate(results):
    colour = colours[i % len(colours)]
    for ax, (key, title, keep) in zip(axes, panels):
      series = []
      for r in runs:
        if r["variant"] != variant or r["seed"] not in results[variant]["seeds"]:
          continue
        pts = {row["step"]: row[key] for row in read_metrics(r["workdir"]) if keep(row)}
        if pts:
          steps = sorted(pts)
          ax.plot(steps, [pts[s] for s in steps], color=colour, lw=0.7, alpha=0.45)
          series.append(pts)
      if series:
        common = sorted(set.intersection(*(set(s) for s in series)))
        ax.plot(common, [np.mean([s[c] for s in series]) for c in common], color=colour, lw=2.2, label=variant)
      ax.set_title(title)
      ax.set_xlabel("step")
  axes[0].legend(fontsize=7)
  fig.suptitle("ablation: seeds thin, their mean bold")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_comparison(root: str, runs: list[dict], status: dict, seeds: list[str]) -> dict:
  results = compare(runs, status)
  with open(os.path.join(root, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  text = markdown(results, seeds)
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write(text)
  plot(runs, results, os.path.join(root, "curves.png"))
  print(text, flush=True)
  return results


# ------------------------------------------------------------------------------------------------- main

def main(argv):
  common = _COMMON
  root = os.path.abspath(_WORKDIR.value)
  if _SWEEP_FILE.value and _SWEEP.value:
    raise app.UsageError("give --sweep or --sweep_file, not both")
  variants = load_sweep_file(_SWEEP_FILE.value) if _SWEEP_FILE.value else parse_sweep(_SWEEP.value)
  check_fields(_CONFIG.value, {k for v in variants for k in v})
  seeds = [s.strip() for s in _SEEDS.value if s.strip()]
  runs = plan(root, _CONFIG.value, variants, seeds, common)
  os.makedirs(root, exist_ok=True)
  status_path = os.path.join(root, STATUS)
  status = json.load(open(status_path)) if os.path.exists(status_path) else {}

  def save_status():
    with open(status_path, "w") as f:
      json.dump(status, f, indent=1)

  for r in runs:
    record_run(r, _CONFIG.value)
  launch = _LAUNCH.value
  if launch == "print":
    lines = [shlex.join(launcher_command(r, "print", _CONFIG.value)) for r in runs]
    with open(os.path.join(root, "commands.sh"), "w") as f:
      f.write("#!/usr/bin/env bash\n# one line per run of the ablation; any order, any machine\n"
              + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return
  if launch == "slurm":
    for r in runs:
      entry = status.setdefault(r["variant"], {}).setdefault(r["seed"], {})
      if _finished(r["workdir"]) or (entry.get("state") == "submitted" and not _RESUBMIT.value):
        continue  # a submitted job requeues itself after a preemption; --resubmit after it failed
      cmd = launcher_command(r, launch, _CONFIG.value)
      print("[ablate]", shlex.join(cmd), flush=True)
      out = subprocess.run(cmd, capture_output=True, text=True)
      if out.returncode:
        entry.update(state="failed", error=f"sbatch: {out.stderr.strip()[:500]}")
      else:
        entry.update(state="submitted", job=out.stdout.strip().split()[-1] if out.stdout.strip() else "", error=None)
      save_status()
    print("[ablate] submitted; when the jobs are done: the same command with --launch=report", flush=True)
    return
  if launch == "tpu_pod":  # one pod slice: the runs one after another, each on every host
    for r in runs:
      if _finished(r["workdir"]):
        continue
      cmd = launcher_command(r, launch, _CONFIG.value)
      print("[ablate]", shlex.join(cmd), flush=True)
      rc = subprocess.call(cmd)
      entry = status.setdefault(r["variant"], {}).setdefault(r["seed"], {})
      if rc == 0 and _finished(r["workdir"]):
        entry.update(state="done", error=None)
      else:
        entry.update(state="failed" if rc not in (143, -15) else "interrupted",
                     error=f"launch/tpu_pod.sh exited {rc}; the hosts' logs are /tmp/tinyrs_<host>.log")
      save_status()
  if launch == "report":  # runs launched elsewhere: a failed one's error from its SLURM output
    for r in runs:
      entry = status.get(r["variant"], {}).get(r["seed"], {})
      outs = sorted(f for f in os.listdir(r["workdir"]) if f.startswith("slurm-") and f.endswith(".out")) \
          if os.path.isdir(r["workdir"]) else []
      if not _finished(r["workdir"]) and outs:
        entry.update(state="failed", error=_error_of(os.path.join(r["workdir"], outs[-1])))
        status.setdefault(r["variant"], {})[r["seed"]] = entry
    save_status()
  if launch == "local":
    for r in runs:
      outcome = run_local(r, status)
      save_status()
      if outcome == "killed":
        sys.exit(f"[ablate] {r['workdir']} was stopped by a signal; rerun the same command to resume")
  write_comparison(root, runs, status, seeds)


def _finished(workdir: str) -> bool:
  from tinyrs_jax.train import loop
  return loop.is_finished(workdir)


_COMMON: list[str] = []


def run():
  global _COMMON
  argv = sys.argv
  _COMMON = [a for a in argv[1:] if a.startswith("--config.")]
  sys.argv = [argv[0]] + [a for a in argv[1:] if not a.startswith("--config.")]
  app.run(main)


if __name__ == "__main__":
  run()
