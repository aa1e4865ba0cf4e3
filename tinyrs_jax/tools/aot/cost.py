"""FLOPs and bytes of a compiled program, from its optimized HLO text, with loop bodies multiplied by their trip
counts.

XLA's own cost_analysis() counts a while loop's body once: a stack of 28 scanned layers is priced as one layer,
and the decode loop as one token. This walks the per-device program `compiled.as_text()` prints:

  * a while loop's body and condition count `known_trip_count` times (XLA writes it into the loop's
    backend_config for scans and fori loops); a loop without one (the decode loop, which stops at EOS) counts
    `unknown_trips` times, so the caller can price it at any number of new tokens;
  * FLOPs: 2 x output elements x contracted elements for every dot (inside fusions too), and for convolutions
    2 x output elements x input features x window taps (dilated batch windows count one tap); elementwise work is not counted (a roofline's
    FLOP term is the matrix units');
  * bytes: HBM traffic (arrays the TPU compiler placed in on-chip memory, `S(1)` in their layout, are not
    counted): what each top-level instruction of a computation reads and writes in HBM: a fusion's operands and
    result (what happens inside a fusion stays on chip); an operand a fusion only slices (dynamic-slice, slice,
    gather: a layer's weights out of the stacked ones) counts as the slices read, and a result written by an
    in-place dynamic-update-slice (a token into the KV cache) counts as the update, as XLA's own analysis does;
  * collective bytes: the results of all-gather / all-reduce / reduce-scatter / all-to-all /
    collective-permute, for an interconnect term.

The numbers are per device (the compiled program is one device's SPMD partition)."""
from __future__ import annotations

import dataclasses
import math
import re

DTYPE_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4, "s64": 8,
               "u64": 8, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "bf16": 2,
               "f16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16, "token": 0}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute", "ragged-all-to-all")
FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "after-all", "partition-id",
        "replica-id", "iota", "all-gather-done", "all-reduce-done", "collective-permute-done", "copy-done",
        "async-done", "async-update", "opt-barrier", "add-dependency", "domain", "get-dimension-size"}
SLICING = {"dynamic-slice", "slice", "gather"}

_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\](\{[^}]*\})?")
_ON_CHIP = re.compile(r"S\([1-9]\d*\)")  # a TPU layout's memory space other than 0 (HBM): VMEM, SMEM, ...
_COMP_HEAD = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')


@dataclasses.dataclass
class Cost:
  flops: float = 0.0
  bytes: float = 0.0
  collective_bytes: float = 0.0

  def __add__(self, o: "Cost") -> "Cost":
    return Cost(self.flops + o.flops, self.bytes + o.bytes, self.collective_bytes + o.collective_bytes)

  def __mul__(self, k: float) -> "Cost":
    return Cost(self.flops * k, self.bytes * k, self.collective_bytes * k)

  __rmul__ = __mul__

  def __sub__(self, o: "Cost") -> "Cost":
    return self + o * -1.0


def shape_bytes(type_text: str) -> int:
  """HBM bytes of an HLO type: `f32[8,64]{1,0}`, or a tuple of them. An array whose layout puts it in an on-chip
  memory space (TPU: `S(1)`, VMEM) takes none: the compiler keeps it out of HBM."""
  total = 0
  for dtype, dims, layout in _ARRAY.findall(type_text):
    if dtype not in DTYPE_BYTES or _ON_CHIP.search(layout or ""):
      continue
    total += DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _dims(type_text: str) -> list[int]:  # noqa: D103
  m = _ARRAY.search(type_text)
  return [int(d) for d in m.group(2).split(",") if d] if m else []


@dataclasses.dataclass
class _Instr:
  name: str
  type: str
  op: str
  operands: list[str]
  attrs: str
  root: bool
  inner: str = ""  # the text inside the parentheses (a parameter's index)


def _split_operands(rest: str) -> tuple[list[str], str, str]:
  """`%a, %b), attr=...` -> (['a', 'b'], 'attr=...'): the operand list ends at the matching parenthesis."""
  depth, i = 1, 0
  while i < len(rest) and depth:
    c = rest[i]
    depth += c in "({[" and 1 or 0
    depth -= c in ")}]" and 1 or 0
    i += 1
  inner, attrs = rest[:i - 1], rest[i:]
  return re.findall(r"%([\w.\-]+)", inner), attrs, inner


def parse(text: str) -> tuple[dict[str, list[_Instr]], str]:
  """({computation: instructions}, entry computation name)."""
  comps: dict[str, list[_Instr]] = {}
  entry, current = "", None
  for line in text.splitlines():
    if current is None:
      m = _COMP_HEAD.match(line)
      if m:
        current = m.group(2)
        comps[current] = []
        if m.group(1):
          entry = current
      continue
    if line.strip() == "}":
      current = None
      continue
    m = _INSTR.match(line)
    if m:
      operands, attrs, inner = _split_operands(m.group(5))
      comps[current].append(_Instr(m.group(2), m.group(3), m.group(4), operands, attrs, bool(m.group(1)), inner))
  return comps, entry


def _called(attrs: str, key: str) -> list[str]:
  """The computations an attribute names: `body=%b`, or `branch_computations={%x, %y}`."""
  m = re.search(r"\b" + key + r"=(?:\{([^}]*)\}|%?([\w.\-]+))", attrs)
  if not m:
    return []
  return [c.strip().lstrip("%") for c in (m.group(1) or m.group(2)).split(",") if c.strip()]


def _constant(ins: "_Instr | None") -> int | None:
  if ins is not None and ins.op == "constant" and re.fullmatch(r"\s*-?\d+\s*", ins.inner):
    return int(ins.inner)
  return None


def trip_count(ins: _Instr, comps: dict[str, list[_Instr]], caller: list[_Instr]) -> int | None:
  """A while loop's trip count: XLA's known_trip_count when it wrote one (XLA:CPU does; the TPU compiler's text
  does not), else read off the condition when it is `counter < constant` (a scan, a fori loop, a windowed einsum:
  counter from its initial value, by the step its body adds). None for a data-dependent loop (decode: `i < max_new & ~all(done)`)."""
  m = _TRIP.search(ins.attrs)
  if m:
    return int(m.group(1))
  cond = comps.get((_called(ins.attrs, "condition") or [""])[0], [])
  by = {i.name: i for i in cond}
  root = next((i for i in cond if i.root), None)
  if root is None:
    return None
  operands = root.operands
  if root.op == "fusion":  # XLA:CPU wraps the compare: look inside, map its parameters to the operands
    inner = comps.get((_called(root.attrs, "calls") or [""])[0], [])
    iroot = next((i for i in inner if i.root), None)
    params = {i.name: int(i.inner) for i in inner if i.op == "parameter" and i.inner.strip().isdigit()}
    if iroot is None or iroot.op != "compare" or not all(o in params for o in iroot.operands):
      return None
    root = dataclasses.replace(iroot, operands=[operands[params[o]] for o in iroot.operands])
  if root.op != "compare" or "direction=LT" not in root.attrs or len(root.operands) != 2:
    return None
  counter, bound = (by.get(o) for o in root.operands)
  limit = _constant(bound)
  if limit is None or counter is None or counter.op != "get-tuple-element":
    return None
  index = re.search(r"index=(\d+)", counter.attrs)
  init = 0
  types = {i.name: i for i in caller}
  tup = types.get(ins.operands[0]) if ins.operands else None
  if index and tup is not None and tup.op == "tuple" and int(index.group(1)) < len(tup.operands):
    start = types.get(tup.operands[int(index.group(1))])
    while start is not None and start.op == "copy" and start.operands:
      start = types.get(start.operands[0])
    init = _constant(start) if _constant(start) is not None else 0
  step = _step(ins, comps, int(index.group(1))) if index else 1
  return max(-(-(limit - init) // step), 0)


def _step(ins: _Instr, comps: dict[str, list[_Instr]], k: int) -> int:
  """How much a loop's body adds to counter `k` per iteration (windowed einsum loops go by 2): the constant in
  `counter + constant` at the body's root; 1 when it cannot be read."""
  body = comps.get((_called(ins.attrs, "body") or [""])[0], [])
  by = {i.name: i for i in body}
  root = next((i for i in body if i.root), None)
  if root is None or root.op != "tuple" or k >= len(root.operands):
    return 1
  upd = by.get(root.operands[k])
  while upd is not None and upd.op == "copy" and upd.operands:
    upd = by.get(upd.operands[0])
  if upd is None:
    return 1
  operands = [by.get(o) for o in upd.operands]
  if upd.op == "fusion":  # XLA:CPU wraps the add
    inner = comps.get((_called(upd.attrs, "calls") or [""])[0], [])
    iroot = next((i for i in inner if i.root), None)
    if iroot is None or iroot.op != "add":
      return 1
    upd = iroot
  elif upd.op != "add":
    return 1
  steps = [_constant(o) for o in operands if _constant(o) is not None]
  return steps[0] if len(steps) == 1 and steps[0] > 0 else 1


class _Walker:
  def __init__(self, comps, unknown_trips: float):
    self.comps, self.unknown_trips = comps, unknown_trips
    self.memo: dict[str, Cost] = {}
    self.flops_memo: dict[str, float] = {}
    self.unknown_loops = 0

  def dot_flops(self, ins: _Instr, types: dict[str, str]) -> float:
    out = math.prod(_dims(ins.type))
    lhs = _dims(types.get(ins.operands[0], "")) if ins.operands else []
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attrs)
    k = math.prod(lhs[int(d)] for d in m.group(1).split(",") if d) if m and lhs else 1
    return 2.0 * out * k

  def conv_flops(self, ins: _Instr, types: dict[str, str]) -> float:
    """2 x output elements x input features x the window taps that meet real (undilated) input: XLA writes
    batched dots as convolutions whose window runs over dilated batch dimensions (`window={size=2x16
    lhs_dilate=2x16}`), where each output meets one tap, not 32."""
    out = math.prod(_dims(ins.type))
    rhs = _dims(types.get(ins.operands[1], "")) if len(ins.operands) > 1 else []
    m = re.search(r"dim_labels=\w+_(\w+)->", ins.attrs)
    if not rhs or not m or "i" not in m.group(1):
      return 0.0
    taps = 1
    size = re.search(r"\bsize=([\dx]+)", ins.attrs)
    if size:
      sizes = [int(x) for x in size.group(1).split("x")]
      dil = re.search(r"lhs_dilate=([\dx]+)", ins.attrs)
      dils = [int(x) for x in dil.group(1).split("x")] if dil else [1] * len(sizes)
      taps = math.prod(-(-s_ // d) for s_, d in zip(sizes, dils))
    return 2.0 * out * rhs[m.group(1).index("i")] * taps

  def flops_only(self, comp: str) -> float:
    """Dots inside a fused (or applied) computation: their FLOPs; bytes stay at the fusion's boundary."""
    if comp in self.flops_memo:
      return self.flops_memo[comp]
    self.flops_memo[comp] = 0.0
    types = {i.name: i.type for i in self.comps.get(comp, [])}
    total = 0.0
    for ins in self.comps.get(comp, []):
      if ins.op == "dot":
        total += self.dot_flops(ins, types)
      elif ins.op == "convolution":
        total += self.conv_flops(ins, types)
      elif ins.op == "fusion":
        total += sum(self.flops_only(c) for c in _called(ins.attrs, "calls"))
    self.flops_memo[comp] = total
    return total

  def sliced_bytes(self, body: list[_Instr], pname: str, depth: int = 0) -> float | None:
    """Bytes read of parameter `pname` of a fused computation when every use only slices it (directly, through
    a bitcast, or inside a nested fusion), else None (it is read whole)."""
    users = [b for b in body if pname in b.operands]
    if not users or depth > 8:
      return None
    total = 0.0
    for u in users:
      if u.op in SLICING and u.operands[0] == pname:
        total += shape_bytes(u.type)
      elif u.op == "dynamic-update-slice" and u.operands[0] == pname and pname not in u.operands[1:]:
        total += 0.0  # written in place; the fusion's result accounts for the update
      elif u.op == "bitcast":
        inner = self.sliced_bytes(body, u.name, depth + 1)
        if inner is None:
          return None
        total += inner
      elif u.op == "fusion":
        inner_body = self.comps.get((_called(u.attrs, "calls") or [""])[0], [])
        params = {int(b.inner): b.name for b in inner_body if b.op == "parameter" and b.inner.strip().isdigit()}
        for i, o in enumerate(u.operands):
          if o != pname:
            continue
          inner = self.sliced_bytes(inner_body, params.get(i, ""), depth + 1) if i in params else None
          if inner is None:
            return None
          total += inner
      else:
        return None
    return total

  def fusion_bytes(self, ins: _Instr, types: dict[str, str]) -> float:
    """HBM traffic of a fusion: operands read (only the slices of one it merely slices) + the result written
    (only the update of an in-place dynamic-update-slice)."""
    called = _called(ins.attrs, "calls")
    body = self.comps.get(called[0], []) if called else []
    params: dict[int, str] = {}
    users: dict[str, list[_Instr]] = {}
    for b in body:
      if b.op == "parameter":
        idx = int(b.inner) if b.inner.strip().isdigit() else len(params)
        params[idx] = b.name
      for o in b.operands:
        users.setdefault(o, []).append(b)
    btypes = {b.name: b.type for b in body}
    dus_targets = set()
    root = next((b for b in body if b.root), None)
    roots = [root] if root is not None else []
    if root is not None and root.op == "tuple":
      roots = [b for b in body if b.name in root.operands]
    written = 0.0
    for r in roots:
      if r.op == "dynamic-update-slice" and len(r.operands) > 1:
        dus_targets.add(r.operands[0])
        written += shape_bytes(btypes.get(r.operands[1], ""))
      else:
        written += shape_bytes(r.type)
    if not roots:
      written = shape_bytes(ins.type)
    read = 0.0
    for i, operand in enumerate(ins.operands):
      pname = params.get(i)
      full = shape_bytes(types.get(operand, ""))
      us = users.get(pname, []) if pname else []
      if pname in dus_targets and all(u.op == "dynamic-update-slice" for u in us):
        continue  # updated in place: only the update is written
      sliced = self.sliced_bytes(body, pname) if pname else None
      read += full if sliced is None else min(full, sliced)
    return read + written

  def cost(self, comp: str) -> Cost:
    if comp in self.memo:
      return self.memo[comp]
    self.memo[comp] = Cost()  # recursion guard
    total = Cost()
    instrs = self.comps.get(comp, [])
    types = {i.name: i.type for i in instrs}
    for ins in instrs:
      op = ins.op
      if op in FREE or op.endswith("-done"):  # an async pair is priced at its -start
        continue
      if op == "while":
        known = trip_count(ins, self.comps, instrs)
        if known is not None:
          trips = float(known)
        else:
          trips = self.unknown_trips
          self.unknown_loops += 1
        inner = sum((self.cost(c) for c in _called(ins.attrs, "body") + _called(ins.attrs, "condition")), Cost())
        total = total + inner * trips
        continue
      if op in ("call", "async-start") or (op == "custom-call" and "called_computations" in ins.attrs):
        for c in _called(ins.attrs, "to_apply") + _called(ins.attrs, "calls") + _called(ins.attrs,
                                                                                       "called_computations"):
          total = total + self.cost(c)
        if op != "custom-call":
          continue
      if op == "conditional":
        branches = _called(ins.attrs, "branch_computations") or (_called(ins.attrs, "true_computation")
                                                                  + _called(ins.attrs, "false_computation"))
        costs = [self.cost(c) for c in branches]
        if costs:
          total = total + max(costs, key=lambda c: (c.flops, c.bytes))
        continue
      total = total + self.instr_cost(ins, types)
    self.memo[comp] = total
    return total

  def instr_cost(self, ins: _Instr, types: dict[str, str]) -> Cost:
    """One top-level instruction's own cost (not a loop, call or conditional)."""
    op = ins.op
    out_bytes = shape_bytes(ins.type)
    in_bytes = sum(shape_bytes(types.get(o, "")) for o in ins.operands)
    if op.endswith("-start"):  # async pairs: the result tuple repeats the operands, then what is made
      made = max(out_bytes - in_bytes, 0)
      if "slice" in op:
        return Cost(0.0, 2.0 * made)  # only the slice is read
      if any(k in op for k in ("all-", "collective", "reduce-scatter")):
        return Cost(0.0, in_bytes + made, made)
      return Cost(0.0, in_bytes + made)
    if op == "fusion":
      return Cost(sum(self.flops_only(c) for c in _called(ins.attrs, "calls")), self.fusion_bytes(ins, types))
    elif op == "dot":
      return Cost(self.dot_flops(ins, types), in_bytes + out_bytes)
    elif op == "convolution":
      return Cost(self.conv_flops(ins, types), in_bytes + out_bytes)
    elif op in COLLECTIVES:
      return Cost(0.0, in_bytes + out_bytes, out_bytes)
    elif op in SLICING:
      return Cost(0.0, 2.0 * out_bytes)
    elif op == "dynamic-update-slice":
      upd = shape_bytes(types.get(ins.operands[1], "")) if len(ins.operands) > 1 else out_bytes
      return Cost(0.0, 2.0 * upd)
    elif op == "copy":
      return Cost(0.0, 2.0 * out_bytes)
    else:  # elementwise, reduce, custom-call (cuBLAS GEMMs carry their FLOPs in fusions or dots on TPU), ...
      flops = 0.0
      if op == "custom-call" and re.search(r"gemm|matmul", ins.attrs, re.IGNORECASE):
        flops = self._gemm_flops(ins, types)
      return Cost(flops, in_bytes + out_bytes)

  def _gemm_flops(self, ins: _Instr, types: dict[str, str]) -> float:
    m = re.search(r'"lhs_contracting_dimensions"\s*:\s*\[([^\]]*)\]', ins.attrs)
    lhs = _dims(types.get(ins.operands[0], "")) if ins.operands else []
    if not m or not lhs:
      return 0.0
    k = math.prod(lhs[int(d.strip().strip('"'))] for d in m.group(1).split(",") if d.strip())
    return 2.0 * math.prod(_dims(ins.type)) * k


def analyse(text: str, unknown_trips: float = 1.0) -> tuple[Cost, int]:
  """(per-device cost of the HLO module, number of loops without a known trip count, counted unknown_trips
  times each)."""
  comps, entry = parse(text)
  if not entry:
    raise ValueError("no ENTRY computation in the HLO text")
  w = _Walker(comps, unknown_trips)
  return w.cost(entry), w.unknown_loops


@dataclasses.dataclass
class ProgramCost:
  """A program's cost as `fixed + per_iteration x n` for its loops without a known trip count (n = new tokens
  for a decode loop; per_iteration is zero when it has none)."""
  fixed: Cost
  per_iteration: Cost
  unknown_loops: int

  def at(self, n: float) -> Cost:
    return self.fixed + self.per_iteration * n


def program_cost(text: str) -> ProgramCost:
  c1, loops = analyse(text, 1.0)
  if not loops:
    return ProgramCost(c1, Cost(), 0)
  c2, _ = analyse(text, 2.0)
  per = c2 - c1
  return ProgramCost(c1 - per, per, loops)


def roofline_s(c: Cost, peak_flops: float, hbm_bandwidth: float, interconnect: float = 0.0) -> float:
  """max(FLOPs / peak, bytes / HBM bandwidth, collective bytes / interconnect): the time the program cannot beat
  on a chip that overlaps everything perfectly (a lower bound)."""
  terms = [c.flops / peak_flops if peak_flops else 0.0, c.bytes / hbm_bandwidth if hbm_bandwidth else 0.0]
  if interconnect:
    terms.append(c.collective_bytes / interconnect)
  return max(terms)


def top_instructions(text: str, n: int = 15, unknown_trips: float = 1.0) -> list[tuple[float, float, str]]:
  """The `n` instructions that move the most bytes (times their executions): (bytes, FLOPs, description), to see
  what a program's cost is made of."""
  comps, entry = parse(text)
  w = _Walker(comps, unknown_trips)
  runs: dict[str, float] = {}

  def visit(comp: str, k: float):
    runs[comp] = runs.get(comp, 0.0) + k
    for ins in comps.get(comp, []):
      if ins.op == "while":
        known = trip_count(ins, comps, comps.get(comp, []))
        trips = float(known) if known is not None else unknown_trips
        for c in _called(ins.attrs, "body") + _called(ins.attrs, "condition"):
          visit(c, k * trips)
      elif ins.op in ("call", "conditional", "async-start"):
        for c in (_called(ins.attrs, "to_apply") + _called(ins.attrs, "calls")
                  + _called(ins.attrs, "branch_computations")):
          visit(c, k)
  visit(entry, 1.0)
  rows = []
  for comp, k in runs.items():
    instrs = comps.get(comp, [])
    types = {i.name: i.type for i in instrs}
    for ins in instrs:
      if ins.op in FREE or ins.op.endswith("-done") or ins.op in ("while", "call", "conditional"):
        continue
      c = w.instr_cost(ins, types)
      rows.append((c.bytes * k, c.flops * k, f"{comp}/{ins.name} {ins.op} {ins.type[:60]} x{k:g}"))
  rows.sort(key=lambda r: -r[0])
  return rows[:n]
