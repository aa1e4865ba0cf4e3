"""Sharding in one place: the mesh, the logical-axis rules, and the helpers that apply them.

Every parameter carries logical axis names (`out_sharding` metadata on its nnx.Param), every large activation is
constrained with `constrain(x, names)`. The rules below map logical names to mesh axes; a dimension that the
mapped mesh axes do not divide is replicated instead (e.g. Qwen2-VL-2B's 2 KV heads on a tensor axis of 4).

The mesh has three axes: `data` (pure data parallelism), `fsdp` (data parallelism with parameters and optimizer
state sharded) and `tensor` (Megatron-style model parallelism). Axis types are Auto (classic GSPMD propagation):
decided once, here.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes (tuple) or None (replicated). Parameters first, activations after.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
    ("vision_embed", "fsdp"),
    ("vision_heads", "tensor"),
    ("vision_mlp", "tensor"),
    ("merger_in", "fsdp"),
    ("patch", None),
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("images", ("data", "fsdp")),
    ("patches", None),
)

_CURRENT: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar("tinyrs_mesh", default=None)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over all devices (of all processes); -1 in `data` takes what is left."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if data == -1:
    if n % (fsdp * tensor):
      raise ValueError(f"{n} devices are not divisible by fsdp*tensor = {fsdp * tensor}")
    data = n // (fsdp * tensor)
  if data * fsdp * tensor != n:
    raise ValueError(f"mesh data*fsdp*tensor = {data}*{fsdp}*{tensor} != {n} devices")
  shape = (data, fsdp, tensor)
  try:
    from jax.experimental import mesh_utils
    arr = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # CPU / unusual topologies: plain order is fine
    arr = np.asarray(devices).reshape(shape)
  return Mesh(arr, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int] | None, mesh: Mesh,
                    rules=DEFAULT_RULES) -> P:
  """Logical names -> PartitionSpec, replicating dimensions the mesh axes do not divide (or reuse)."""
  if names is None:
    return P()
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(names):
    axes = table.get(name) if name is not None else None
    if axes is None:
      spec.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if a not in used and mesh.shape.get(a, 1) > 1)
    size = math.prod(mesh.shape[a] for a in axes)
    if not axes or (shape is not None and shape[i] % size):
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return P(*spec)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=DEFAULT_RULES):
  """Activates the mesh for `constrain` (and jax's own mesh context) inside the block."""
  token = _CURRENT.set((mesh, tuple(rules)))
  try:
    with jax.set_mesh(mesh):
      yield mesh
  finally:
    _CURRENT.reset(token)


def current_mesh() -> Mesh | None:
  """The mesh `use_mesh` activated, or None outside it."""
  cur = _CURRENT.get()
  return None if cur is None else cur[0]


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op outside `use_mesh`."""
  cur = _CURRENT.get()
  if cur is None:
    return x
  mesh, rules = cur
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, x.shape, mesh, rules)))


def named_sharding(mesh: Mesh, names, shape=None, rules=DEFAULT_RULES) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))


def state_shardings(abstract_state, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for an nnx.State (abstract or concrete) from each Variable's `out_sharding` names."""
  from flax import nnx

  def one(v):
    if isinstance(v, nnx.Variable):
      names = v.get_metadata().get("out_sharding")
      return v.replace(named_sharding(mesh, names, v.get_value().shape, rules))
    return NamedSharding(mesh, P())

  return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model, mesh: Mesh, rules=DEFAULT_RULES):
  """Places an nnx model's variables on the mesh by their logical names (in place); returns the model."""
  from flax import nnx
  state = nnx.state(model)
  nnx.update(model, jax.device_put(state, state_shardings(state, mesh, rules)))
  return model


# ------------------------------------------------------------------------------ this process's rows <-> global

def _split_ways(s: NamedSharding) -> int:
  """Into how many pieces a NamedSharding cuts an array (batch arrays are sharded on their row axis only)."""
  ways = 1
  for axes in getattr(s, "spec", ()):
    for a in (axes if isinstance(axes, tuple) else (axes,)):
      if a is not None:
        ways *= s.mesh.shape[a]
  return ways


def host_to_global(x: np.ndarray, s: NamedSharding, what: str = "array") -> jax.Array:
  """This process's rows -> one global array (rows of all processes concatenated in process order).

  With one process that is a device_put. With several, every process holds different rows, so the sharding must
  split the rows a multiple of the process count ways: a row axis replicated across processes would silently
  hold different data on each.
  """
  pc = jax.process_count()
  if pc == 1:
    return jax.device_put(x, s)
  ways = _split_ways(s)
  if ways % pc:
    raise ValueError(f"{what}: sharding {s.spec} splits the rows {ways} ways, not a multiple of the {pc} processes; "
                     "each process's rows would land in an array replicated across processes (give the data axes "
                     "more devices or the batch more rows)")
  return jax.make_array_from_process_local_data(s, np.asarray(x))


def global_to_host(x: jax.Array) -> np.ndarray:
  """A global array -> this process's rows as NumPy (the inverse of host_to_global): the whole array when this
  process addresses all of it, else the rows of its addressable shards, in order, each row once."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  pieces: dict[int, np.ndarray] = {}
  for shard in x.addressable_shards:
    rows = shard.index[0] if shard.index else slice(None)
    pieces.setdefault(rows.start or 0, np.asarray(shard.data))
  return np.concatenate([pieces[k] for k in sorted(pieces)], axis=0)


def gather_rows(x: np.ndarray) -> np.ndarray:
  """Every process's rows of a host array, in process order (this process's alone with one process); every
  process's array must have the same shape. Values arrive bit for bit in their own dtype: the rows travel as
  bytes, since JAX without x64 would carry float64 as float32 (an IoU of 0.49999999999999994 became 0.5, a miss
  a hit) and int64 as int32 (tests/test_eval_gather.py)."""
  x = np.ascontiguousarray(np.asarray(x))
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  n, width = (x.shape[0] if x.ndim else 1), int(np.prod(x.shape[1:], dtype=np.int64)) * x.dtype.itemsize
  raw = x.reshape(-1).view(np.uint8).reshape(n, width)
  out = np.asarray(multihost_utils.process_allgather(raw)).astype(np.uint8, copy=False)
  return np.ascontiguousarray(out).reshape(-1, raw.shape[1]).view(x.dtype).reshape((-1,) + x.shape[1:])
