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
from flax import nnx

from moe_jax import config as config_lib, run_setup, run_workdir, workdir as workdir_lib
from moe_jax.checkpoint import Checkpoints
from moe_jax.data.datasets import TOKENIZER_FILES
from moe_jax.parallel.mesh import make_mesh
# The transforms, re-exported: `from moe_jax.upcycle import upcycle_model` keeps working.
from moe_jax.upcycle_params import (ROUTER_INITS, UpcycleOptions, expert_copies,  # noqa: F401
                                    upcycle_model, upcycle_optimizer, upcycle_params)

RECORD_FILE = "upcycled_from.json"
# What must be equal between the dense run's model and the target's for everything outside
# the FFNs to be copied as it is.
SHARED_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "tie_embeddings", "glu",
                 "activation", "param_dtype")


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
  with run_workdir.hold_workdir(workdir), run_workdir.seeding_workdir(
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
