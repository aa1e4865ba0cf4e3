"""Small building blocks with logical axis names on every parameter.

Parameters live in `param_dtype` (fp32 master weights by default); computation happens in `dtype`
(bf16 or fp32) by casting weights at use. Norm statistics are always fp32.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = jnp.dtype


def param(rngs: nnx.Rngs, shape: Sequence[int], names: Sequence[str | None], dtype, init: str = "normal",
          stddev: float = 0.02) -> nnx.Param:
  if init == "normal":
    value = stddev * jax.random.normal(rngs.params(), tuple(shape), jnp.float32)
  elif init == "ones":
    value = jnp.ones(tuple(shape), jnp.float32)
  elif init == "zeros":
    value = jnp.zeros(tuple(shape), jnp.float32)
  else:
    raise ValueError(f"unknown init {init!r}")
  # eager_sharding=False: parameters are placed by the trainer's jit(out_shardings), not at construction.
  return nnx.Param(value.astype(dtype), out_sharding=tuple(names), eager_sharding=False)


class Linear(nnx.Module):
  """y = x @ kernel (+ bias); kernel is (in, out) so that HF's (out, in) weight is its transpose."""

  def __init__(self, in_features: int, out_features: int, names: tuple[str | None, str | None], *,
               use_bias: bool, dtype, param_dtype, rngs: nnx.Rngs):
    self.kernel = param(rngs, (in_features, out_features), names, param_dtype)
    self.bias = param(rngs, (out_features,), (names[1],), param_dtype, "zeros") if use_bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    # A 2-D matmul over flattened leading dims: XLA:CPU's backward of an N-D dot adds transposing copies.
    lead = x.shape[:-1]
    y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y.reshape(lead + (y.shape[-1],))


class RMSNorm(nnx.Module):
  """Qwen2 RMSNorm: normalise in fp32, cast back to the input dtype, then scale."""

  def __init__(self, dim: int, eps: float, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.scale = param(rngs, (dim,), ("norm",), param_dtype, "ones")
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    in_dtype = x.dtype
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(self.dtype) * xf.astype(in_dtype).astype(self.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm with scale and bias (the vision tower's), statistics in fp32."""

  def __init__(self, dim: int, eps: float, names=("norm",), *, dtype, param_dtype, rngs: nnx.Rngs):
    self.scale = param(rngs, (dim,), names, param_dtype, "ones")
    self.bias = param(rngs, (dim,), names, param_dtype, "zeros")
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


def rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


# Per-layer rematerialisation policies by name (config: model.remat_policy).
REMAT_POLICIES = {
    "none": None,  # no remat: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs, recompute elementwise ops
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # keep weight matmuls only
}


def maybe_remat(fn, policy: str):
  if policy not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {policy!r}; known: {sorted(REMAT_POLICIES)}")
  if policy == "none":
    return fn
  return jax.checkpoint(fn, policy=REMAT_POLICIES[policy], prevent_cse=False)


def scan_layers(layer_fn, carry, stacked_layers: nnx.Module, *xs, remat_policy: str = "none"):
  """Runs `layer_fn(layer, carry, *x_i) -> (carry, y_i)` over layers stacked on axis 0 with lax.scan.

  One layer is traced and compiled once, whatever the depth (28 + 32 layers for the 2B).
  """
  graphdef, state = nnx.split(stacked_layers)

  def body(c, inputs):
    layer_state, *x = inputs
    return layer_fn(nnx.merge(graphdef, layer_state), c, *x)

  return jax.lax.scan(maybe_remat(body, remat_policy), carry, (state, *xs))


def stack_layers(make_layer, num_layers: int, rngs: nnx.Rngs):
  """Builds `num_layers` layers with parameters stacked on a leading 'layers' axis."""

  @nnx.split_rngs(splits=num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(r):
    return make_layer(r)

  return create(rngs)
