"""Targets of tools/aot: the chips (capacity, peak bf16 FLOP/s, HBM bandwidth, interconnect, each with its
public source in CHIP_SOURCES), the named targets (v5e-16, h100x8, ...) and their compile-only devices."""
from __future__ import annotations

import dataclasses
import math
import os
import re

# Set for the compile only (see _libtpu_env) rather than at import, so importing this module changes nothing.
# (libtpu itself sets TPU_* variables in the process that loads it, which its later subprocesses inherit and
# then load libtpu too: run the tool in a process of its own, as the CLI does and tests/test_aot.py does.)
LIBTPU_ENV = {"TPU_SKIP_MDS_QUERY": "1",  # no metadata server to ask: this is not a TPU VM
              "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}  # compile-only: several processes may load libtpu


class _libtpu_env:
  """Sets LIBTPU_ENV (where unset) for the block and restores os.environ after it."""

  def __enter__(self):
    self.saved = {k: os.environ.get(k) for k in LIBTPU_ENV}
    for k, v in LIBTPU_ENV.items():
      os.environ.setdefault(k, v)

  def __exit__(self, *exc):
    for k, v in self.saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v

GiB = 1024 ** 3

# ------------------------------------------------------------------------------------------------ targets


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  platform: str  # "tpu" or "cuda"
  topology: str  # TPU: "v5e:4x4"; GPU: "partitions x hosts x devices per host", e.g. "1x1x8"
  chip: str  # key of CHIPS
  num_slices: int = 1
  mem_fraction: float = 0.0  # GPU: the share of device memory JAX takes; 0: XLA_PYTHON_CLIENT_MEM_FRACTION or .75
  headroom: float = -1.0  # share of the capacity kept free for what no program accounts for; < 0: the default

  @property
  def spec(self) -> "Chip":
    return CHIPS[self.chip]

  @property
  def capacity(self) -> int:
    """Bytes a program may use per device: TPU, what libtpu reports; GPU, the share JAX preallocates."""
    if self.platform != "cuda":
      return self.spec.capacity
    return int(self.spec.capacity * (self.mem_fraction or gpu_mem_fraction()))

  @property
  def limit(self) -> int:
    """What a program's total may reach to count as fitting: the capacity less the headroom. By default 5 % on
    GPUs, which also hold NCCL's buffers, the allocator's fragmentation and autotuning scratch outside the
    compiled program, and none on TPUs, whose compiler allocates statically against the chip's exact HBM."""
    headroom = self.headroom if self.headroom >= 0 else (GPU_HEADROOM if self.platform == "cuda" else 0.0)
    return int(self.capacity * (1.0 - headroom))

  @property
  def num_chips(self) -> int:
    return math.prod(int(x) for x in self.topology.split(":")[-1].split("x")) // self.spec.per_chip_devices_div \
        * self.num_slices


@dataclasses.dataclass(frozen=True)
class Chip:
  kind: str
  capacity: int  # bytes a program may use per device
  peak_tflops: float  # bf16 dense, per chip
  chip_config: str = "default"  # TPU: "megacore" for v4 / v5p
  per_chip_devices_div: int = 1
  gpu_spec: str = ""  # GPU: GpuTargetConfigProto text
  hbm_bandwidth: float = 0.0  # bytes/s per chip
  interconnect: float = 0.0  # bytes/s per chip, one direction (ICI / NVLink); 0: not published per chip


def _gpu_spec(name: str, sms: int, bandwidth: float, l2: int, clock: float, memory: int) -> str:
  """A minimal GpuTargetConfigProto (text) for a Hopper GPU; runtime and cuDNN versions set so the GEMM
  rewriter uses cuBLASLt as on a real machine."""
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: {sms}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(bandwidth)}
  l2_cache_size: {l2}
  clock_rate_ghz: {clock}
  device_memory_size: {memory}
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 patch: 0 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{name}"
"""


H100_BYTES = 84_942_979_072  # XLA's GPU specs, H100 SXM
H200_BYTES = 151_397_597_184

# Capacities of TPU chips: what libtpu reports as available when it refuses a bigger program (measured here).
# Peak bf16 FLOP/s, HBM bandwidth and interconnect: the vendors' published figures, sources in CHIP_SOURCES.
CHIPS = {
    "v4": Chip("TPU v4", int(30.75 * GiB), 275.0, "megacore", hbm_bandwidth=1200e9, interconnect=0.0),
    "v5e": Chip("TPU v5 lite", int(15.75 * GiB), 197.0, hbm_bandwidth=819e9, interconnect=200e9),
    "v5p": Chip("TPU v5", int(95.74 * GiB), 459.0, "megacore", hbm_bandwidth=2765e9, interconnect=600e9),
    "v6e": Chip("TPU v6 lite", int(31.25 * GiB), 918.0, hbm_bandwidth=1640e9, interconnect=400e9),
    "h100": Chip("NVIDIA H100 80GB HBM3", H100_BYTES, 989.0, hbm_bandwidth=3.35e12, interconnect=450e9,
                 gpu_spec=_gpu_spec("NVIDIA H100 80GB HBM3", 132, 3.35e12, 52428800, 1.98, H100_BYTES)),
    "h200": Chip("NVIDIA H200", H200_BYTES, 989.0, hbm_bandwidth=4.8e12, interconnect=450e9,
                 gpu_spec=_gpu_spec("NVIDIA H200", 132, 4.8e12, 52428800, 1.98, H200_BYTES)),
}

# Where each chip fact comes from (the capacity: libtpu's own refusal message, or XLA's GPU device spec).
CHIP_SOURCES = {
    "v4": "https://cloud.google.com/tpu/docs/v4 (275 TFLOPs bf16; HBM2 32 GiB, 1200 GBps; ICI per chip not "
          "listed there: collectives are not timed for v4)",
    "v5e": "https://cloud.google.com/tpu/docs/v5e (197 TFLOPs bf16; HBM 16 GB, 819 GBps; ICI 400 GBps "
           "bidirectional per chip = 200 GB/s each way)",
    "v5p": "https://cloud.google.com/tpu/docs/v5p (459 TFLOPs bf16; HBM 95 GB, 2765 GBps; ICI 1200 GBps "
           "bidirectional per chip)",
    "v6e": "https://cloud.google.com/tpu/docs/v6e (918 TFLOPs bf16; HBM 32 GB, 1640 GBps; ICI 800 GBps "
           "bidirectional per chip)",
    "h100": "https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM: 989 TFLOPS bf16 dense (1979 with "
            "sparsity); 3.35 TB/s HBM3; NVLink 900 GB/s bidirectional)",
    "h200": "https://www.nvidia.com/en-us/data-center/h200/ (989 TFLOPS bf16 dense (1979 with sparsity); "
            "4.8 TB/s HBM3e; NVLink 900 GB/s bidirectional)",
}

TARGETS = {
    "v4-8": Target("v4-8", "tpu", "v4:2x2x1", "v4"),
    "v5e-8": Target("v5e-8", "tpu", "v5e:2x4", "v5e"),
    "v5e-16": Target("v5e-16", "tpu", "v5e:4x4", "v5e"),
    "v5p-8": Target("v5p-8", "tpu", "v5:2x2x1", "v5p"),
    "v6e-8": Target("v6e-8", "tpu", "v6e:2x4", "v6e"),
    "h100x1": Target("h100x1", "cuda", "1x1x1", "h100"),
    "h100x8": Target("h100x8", "cuda", "1x1x8", "h100"),
    "h200x1": Target("h200x1", "cuda", "1x1x1", "h200"),
    "h200x8": Target("h200x8", "cuda", "1x1x8", "h200"),
}
_TOPOLOGY_CHIP = {"v4": "v4", "v5e": "v5e", "v5litepod": "v5e", "v5": "v5p", "v5p": "v5p", "v6e": "v6e"}


def parse_target(name: str) -> Target:
  """A named target (TARGETS), `<named>x<slices>` (multi-slice, e.g. v5e-16x2), `h100x16` (GPUs: 8 per host),
  or a raw TPU topology `v5e:4x8` (optionally `v5e:4x8/2` for 2 slices)."""
  if name in TARGETS:
    t = TARGETS[name]
    return t
  m = re.fullmatch(r"(v[\w-]+-\d+)x(\d+)", name)
  if m and m.group(1) in TARGETS and TARGETS[m.group(1)].platform == "tpu":
    return dataclasses.replace(TARGETS[m.group(1)], name=name, num_slices=int(m.group(2)))
  m = re.fullmatch(r"(h100|h200)x(\d+)", name)
  if m:
    return _gpu_target(name, m.group(1), int(m.group(2)))
  m = re.fullmatch(r"(v\w+):([\dx]+)(?:/(\d+))?", name)
  if m and m.group(1) in _TOPOLOGY_CHIP:
    return Target(name, "tpu", f"{m.group(1)}:{m.group(2)}", _TOPOLOGY_CHIP[m.group(1)], int(m.group(3) or 1))
  raise ValueError(f"unknown target {name!r}; named: {sorted(TARGETS)}, or <tpu target>x<slices> (v5e-16x2), "
                   "h100x<n> / h200x<n>, or a raw TPU topology such as v5e:4x8 (v5e:4x8/2 for two slices)")


def gpu_mem_fraction() -> float:
  """What JAX will preallocate on a GPU: XLA_PYTHON_CLIENT_MEM_FRACTION, else its default 75 %."""
  return float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "") or 0.75)


def _gpu_target(name: str, chip: str, n: int) -> Target:
  hosts, per_host = (1, n) if n <= 8 else (n // 8, 8)
  if hosts * per_host != n:
    raise ValueError(f"{name}: more than 8 GPUs come as whole hosts of 8")
  return Target(name, "cuda", f"1x{hosts}x{per_host}", chip)


GPU_HEADROOM = 0.05

_DEVICES: dict = {}


def target_devices(target: Target) -> list:
  """Compile-only devices of the target (needs libtpu for TPU, jax[cuda12] for GPU), made once per process:
  programs traced for one mesh must meet the same device objects when the levers rebuild it."""
  key = (target.platform, target.topology, target.chip, target.num_slices)
  if key not in _DEVICES:
    _DEVICES[key] = _make_devices(target)
  return _DEVICES[key]


def _make_devices(target: Target) -> list:
  import jax
  from jax.experimental import topologies
  if target.platform == "tpu":
    try:
      import libtpu  # noqa: F401
    except ImportError as e:
      raise RuntimeError("TPU targets need libtpu: pip install -e \".[tpu]\" (jax[tpu] at this jax version)") from e
    kw = dict(platform="tpu", topology_name=target.topology, chip_config_name=target.spec.chip_config)
    dims = [int(x) for x in target.topology.split(":")[1].split("x")] + [1]
    if dims[0] < 2 or dims[1] < 2:  # fewer chips than a host holds (e.g. v5e:1x1): a host of that size
      kw["chips_per_host_bounds"] = (min(dims[0], 2), min(dims[1], 2), 1)
    if target.num_slices > 1:
      kw["num_slices"] = target.num_slices
    topo = topologies.get_topology_desc(**kw)
  else:
    try:
      topo = topologies.get_topology_desc(platform="cuda", target_config=target.spec.gpu_spec,
                                          topology=target.topology)
    except Exception as e:
      raise RuntimeError(f"GPU targets need the CUDA plugin (pip install -e \".[gpu]\") and jax_platforms=cpu "
                         f"on a machine without a GPU: {type(e).__name__}: {e}") from e
  devices = list(topo.devices)
  if target.num_slices > 1:  # slices outermost, so the data axis (over slices) crosses DCN
    devices.sort(key=lambda d: (getattr(d, "slice_index", 0), d.id))
  del jax
  return devices
