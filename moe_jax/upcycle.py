r"""Sparse upcycling: a trained dense run becomes the first checkpoint of an MoE run.

    python -m moe_jax.upcycle --from runs/dense --workdir runs/upcycled --config configs/X.py \
        [--config.a.b=v ...] [--expert_noise 0.0] [--drop_ratio 0.0] [--keep_step] \
        [--carry_moments]
    python -m moe_jax.train --config configs/X.py --workdir runs/upcycled [the same --config...]

or from Python: `upcycle(config_dict, workdir, source_workdir, overrides=[...], options=...)`,
and `upcycle_model(dense_model, moe_model, options)` on two built models (a notebook's).

Sparse Upcycling (Komatsuzaki et al. 2022): every expert of each MoE layer of the target
(`moe_every` / `first_dense_layers` as the target config sets them) starts as a copy of that
layer's dense FFN; everything else (embeddings, attention, norms, the layers that stay dense)
is copied; the router is fresh (the target config's init; `router_init='zeros'` makes every
expert equally likely, which with identical copies and renormalised top-k reproduces the dense
model exactly). Options:
  expert_noise s: each copy's weights are multiplied by (1 + s * N(0, 1)), elementwise, so the
    copies differ from the start (relative Gaussian noise).
  drop_ratio r (Drop-Upcycling, Nakamura et al. 2025): in each expert, a random r of its hidden
    units (a different draw per expert; the same units in every projection of that expert) are
    re-initialised from N(mean, std) of the dense weight matrix they come from.
Fine-grained targets (E experts of width F / G from a dense FFN of width F) split the dense
hidden dimension: expert e holds hidden units [g F/G, (g+1) F/G) with g = e mod G, so each of
the E / G groups of G experts spans the whole dense FFN.

The new workdir gets config.json, checkpoint 0 (or the dense run's step with --keep_step)
holding the upcycled model and optimizer state, and the dense run's data position when the data
config is the same. `upcycled_from.json` records the source and the options.

The learning rate: with --keep_step the MoE run continues the dense run's trajectory: the
optimizer's step and its schedule's count are the dense run's step, so step s of the MoE run
gets the learning rate a continued dense run with this config gets at step s (the target
config's schedule, config.optim over config.steps, as the continued dense run's; a note says
when config.optim differs from the dense run's). Without --keep_step the MoE run is a new run
from step 0 and its schedule starts over: warmup from 0 to the peak, then the cosine, like a
run from scratch (the command says so).
Adam's moments: by default they start at zero (Adam's count at 0, so its bias correction is
that of fresh moments, whatever the schedule's count). With --carry_moments (options
`carry_moments`) every expert gets copies of its dense FFN's first and second moments (the same
hidden units its weights come from, zero at the units Drop-Upcycling re-draws, no noise), the
copied parameters their own, the router (and anything else the dense model lacks) zeros, and
Adam's count is the dense run's.

Every check (a source that is not dense, widths that do not split, other non-FFN shapes,
--keep_step with config.steps not past the dense step) runs before anything is written; the
source workdir is only read. Interrupted (kill -9, SIGTERM, a full disk): `seeding.json` stays
in the workdir, `train` there refuses with the upcycle command, and that command, rerun, clears
what the interrupted one wrote and completes (moe_jax.workdir.seeding).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shlex
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moe_jax import config as config_lib, run_setup, workdir as workdir_lib
from moe_jax.checkpoint import Checkpoints
from moe_jax.data.datasets import TOKENIZER_FILES
from moe_jax.parallel.mesh import make_mesh
from moe_jax.validation import check_choice, check_float, check_int

RECORD_FILE = "upcycled_from.json"
ROUTER_INITS = ("fresh", "zeros")
# What must be equal between the dense run's model and the target's for everything outside
# the FFNs to be copied as it is.
SHARED_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "tie_embeddings", "glu",
                 "activation", "param_dtype")


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


def check_compatible(dense_model_cfg, target_cfg) -> None:
  """Errors naming the config field that keeps the dense run from being upcycled into the
  target: a source that is not dense, a target that is, or non-FFN shapes that differ."""
  if dense_model_cfg.moe is not None:
    raise ValueError(f"--from: the source run is not dense (its config.model.num_experts="
                     f"{dense_model_cfg.num_experts}); upcycling starts from a num_experts=0 "
                     "run")
  if target_cfg.moe is None:
    raise ValueError("config.model.num_experts=0: the target of upcycling must be an MoE "
                     "model (set config.model.num_experts)")
  for field in SHARED_FIELDS:
    mine, theirs = getattr(target_cfg, field), getattr(dense_model_cfg, field)
    if str(mine) != str(theirs):
      raise ValueError(f"config.model.{field}={mine} but the dense run's is {theirs}: "
                       "everything outside the FFNs is copied, so it must match")
  dense_width = dense_model_cfg.d_ff or 4 * dense_model_cfg.d_model
  target_width = target_cfg.d_ff or 4 * target_cfg.d_model
  keeps_dense = [i for i in range(target_cfg.num_layers) if not target_cfg.is_moe_layer(i)]
  if keeps_dense and target_width != dense_width:
    raise ValueError(f"config.model.d_ff={target_width} but the dense run's is {dense_width}: "
                     f"layers {keeps_dense} stay dense and are copied")
  moe = target_cfg.moe
  segments = dense_width // moe.expert_d_ff
  if dense_width % moe.expert_d_ff or moe.num_experts % segments:
    raise ValueError(f"config.model.expert_d_ff={moe.expert_d_ff} does not split the dense "
                     f"run's d_ff={dense_width} into whole experts: it must divide "
                     f"{dense_width}, and config.model.num_experts={moe.num_experts} must be "
                     f"a multiple of d_ff / expert_d_ff = {dense_width // moe.expert_d_ff}")


def upcycle(config, workdir, source_workdir, *, overrides=(),
            options: UpcycleOptions = UpcycleOptions(), source_step: int | None = None,
            keep_step: bool = False, say=print, command: str | None = None,
            keep_files: tuple[str, ...] = ()) -> int:
  """Writes the first checkpoint of the MoE run of `config` (+ `overrides`) in `workdir`,
  upcycled from the dense run in `source_workdir`; returns that checkpoint's step.
  `command`: how to rerun this (the CLI's command line), which `train` names if the upcycle
  is cut short; a workdir left by a cut-short upcycle is cleared and upcycled again.
  `keep_files`: names in `workdir` that are the caller's (a sweep's settings and log), left as
  they are."""
  run = config_lib.validate(config, num_devices=jax.device_count(),
                            num_processes=jax.process_count(), overrides=overrides)
  workdir = pathlib.Path(workdir).expanduser().absolute()
  source_workdir = pathlib.Path(source_workdir).expanduser().absolute()
  if workdir == source_workdir:
    raise ValueError("--workdir must differ from --from: the dense run is never modified")
  source = run_setup.open_run(source_workdir)
  if source.task != run.task:
    raise ValueError(f"config.task={run.task!r} but the dense run's is {source.task!r}")
  check_compatible(source.model, run.model)
  if source.data.tokenizer != run.data.tokenizer:
    raise ValueError(f"config.data.tokenizer={run.data.tokenizer!r} but the dense run's is "
                     f"{source.data.tokenizer!r}")
  mesh = make_mesh(**dataclasses.asdict(run.mesh))
  graphdef, dense_state, dense_step = run_setup.restore_for_eval(source, source_workdir, mesh,
                                                                 source_step)
  if keep_step and run.steps <= dense_step:
    raise ValueError(f"config.steps={run.steps} is not past the dense run's step {dense_step}, "
                     "which --keep_step continues from: raise config.steps to the step the MoE "
                     "run should end at")
  dense_model, dense_optimizer = nnx.merge(graphdef, dense_state)
  model, optimizer = run_setup.build(run, mesh)
  upcycle_model(dense_model, model, options)
  upcycle_optimizer(dense_optimizer, optimizer, glu=run.model.glu, options=options,
                    keep_step=keep_step)
  del dense_model, dense_optimizer, dense_state
  step = dense_step if keep_step else 0
  # The data from the dense run's workdir (its tokenizer file, which is copied): a tokenizer
  # or dataset that fails does so before anything is written.
  tok = run_setup.tokenizer(run, source_workdir, may_train=False)
  iterator = run_setup.train_iterator(run, tok)
  same_data = dataclasses.asdict(run.data) == dataclasses.asdict(source.data)
  if same_data:   # the dense run's data position: the MoE run reads on from there
    _restore_data_position(source_workdir, source, dense_step, iterator)
  notes = [] if same_data else [
      "config.data differs from the dense run's, so the data position starts over"]
  optim_changed = _optim_changes(source.optim, run.optim)
  if keep_step and optim_changed:
    notes.append(f"config.optim differs from the dense run's ({optim_changed}): the learning "
                 f"rate continues from step {step} on this config's schedule")
  learning_rate = (f"continues the schedule from step {step}" if keep_step else
                   "restarts at step 0 (warmup, then the cosine over config.steps)")
  optimizer_state = ("Adam moments carried from the dense run" if options.carry_moments
                     else "fresh")
  command = command or f"the same moe_jax.upcycle.upcycle() call into {workdir}"
  outputs = (*TOKENIZER_FILES, workdir_lib.CONFIG_FILE, workdir_lib.HISTORY_FILE, RECORD_FILE)
  with run_setup.hold_workdir(workdir), run_setup.seeding_workdir(
      workdir, verb="upcycle", command=command, outputs=outputs, keep=keep_files):
    for note in notes:
      say(f"note: {note}")
    for name in TOKENIZER_FILES:          # the dense run's tokenizer is the MoE run's
      if (source_workdir / name).exists() and jax.process_index() == 0:
        shutil.copy2(source_workdir / name, workdir / name)
    run_setup.seed_checkpoint(run, workdir, step, model, optimizer, iterator, mesh)
    if jax.process_index() == 0:
      workdir_lib.record_start(workdir, run.record, start_step=step, restored_from=None)
      workdir_lib.write_atomic(workdir / RECORD_FILE, json.dumps({
          "source_workdir": str(source_workdir), "source_step": dense_step, "step": step,
          "options": dataclasses.asdict(options), "data_position_continued": same_data,
          "optimizer_state": optimizer_state, "learning_rate": learning_rate}, indent=2))
  say(f"upcycled step {dense_step} of the dense run in {source_workdir} into checkpoint "
      f"{step} of {workdir}: {run.model.num_experts} experts per MoE layer, router "
      f"{options.router_init}, expert_noise {options.expert_noise:g}, drop_ratio "
      f"{options.drop_ratio:g}; the optimizer state "
      + ("carries the dense run's Adam moments" if options.carry_moments else "starts fresh")
      + f", the learning rate {learning_rate}"
      + ("" if keep_step else " (--keep_step continues the dense run's)")
      + ". Train it with the train command and the same --config flags")
  return step


def _optim_changes(source, target) -> str:
  """The config.optim fields (but the length, config.steps) that differ, as 'name: a -> b'."""
  a, b = dataclasses.asdict(source), dataclasses.asdict(target)
  return ", ".join(f"{k}: {a[k]} -> {b[k]}" for k in a if k != "total_steps" and a[k] != b[k])


def _restore_data_position(source_workdir, source, step, iterator) -> None:
  """Restores the dense checkpoint's data iterator state into `iterator` (params unread)."""
  ckpts = Checkpoints(source_workdir / "checkpoints", keep=source.checkpoint.keep,
                      read_only=True)
  try:
    ckpts.restore_data(step, iterator)
  finally:
    ckpts.close()


def main(argv):
  del argv
  from moe_jax import cli
  cli.init_runtime()
  flags = cli.FLAGS
  cfg = cli.run_reporting_errors(cli.load_config)
  options = cli.run_reporting_errors(
      UpcycleOptions, expert_noise=flags.expert_noise, drop_ratio=flags.drop_ratio,
      router_init=flags.router_init, seed=flags.upcycle_seed, carry_moments=flags.carry_moments)
  command = shlex.join(["python", "-m", "moe_jax.upcycle", *sys.argv[1:]])
  cli.run_reporting_errors(upcycle, cfg, flags.workdir, flags["from"].value,
                           overrides=cli.config_overrides(), options=options,
                           source_step=flags.source_step, keep_step=flags.keep_step,
                           command=command)


def define_flags() -> None:
  from absl import flags
  from moe_jax import cli
  cli.define_flags(with_config=True)
  flags.DEFINE_string("from", None, "Workdir of the trained dense run (num_experts=0).")
  flags.mark_flag_as_required("from")
  flags.DEFINE_integer("source_step", None, "The dense checkpoint to upcycle (default newest).")
  flags.DEFINE_float("expert_noise", 0.0, "Relative Gaussian noise on each expert's copy.")
  flags.DEFINE_float("drop_ratio", 0.0, "Drop-Upcycling: fraction of each expert's hidden "
                     "units re-initialised from the dense weights' statistics.")
  flags.DEFINE_enum("router_init", "fresh", list(ROUTER_INITS), "The router's first weights.")
  flags.DEFINE_integer("upcycle_seed", 0, "Seed of the noise and of the dropped units.")
  flags.DEFINE_bool("keep_step", False, "Continue the dense run's step count and its "
                    "learning-rate trajectory instead of starting at step 0 with a new "
                    "schedule (warmup included).")
  flags.DEFINE_bool("carry_moments", False, "Carry the dense run's Adam moments over: each "
                    "expert gets copies of its dense FFN's, the router's start at zero.")


if __name__ == "__main__":
  from moe_jax import cli
  define_flags()
  cli.run(main)
