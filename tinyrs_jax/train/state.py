"""Train state, its shardings, and the loss-agnostic train step (shared by SFT and GRPO).

  state = TrainState(step, params, opt_state, rng)
    params     pure nested dict of arrays (the model's nnx.Param state), fp32 master weights
    opt_state  optax state over the trainable part of params (see optimizer.split_trainable)
    rng        a raw uint32[2] key; step t uses fold_in(rng, t), so a resumed run draws the same numbers

The model's structure (nnx graphdef) is static and lives outside the state: `Model` bundles it with the
abstract parameters and their logical axis names. `make_train_step(model, optimizer, loss_fn, grad_accum)`
returns a pure function `step(state, batch) -> (state, metrics)` for any registered loss; `compile_step`
jits it with the state donated and shardings fixed, ahead of time per batch shape, so the number of
compilations is explicit (one per distinct batch shape) and a recompilation can never happen silently.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from tinyrs_jax import sharding as sharding_lib
# The model's static half lives in tinyrs_jax.runtime (evaluation and the tools build it too); state_lib.Model and
# state_lib.make_model stay importable from here.
from tinyrs_jax.runtime import Model, make_model  # noqa: F401
from tinyrs_jax.train import optimizer as optim_lib
from tinyrs_jax.train.losses import LossOutput
from tinyrs_jax.train.placement import batch_shardings  # noqa: F401  (state_lib.batch_shardings, as before)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


# ------------------------------------------------------------------------------------------- shardings

def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(model: Model, opt: optim_lib.Optimizer, mesh) -> TrainState:
  """NamedShardings of every state leaf: params by their logical names, optimizer moments like their param.

  An optimizer-state leaf whose path ends with a parameter's path and has its shape (Adam's mu and nu, in
  any wrapping transform) is sharded like that parameter; everything else (counts, scalars) is replicated.
  """
  params_sh = model.param_shardings(mesh)
  by_path = {}
  jax.tree_util.tree_map_with_path(
      lambda p, s, a: by_path.__setitem__(_path(p), (s, a.shape)), params_sh, model.abstract_params)
  trainable_abs, _ = optim_lib.split_trainable(model.abstract_params, opt.mask)
  opt_abs = jax.eval_shape(opt.tx.init, trainable_abs)

  def leaf(path, x):
    path = _path(path)
    for i in range(len(path)):
      hit = by_path.get(path[i:])
      if hit is not None and hit[1] == x.shape:
        return hit[0]
    return replicated(mesh)

  opt_sh = jax.tree_util.tree_map_with_path(leaf, opt_abs)
  return TrainState(step=replicated(mesh), params=params_sh, opt_state=opt_sh, rng=replicated(mesh))


def _path(p) -> tuple[str, ...]:
  return optim_lib.path_names(p)


def abstract_state(model: Model, opt: optim_lib.Optimizer, shardings: TrainState | None = None) -> TrainState:
  trainable_abs, _ = optim_lib.split_trainable(model.abstract_params, opt.mask)
  st = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=model.abstract_params,
                  opt_state=jax.eval_shape(opt.tx.init, trainable_abs),
                  rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  if shardings is None:
    return st
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), st, shardings)


def _new_state(params, opt: optim_lib.Optimizer, seed_key) -> TrainState:
  trainable, _ = optim_lib.split_trainable(params, opt.mask)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt.tx.init(trainable), rng=seed_key)


def init_state(model: Model, opt: optim_lib.Optimizer, shardings: TrainState, seed: int) -> TrainState:
  """A fresh state (random params), created directly in its shardings under jit."""
  def init(key):
    pkey, skey = jax.random.split(key)
    return _new_state(model.build(pkey), opt, skey)
  return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed))


def state_from_params(params, opt: optim_lib.Optimizer, shardings: TrainState, seed: int) -> TrainState:
  """A fresh state around given params (from HF or an earlier stage), params placed in their shardings."""
  params = jax.tree.map(lambda x, s: jax.device_put(x, s) if not isinstance(x, jax.Array) or x.sharding != s else x,
                        params, shardings.params)
  key = jax.random.split(jax.random.PRNGKey(seed))[1]
  fn = jax.jit(lambda p, k: _new_state(p, opt, k), in_shardings=(shardings.params, shardings.rng),
               out_shardings=shardings, donate_argnums=0)
  return fn(params, key)


# ------------------------------------------------------------------------------------------------- step

def _tree_add(a, b):
  return jax.tree.map(jnp.add, a, b)


def make_train_step(model: Model, opt: optim_lib.Optimizer, loss_fn: Callable[..., LossOutput], *,
                    grad_accum: int = 1) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """A pure `step(state, batch) -> (state, metrics)` for any `loss_fn(model, batch, rng) -> LossOutput`.

  With grad_accum > 1 every batch array has a leading microbatch axis of that size; gradients, losses,
  weights and metric sums are added over microbatches (lax.scan, one microbatch's activations live at a time)
  and divided by the total weight once. A batch without supervised tokens (weight 0) leaves params and optimizer
  state untouched (metrics "skipped" = 1) and does not count as a step: state.step, which drives the
  learning-rate schedule (the logged lr is the one applied) and the checkpoint numbering, stays where it was,
  like the optimizer's own count, so the logged and the applied schedules never drift apart.
  """
  mask = opt.mask

  def micro(trainable, frozen, mb, rng):
    def f(t):
      out = loss_fn(model.merge(optim_lib.merge_trainable(t, frozen)), mb, rng)
      return out.loss, out
    (_, out), grads = jax.value_and_grad(f, has_aux=True)(trainable)
    return grads, out

  def step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)
    trainable, frozen = optim_lib.split_trainable(state.params, mask)
    if grad_accum == 1:
      grads, out = micro(trainable, frozen, batch, rng)
    else:
      def body(carry, xs):
        i, mb = xs
        g, o = micro(trainable, frozen, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (g, o)), None
      zero_out = jax.eval_shape(lambda: micro(trainable, frozen, jax.tree.map(lambda x: x[0], batch), rng))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_out)
      (grads, out), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), batch))
    weight = jnp.maximum(out.weight, 1e-9)
    grads = jax.tree.map(lambda g: g / weight, grads)
    grad_norm = optax.tree.norm(grads)

    def update(_):
      updates, opt_state = opt.tx.update(grads, state.opt_state, trainable)
      return optax.apply_updates(trainable, updates), opt_state

    # Nothing supervised (weight 0): AdamW would still decay the weights and the moments; keep both as they were.
    skip = out.weight <= 0
    new_trainable, opt_state = jax.lax.cond(skip, lambda _: (trainable, state.opt_state), update, None)
    params = optim_lib.merge_trainable(new_trainable, frozen)
    metrics = {"loss": out.loss / weight, "grad_norm": grad_norm, "weight": out.weight,
               "skipped": skip.astype(jnp.float32), **report_metrics(out.metrics, weight)}
    for g, sched in opt.schedules.items():
      metrics[f"lr/{g}"] = jnp.asarray(sched(state.step), jnp.float32)
    new_state = state.replace(step=state.step + jnp.where(skip, 0, 1).astype(state.step.dtype), params=params,
                              opt_state=opt_state)
    return new_state, metrics

  return step


DEN_SUFFIX = "__den"


def report_metrics(sums: dict, weight) -> dict:
  """Metric sums -> reported values: `x` divided by the sum of `x__den` when the loss gives one (e.g. a token mean
  under a sequence-weighted loss), else by the loss's total weight."""
  out = {}
  for k, v in sums.items():
    if k.endswith(DEN_SUFFIX):
      continue
    den = sums.get(k + DEN_SUFFIX)
    out[k] = v / (weight if den is None else jnp.maximum(den, 1e-9))
  return out


def make_eval_step(model: Model, loss_fn: Callable[..., LossOutput]):
  """`eval_step(params, batch) -> (loss_sum, weight)`: add these over batches, divide at the end."""
  def eval_step(params, batch):
    out = loss_fn(model.merge(params), batch, jax.random.PRNGKey(0))
    return out.loss, out.weight
  return eval_step


# ------------------------------------------------------------------------------------------ compiling

class CompiledStep:
  """A jitted function compiled ahead of time once per distinct batch shape; counts its compilations."""

  def __init__(self, fn, mesh, state_sh, *, donate: bool, grad_accum: int = 1, out_shardings=None,
               name: str = "train_step", log: Callable[[str], None] | None = None):
    self.fn, self.mesh, self.state_sh = fn, mesh, state_sh
    self.donate, self.grad_accum, self.out_shardings, self.name = donate, grad_accum, out_shardings, name
    self.log = log
    self.cache: dict = {}

  @property
  def num_compiles(self) -> int:
    return len(self.cache)

  def _key(self, batch):
    return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))

  def lower(self, state_abstract, batch):
    """The step lowered for `batch`'s shapes (arrays or ShapeDtypeStructs), exactly as `compiled` compiles it:
    tools/aot compiles this for a target's devices."""
    bsh = batch_shardings(self.mesh, batch, self.grad_accum)
    jitted = jax.jit(self.fn, in_shardings=(self.state_sh, bsh), out_shardings=self.out_shardings,
                     donate_argnums=(0,) if self.donate else ())
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh[k]) for k, v in batch.items()}
    with sharding_lib.use_mesh(self.mesh):
      return jitted.lower(state_abstract, abstract_batch)

  def compiled(self, state_abstract, batch):
    key = self._key(batch)
    if key not in self.cache:
      self.cache[key] = self.lower(state_abstract, batch).compile()
      if self.log:
        self.log(f"compiled {self.name} for batch shapes {dict((k, s) for k, s, _ in key)} "
                 f"({self.num_compiles} compilation{'s' if self.num_compiles > 1 else ''} so far)")
    return self.cache[key]

  def __call__(self, state, batch):
    state_abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    return self.compiled(state_abstract, batch)(state, batch)
