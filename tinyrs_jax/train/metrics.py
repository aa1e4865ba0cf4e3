"""Metrics: a writer for DIR/metrics.jsonl and TensorBoard event files, model FLOPs and MFU, the progress line.

metrics.jsonl holds one JSON object per line: train lines carry `step` and `loss` (plus grad_norm, lr/<group>,
tokens_per_s, step_time_s, mfu, ...), eval lines carry `step` and `eval_loss`. Only process 0 writes.
On resume, lines after the restored step are dropped (`truncate_after`), so the file reads as one run.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np

from tinyrs_jax.models.presets import Qwen2VLConfig

METRICS_FILE = "metrics.jsonl"


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch whenever it can (for graph/histogram helpers we never call), which would pull
  torch into every training run on machines that have it; training must stay torch-free. `import torch`
  is made to fail only for the duration of this import when torch is not loaded already.
  """
  import sys
  if "torch" in sys.modules or "tensorboardX" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # type: ignore[assignment]  # import torch -> ImportError
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def _scalar(v) -> float | int:
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else float(v.mean())


class MetricsWriter:
  """Appends scalars to metrics.jsonl and TensorBoard (tensorboardX); a no-op on processes other than 0."""

  def __init__(self, workdir: str, *, enabled: bool | None = None, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self._file = None
    self._tb = None
    self._tb_dir = os.path.join(workdir, "tensorboard") if tensorboard else None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)

  def truncate_after(self, step: int) -> None:
    """Drops lines with step > `step` (a resumed run re-logs them)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    self.close()
    keep = []
    with open(self.path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
          continue
        if row.get("step", 0) <= step:
          keep.append(json.dumps(row) + "\n")
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, self.path)
    self._purge_step = step + 1

  def _writer(self):
    if self._tb is None and self._tb_dir:
      self._tb = _summary_writer_class()(self._tb_dir, purge_step=getattr(self, "_purge_step", None))
    return self._tb

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _scalar(v) for k, v in scalars.items()}}
    if self._file is None:
      self._file = open(self.path, "a")
    self._file.write(json.dumps(row) + "\n")  # flushed by flush() (log lines, evals, the end)
    tb = self._writer()
    if tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and np.isfinite(v):
          tb.add_scalar(k, v, int(step))

  def write_text(self, step: int, tag: str, text: str) -> None:
    """A markdown text entry in TensorBoard (e.g. a table of sample completions)."""
    if not self.enabled:
      return
    tb = self._writer()
    if tb is not None:
      tb.add_text(tag, text, int(step))

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


# ----------------------------------------------------------------------------------------------- FLOPs

def text_flops_per_token(cfg: Qwen2VLConfig) -> float:
  """Forward matmul FLOPs of one token through the decoder layers (attention scores excluded)."""
  t = cfg.text
  d, hd = t.hidden_size, t.head_dim
  qkvo = d * (t.num_attention_heads * hd) * 2 + d * (t.num_key_value_heads * hd) * 2
  mlp = 3 * d * t.intermediate_size
  return 2.0 * t.num_hidden_layers * (qkvo + mlp)


def batch_model_flops(cfg: Qwen2VLConfig, batch: dict[str, np.ndarray], *, train_vision: bool = True,
                      train_merger: bool = True) -> float:
  """Model FLOPs of one training step on this (host) batch: 3x forward (forward + backward), counting real
  tokens and patches only (padding excluded), causal attention, the head at supervised positions only; the
  vision tower's backward is skipped when it is frozen (and the merger's when both are)."""
  t, v = cfg.text, cfg.vision
  attn = np.asarray(batch["attention_mask"]).reshape(-1, batch["attention_mask"].shape[-1])
  n = attn.sum(-1).astype(np.float64)  # real tokens per row
  text = text_flops_per_token(cfg) * n.sum()
  text += 2.0 * t.num_hidden_layers * t.num_attention_heads * t.head_dim * (n * n).sum()  # causal QK and PV
  supervised = float(np.asarray(batch["loss_mask"]).sum()) if "loss_mask" in batch else float(n.sum())
  text += 2.0 * t.hidden_size * t.vocab_size * supervised
  grid = np.asarray(batch["image_grid_thw"]).reshape(-1, 3).astype(np.float64)
  p = grid.prod(-1)  # patches per image
  e = v.embed_dim
  block = 2.0 * (4 * e * e + 2 * e * v.mlp_dim)
  vision = 2.0 * v.patch_dim * e * p.sum() + v.depth * (block * p.sum() + 4.0 * e * (p * p).sum())
  m = e * v.merge_unit
  merger = 2.0 * (m * m + m * v.hidden_size) * p.sum() / v.merge_unit
  return (3.0 * text + (3.0 if train_vision else 1.0) * vision
          + (3.0 if (train_merger or train_vision) else 1.0) * merger)


# Dense bf16 peak TFLOP/s per device by device kind (substring match, lower case); CPU: this machine's fp32.
PEAK_TFLOPS = (("h200", 989.0), ("h100", 989.0), ("a100", 312.0), ("l4", 121.0), ("v6", 918.0),
               ("v5p", 459.0), ("v5 lite", 197.0), ("v5e", 197.0), ("v4", 275.0), ("v3", 123.0))
CPU_HOST_TFLOPS = 0.13


def peak_flops_per_device(configured_tflops: float = 0.0) -> float:
  """FLOP/s of one device: the configured value when > 0, else a guess from the device kind."""
  if configured_tflops and configured_tflops > 0:
    return configured_tflops * 1e12
  d = jax.devices()[0]
  kind = str(getattr(d, "device_kind", "")).lower()
  if d.platform == "cpu":
    return CPU_HOST_TFLOPS * 1e12 / max(jax.local_device_count(), 1)
  for k, v in PEAK_TFLOPS:
    if k in kind:
      return v * 1e12
  return 0.0


class StepTimer:
  """Wall time between consecutive step completions (what tokens/s and MFU use)."""

  def __init__(self):
    self.last = None

  def tick(self) -> float | None:
    now = time.perf_counter()
    dt = None if self.last is None else now - self.last
    self.last = now
    return dt

  def reset(self):
    self.last = None


def format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, r = divmod(seconds, 3600)
  m, s = divmod(r, 60)
  return f"{h}:{m:02d}:{s:02d}"


def progress_line(step: int, total: int, m: dict[str, Any], eta_s: float | None = None,
                  head: list[str] | None = None) -> str:
  """One log line: step, then `head` (default: the loss), then what was logged of grad norm, lr, throughput,
  step and rollout time, MFU, ETA."""
  parts = [f"step {step}/{total}"] + (head if head is not None else [f"loss {m['loss']:.4f}"])
  if "grad_norm" in m:
    parts.append(f"gnorm {m['grad_norm']:.3f}")
  lrs = [v for k, v in m.items() if k.startswith("lr/")]
  if lrs:
    parts.append(f"lr {max(lrs):.2e}")
  if m.get("tokens_per_s"):
    parts.append(f"{m['tokens_per_s']:.0f} tok/s")
  if m.get("step_time_s"):
    parts.append(f"{m['step_time_s']:.3f} s/step")
  if m.get("rollout_time_s"):
    parts.append(f"rollout {m['rollout_time_s']:.2f} s, {m.get('rollout_tokens_per_s', 0):.0f} gen tok/s")
  if m.get("mfu"):
    parts.append(f"MFU {100 * m['mfu']:.1f}%")
  if eta_s is not None:
    parts.append(f"ETA {format_eta(eta_s)}")
  return " | ".join(parts)
