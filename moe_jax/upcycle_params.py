"""The parameter transforms of sparse upcycling (moe_jax.upcycle has the method, the CLI and
the workdir): each MoE layer's experts from its dense FFN (`expert_copies`: copies, fine-grained
splits, relative noise, Drop-Upcycling's re-drawn units), a whole model's params
(`upcycle_params`, `upcycle_model`) and its optimizer state (`upcycle_optimizer`: the
schedule's count, Adam's moments)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moe_jax.validation import check_choice, check_float, check_int

ROUTER_INITS = ("fresh", "zeros")


@dataclasses.dataclass(frozen=True)
class UpcycleOptions:
  expert_noise: float = 0.0           # relative Gaussian noise on each expert's copy
  drop_ratio: float = 0.0             # Drop-Upcycling: the fraction of hidden units re-drawn
  router_init: str = "fresh"          # 'fresh': the target's router init; 'zeros': uniform
  seed: int = 0                       # of the noise and of which units are dropped
  carry_moments: bool = False         # Adam's moments from the dense run (experts: copies)

  def __post_init__(self):
    if not isinstance(self.carry_moments, bool):
      raise ValueError(f"upcycle option 'carry_moments'={self.carry_moments!r}: must be True "
                       "or False")
    check_float("expert_noise", self.expert_noise, low=0.0, owner="upcycle")
    check_float("drop_ratio", self.drop_ratio, low=0.0, high=1.0, owner="upcycle")
    check_choice("router_init", self.router_init, ROUTER_INITS, owner="upcycle")
    check_int("seed", self.seed, low=0, owner="upcycle")


def expert_copies(dense_ffn: dict, *, num_experts: int, expert_d_ff: int, glu: bool,
                  options: UpcycleOptions = UpcycleOptions(), rng=None,
                  moments: bool = False) -> dict:
  """The experts' stacked params from one dense FFN's: dense {'w_in': {'kernel': [D,F]},
  'w_out': {'kernel': [F,D]}} (+ 'w_up' with glu) -> {'w_in': [E,D,Fe], 'w_out': [E,Fe,D]}
  or, with glu, {'w_gate', 'w_up', 'w_down'} (the dense gate w_in is the experts' w_gate).
  `moments`: the trees are Adam moments of those params: copied the same way, without noise,
  zero at the re-drawn (drop_ratio) units, the same units as the weights' for the same rng."""
  width = dense_ffn["w_in"]["kernel"].shape[1]
  segments = width // expert_d_ff      # fine-grained: experts per copy of the dense FFN
  if width % expert_d_ff or num_experts % segments:
    raise ValueError(f"config.model.expert_d_ff={expert_d_ff} does not split the dense FFN's "
                     f"hidden size {width} into whole experts: it must divide {width}, and "
                     f"num_experts={num_experts} must be a multiple of {width} / expert_d_ff")
  names_in = {"w_gate": "w_in", "w_up": "w_up"} if glu else {"w_in": "w_in"}
  out_name = "w_down" if glu else "w_out"
  dense_in = {name: dense_ffn[src]["kernel"] for name, src in names_in.items()}
  dense_out = dense_ffn["w_out"]["kernel"]
  # hidden_EF[e]: the dense hidden units expert e holds
  hidden_EF = ((np.arange(num_experts) % segments)[:, None] * expert_d_ff
               + np.arange(expert_d_ff)[None, :])
  params = {name: jnp.moveaxis(w[:, hidden_EF], 1, 0) for name, w in dense_in.items()}  # [E,D,Fe]
  params[out_name] = dense_out[hidden_EF]                                             # [E,Fe,D]
  dense_of = {**dense_in, out_name: dense_out}
  if options.drop_ratio == 0 and (options.expert_noise == 0 or moments):
    return params
  rng = jax.random.PRNGKey(options.seed) if rng is None else rng
  drop_rng, noise_rng = jax.random.split(rng)
  dropped_EF = _dropped_units(drop_rng, num_experts, expert_d_ff, options.drop_ratio)
  out = {}
  for i, (name, w) in enumerate(sorted(params.items())):
    hidden_axis = 1 if name == out_name else 2
    dropped = jnp.expand_dims(dropped_EF, 3 - hidden_axis)     # broadcast over D
    init_rng, eps_rng = jax.random.split(jax.random.fold_in(noise_rng, i))
    if options.expert_noise and not moments:
      w = w * (1 + options.expert_noise * jax.random.normal(eps_rng, w.shape, w.dtype))
    dense = dense_of[name]
    fresh = (jnp.zeros_like(w) if moments else
             dense.mean() + dense.std() * jax.random.normal(init_rng, w.shape, w.dtype))
    out[name] = jnp.where(dropped, fresh, w).astype(w.dtype)
  return out


def _dropped_units(rng, num_experts: int, width: int, ratio: float):
  """[E, Fe] bool: exactly round(ratio * Fe) hidden units per expert, a different draw each."""
  count = int(round(ratio * width))
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(rng, (num_experts, width)), axis=1),
                      axis=1)
  return ranks < count


def upcycle_params(dense: dict, target: dict, *, glu: bool,
                   options: UpcycleOptions = UpcycleOptions(), path: str = "",
                   moments: bool = False) -> dict:
  """The target model's params (a pure dict, as nnx.State.to_pure_dict gives) with every leaf
  copied from the dense model's, each MoE layer's experts made by `expert_copies` and its
  router (and shared expert, if any) left as the target has them, or zeroed (`router_init`).
  `moments`: the trees are Adam moments of the params (see `expert_copies`)."""
  if isinstance(target, dict) and "expert_params" in target:   # an MoE layer's FFN
    if not isinstance(dense, dict) or "expert_params" in dense or "w_in" not in dense:
      raise ValueError(f"upcycle: {path} of the source model is not a dense FFN")
    num_experts, _, width = target["expert_params"][
        "w_gate" if glu else "w_in"].shape
    layer = int(path.split("/")[-2]) if path.count("/") >= 2 else 0
    rng = jax.random.fold_in(jax.random.PRNGKey(options.seed), layer)
    out = dict(target)
    # The dense FFN has no biases: expert biases (expert_bias=True) keep the target's zeros.
    out["expert_params"] = {**target["expert_params"],
                            **expert_copies(dense, num_experts=num_experts, expert_d_ff=width,
                                            glu=glu, options=options, rng=rng,
                                            moments=moments)}
    if options.router_init == "zeros":
      out["router_params"] = jax.tree.map(jnp.zeros_like, target["router_params"])
    return out
  if not isinstance(target, dict):
    if not hasattr(dense, "shape") or dense.shape != target.shape:
      raise ValueError(f"upcycle: parameter {path} has shape {getattr(dense, 'shape', None)} "
                       f"in the dense model but {target.shape} in the target")
    return dense
  out = {}
  for key, value in target.items():
    if not isinstance(dense, dict) or key not in dense:
      raise ValueError(f"upcycle: the dense model has no parameter {path}/{key}")
    out[key] = upcycle_params(dense[key], value, glu=glu, options=options,
                              path=f"{path}/{key}", moments=moments)
  return out


def upcycle_optimizer(dense_optimizer, optimizer, *, glu: bool,
                      options: UpcycleOptions = UpcycleOptions(), keep_step: bool) -> None:
  """The MoE run's optimizer state from the dense run's, in place. `keep_step`: its step and
  its learning-rate schedule's count are the dense run's (the learning rate continues where
  the dense run's is), else 0 (the schedule starts over). `options.carry_moments`: Adam's
  moments and count are the dense run's (the experts' moments copies of their dense FFN's, as
  `upcycle_params(moments=True)` makes them; the router's zero), else they start at zero."""
  dense = nnx.to_pure_dict(nnx.state(dense_optimizer))
  state = nnx.state(optimizer)
  target = nnx.to_pure_dict(state)
  new = _optimizer_state(dense, target, glu=glu, options=options, keep_step=keep_step)
  nnx.replace_by_pure_dict(state, _placed_like(new, target))
  nnx.update(optimizer, state)


def _optimizer_state(dense, target, *, glu, options, keep_step, path=""):
  if isinstance(target, dict) and {"count", "mu", "nu"} <= set(target):   # Adam's state
    if not options.carry_moments:
      return target
    if not isinstance(dense, dict) or not {"count", "mu", "nu"} <= set(dense):
      raise ValueError(f"upcycle: the dense run's optimizer state has no Adam moments at {path}")
    return {**target, "count": dense["count"],
            **{k: upcycle_params(dense[k], target[k], glu=glu, options=options, moments=True)
               for k in ("mu", "nu")}}
  if isinstance(target, dict):
    if not isinstance(dense, dict) or set(dense) != set(target):
      raise ValueError(f"upcycle: the dense run's optimizer state differs from the target's "
                       f"at {path or '/'}: use the same optimizer (config.optim)")
    return {k: _optimizer_state(dense[k], v, glu=glu, options=options, keep_step=keep_step,
                                path=f"{path}/{k}") for k, v in target.items()}
  # A counter outside Adam's state: the optimizer's step, the learning-rate schedule's count.
  is_counter = (np.ndim(target) == 0 and jnp.issubdtype(jnp.result_type(target), jnp.integer))
  return dense if keep_step and is_counter else target


def _placed_like(new, target):
  """`new`'s leaves with the dtype and sharding of `target`'s."""
  return jax.tree.map(
      lambda v, t: jax.device_put(jnp.asarray(v, t.dtype), t.sharding)
      if hasattr(t, "sharding") else jnp.asarray(v, t.dtype), new, target)


def upcycle_model(dense_model, moe_model, options: UpcycleOptions = UpcycleOptions()) -> None:
  """Writes the upcycled params of `dense_model` into `moe_model` (two built nnx models of
  the same task), in place; the MoE model's arrays keep their shardings."""
  glu = moe_model.transformer.config.glu
  dense = nnx.to_pure_dict(nnx.state(dense_model, nnx.Param))
  state = nnx.state(moe_model, nnx.Param)
  target = nnx.to_pure_dict(state)
  new = upcycle_params(dense, target, glu=glu, options=options)
  nnx.replace_by_pure_dict(state, _placed_like(new, target))
  nnx.update(moe_model, state)
