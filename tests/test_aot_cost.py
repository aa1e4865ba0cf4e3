"""tools/aot/cost.py: FLOPs and bytes from compiled HLO, with loop bodies multiplied by their trip counts (XLA's own
cost_analysis counts a loop body once), checked against hand counts on XLA:CPU."""
import jax
import jax.numpy as jnp
import pytest

from tinyrs_jax.tools.aot import cost

L, B, D = 6, 8, 64  # layers, rows, width


def _compiled_text(fn, *args):
  return jax.jit(fn).lower(*args).compile()


def test_scanned_layer_stack_counts_every_layer():
  """A scan over L stacked (D, D) weights: L matmuls of (B, D) x (D, D), 2*B*D*D FLOPs each."""
  def f(w, x):
    return jax.lax.scan(lambda h, wl: (jnp.tanh(h @ wl), None), x, w)[0]
  w, x = jnp.ones((L, D, D)), jnp.ones((B, D))
  compiled = _compiled_text(f, w, x)
  pc = cost.program_cost(compiled.as_text())
  assert pc.unknown_loops == 0 and pc.per_iteration.flops == 0
  assert pc.fixed.flops == L * 2 * B * D * D
  xla = compiled.cost_analysis()
  xla = xla[0] if isinstance(xla, (list, tuple)) else xla
  assert xla["flops"] < 2 * (2 * B * D * D)  # what this corrects: XLA prices the body once
  # every layer's weights are read once (sliced out of the stack, not the whole stack per layer)
  weights = L * D * D * 4
  assert weights <= pc.fixed.bytes < 2 * weights + 64 * B * D * 4 * L


def test_while_loop_of_unknown_length_is_priced_per_iteration():
  """A loop whose bound is data (the decode loop stops at EOS): cost = fixed + per_iteration x n, where each
  iteration runs a scanned stack of L layers (nested loops: L x 2*B*D*D per iteration) and a final projection
  (B, D) x (D, V) outside the loop."""
  V = 32

  def f(w, out, x, n):
    def body(c):
      i, h = c
      return i + 1, jax.lax.scan(lambda h, wl: (jnp.tanh(h @ wl), None), h, w)[0]
    _, h = jax.lax.while_loop(lambda c: c[0] < n, body, (jnp.int32(0), x))
    return h @ out
  args = (jnp.ones((L, D, D)), jnp.ones((D, V)), jnp.ones((B, D)), jnp.int32(5))
  pc = cost.program_cost(_compiled_text(f, *args).as_text())
  assert pc.unknown_loops == 1
  assert pc.per_iteration.flops == L * 2 * B * D * D
  assert pc.fixed.flops == 2 * B * D * V
  assert pc.at(10).flops == 10 * L * 2 * B * D * D + 2 * B * D * V


def test_fori_loop_trip_count_and_roofline():
  """A fori loop with a static bound is a known trip count; the roofline is the larger of its two terms."""
  def f(a):
    return jax.lax.fori_loop(0, 7, lambda i, m: m @ a, a)
  pc = cost.program_cost(_compiled_text(f, jnp.ones((D, D))).as_text())
  assert pc.unknown_loops == 0 and pc.fixed.flops == 7 * 2 * D ** 3
  c = cost.Cost(flops=1e12, bytes=1e9)
  assert cost.roofline_s(c, peak_flops=1e12, hbm_bandwidth=1e10) == pytest.approx(1.0)
  assert cost.roofline_s(c, peak_flops=1e13, hbm_bandwidth=1e9) == pytest.approx(1.0)


def test_tpu_text_without_known_trip_count():
  """The TPU compiler's text has no known_trip_count: the bound is read off `counter < constant`, and on-chip
  (S(1), VMEM) arrays cost no HBM bytes."""
  text = """HloModule m

%body (p: (s32[], f32[4,8]{1,0})) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %h = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %one = s32[] constant(1)
  %j = s32[] add(%i, %one)
  %v = f32[4,8]{1,0:T(8,128)S(1)} multiply(%h, %h)
  %d = f32[4,4]{1,0} dot(%v, %h), lhs_contracting_dims={1}, rhs_contracting_dims={1}
  ROOT %t = (s32[], f32[4,8]{1,0}) tuple(%j, %h)
}

%cond (q: (s32[], f32[4,8]{1,0})) -> pred[] {
  %q = (s32[], f32[4,8]{1,0}) parameter(0)
  %k = s32[] get-tuple-element(%q), index=0
  %limit = s32[] constant(12)
  ROOT %lt = pred[] compare(%k, %limit), direction=LT
}

ENTRY %main (x: f32[4,8]) -> f32[4,8] {
  %x = f32[4,8]{1,0} parameter(0)
  %zero = s32[] constant(2)
  %init = (s32[], f32[4,8]{1,0}) tuple(%zero, %x)
  %w = (s32[], f32[4,8]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %out = f32[4,8]{1,0} get-tuple-element(%w), index=1
}
"""
  pc = cost.program_cost(text)
  assert pc.unknown_loops == 0
  assert pc.fixed.flops == 10 * 2 * 4 * 4 * 8  # 12 - 2 iterations
  # per iteration: add (reads 2 scalars, writes 1: 12 B), multiply (reads h twice: 256 B; writes on chip),
  # dot (reads h: 128 B, v is on chip; writes 64 B), and the condition's compare (4 + 4 read, 1 written)
  assert pc.fixed.bytes == 10 * (12 + 256 + 192 + 9)


def test_grpo_step_estimate_composes_the_trainers_phases():
  """estimate.py: GRPO's step = prefill + decode x (tokens - 1) + reference scoring + mu x update, each at its
  roofline on the target; run time, chip-hours and tokens/s per chip follow from the steps."""
  import ml_collections

  from tinyrs_jax.tools.aot import estimate, parse_target
  from tinyrs_jax.tools.aot.compile import Result
  t = parse_target("v5e-16")
  peak, bw = t.spec.peak_tflops * 1e12, t.spec.hbm_bandwidth
  results = [Result("rollout_prefill", True, flops=2 * peak, bytes_accessed=bw),  # 2 s, compute-bound
             Result("rollout_decode", True, flops=0.0, bytes_accessed=0.5 * bw, per_token_bytes=0.01 * bw,
                    loop="new_tokens"),
             Result("ref_logps", True, flops=1 * peak),
             Result("update", True, flops=3 * peak, bytes_accessed=10 * bw)]  # 10 s, memory-bound
  c = ml_collections.ConfigDict(dict(trainer="grpo", batch_size=32, total_steps=-1, num_epochs=1.0,
                                     grpo=dict(max_new_tokens=1024, num_generations=4, num_iterations=2)))
  e = estimate.estimate(c, results, t, {"length": 2048}, examples=3200, completion_tokens=257)
  assert [p.name for p in e.phases] == ["rollout_prefill", "rollout_decode x 256", "ref_logps", "update x 2"]
  assert e.step_s == pytest.approx(2 + (0.5 + 2.56) + 1 + 2 * 10)
  assert e.step_s_at_max == pytest.approx(2 + (0.5 + 10.23) + 1 + 2 * 10)
  assert e.steps == 100 and e.run_s == pytest.approx(100 * e.step_s)
  assert e.chip_hours == pytest.approx(e.run_s * 16 / 3600)
  assert e.tokens_per_s_per_chip == pytest.approx(32 * 4 * (2048 + 257) / e.step_s / 16)
  assert e.lower_bound and "LOWER BOUND" in "\n".join(estimate.lines(e))
