"""One training step: the task's loss + weighted aux losses, AdamW, router-state update.

    tx = make_optimizer(OptimConfig(learning_rate=3e-3, warmup_steps=20, total_steps=300))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    step = make_state_train_step(graphdef, task_loss=moe_jax.tasks.get("lm").loss,
                                 aux_loss_weights={"load_balancing": 0.01, "z_loss": 1e-3})
    state, metrics = step(state, batch, rng)

`task_loss(model, batch, *, train, rngs) -> (loss, metrics, routings)` is a task's `loss`
(moe_jax.tasks), passed in: this module sits below the tasks and imports none of them.

Router state (balancing bias, centroids, ...) is not a Param: the MoE modules write the new
state during the `train=True` forward, and NNX carries that write out of the jitted step, so
no train-step code knows which routers are stateful. The loss is the task's loss plus
sum_name weight[name] * (mean over MoE layers of aux loss `name`); an aux loss without a weight
is reported but not trained on.

Every step also reports `finite`: 1.0 iff the loss, the gradient norm and every array of the
updated state are finite, so the loop can refuse to keep (or save) a state that went NaN even
when the step's own loss, computed before the update, still looked fine.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from moe_jax.parallel.mesh import batch_sharding
from moe_jax.routing.base import LAYER_METRICS
from moe_jax.validation import check_float, check_int


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 3e-3
  warmup_steps: int = 100
  total_steps: int = 1000
  end_learning_rate_fraction: float = 0.1   # cosine decays to this fraction of the peak
  weight_decay: float = 0.1
  clip_norm: float = 1.0
  b1: float = 0.9
  b2: float = 0.95

  def validate(self):
    check_float("learning_rate", self.learning_rate, low=0.0, low_inclusive=False, owner="optim")
    check_int("total_steps", self.total_steps, low=1, owner="optim")
    # optax's cosine part needs at least one step after the warmup
    check_int("warmup_steps", self.warmup_steps, low=0, high=max(self.total_steps - 1, 0),
              owner="optim")
    check_float("clip_norm", self.clip_norm, low=0.0, low_inclusive=False, owner="optim")
    check_float("weight_decay", self.weight_decay, low=0.0, owner="optim")


def learning_rate_schedule(config: OptimConfig):
  """Linear warmup to the peak, then cosine decay to end_learning_rate_fraction * peak."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
      decay_steps=config.total_steps, end_value=config.learning_rate *
      config.end_learning_rate_fraction)


def _decay_mask(params):
  """Weight decay on matrices only (not norms' scales)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: OptimConfig) -> optax.GradientTransformation:
  config.validate()
  return optax.chain(
      optax.clip_by_global_norm(config.clip_norm),
      optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2,
                  weight_decay=config.weight_decay, mask=_decay_mask))


def _add_aux_losses(loss, metrics, routings, aux_loss_weights):
  """loss + sum weight * (mean over MoE layers of each aux loss); per-layer routing metrics."""
  moe = [r for r in routings if r is not None]
  if moe:
    for name in moe[0].aux_losses:
      value = jnp.mean(jnp.stack([r.aux_losses[name] for r in moe]))
      metrics[f"aux/{name}"] = value
      loss = loss + aux_loss_weights.get(name, 0.0) * value
    for i, r in enumerate(routings):
      if r is not None:
        metrics.update({f"layer{i}/{k}": r.metrics[k] for k in LAYER_METRICS
                        if k in r.metrics})
  metrics["loss"] = loss
  return loss, metrics


def all_finite(tree) -> jax.Array:
  """True iff every floating array of `tree` is free of NaN and Inf."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def apply_step(model, optimizer, batch, rng, *, aux_loss_weights, task_loss, schedule=None,
               trainable=nnx.Param):
  """One update of `model` and `optimizer` in place (not jitted); returns the step's metrics.
  `trainable`: the nnx filter of the variables that get gradients (the optimizer's `wrt`)."""

  def loss_fn(model):
    loss, metrics, routings = task_loss(model, batch, train=True, rngs=nnx.Rngs(router=rng))
    return _add_aux_losses(loss, metrics, routings, aux_loss_weights)
  (_, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True,
                                           argnums=nnx.DiffState(0, trainable))(model)
  metrics["grad_norm"] = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
  if schedule is not None:
    metrics["lr"] = schedule(optimizer.step[...])
  optimizer.update(model, grads)
  finite = (jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            & all_finite(nnx.state((model, optimizer))))
  metrics["finite"] = finite.astype(jnp.float32)
  return metrics


def make_state_train_step(graphdef, *, task_loss, aux_loss_weights: dict[str, float] | None = None,
                          schedule=None, mesh=None, state_sharding=None, trainable=nnx.Param):
  """`apply_step` as a pure jitted function of the (model, optimizer) nnx.State:
  step(state, batch, rng) -> (new_state, metrics). The training loop uses this form: the state
  is a plain pytree (what the checkpoint saves), its buffers are donated, and no NNX graph is
  walked on the host per step. With `mesh` and `state_sharding` (the state's shardings) the
  step's input and output shardings are fixed: the state keeps its placement from step to step,
  the batch is split over the batch axes, the metrics are replicated."""
  weights = dict(aux_loss_weights or {})

  def step(state, batch, rng):
    model, optimizer = nnx.merge(graphdef, state)
    metrics = apply_step(model, optimizer, batch, rng, aux_loss_weights=weights,
                         schedule=schedule, task_loss=task_loss, trainable=trainable)
    return nnx.state((model, optimizer)), metrics

  if mesh is None or state_sharding is None:
    return jax.jit(step, donate_argnums=0)
  replicated = NamedSharding(mesh, P())
  return jax.jit(step, donate_argnums=0,
                 in_shardings=(state_sharding, batch_sharding(mesh), replicated),
                 out_shardings=(state_sharding, replicated))
