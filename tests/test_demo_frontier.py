"""benchmarks/demo_frontier.py draws docs/demo_frontier.png from docs/demo_frontier.csv, whose scores must be the
ones the tuning record (docs/demo_tuning.md) states for the same tries."""
import csv
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_frontier_rows_are_the_tuning_records_and_the_plot_is_drawn(tmp_path):
  with open(os.path.join(ROOT, "docs", "demo_frontier.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  with open(os.path.join(ROOT, "docs", "demo_tuning.md")) as f:
    record = {line.split("|")[1].strip(): line for line in f if line.startswith(("| t", "| p", "| q", "| r"))}
  assert len(rows) >= 10
  for r in rows:
    cells = [c.strip().strip("*") for c in record[r["try"]].split("|")]  # bold best values count too
    scores = [f"{float(r[k]):.3f}" for k in ("classify", "presence", "count", "compare")]
    assert any(cells[i:i + 4] == scores for i in range(len(cells))), (r["try"], scores, cells)
  out = tmp_path / "frontier.png"
  subprocess.run([sys.executable, "benchmarks/demo_frontier.py", f"--out={out}"], cwd=ROOT, check=True,
                 capture_output=True, timeout=120)
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
