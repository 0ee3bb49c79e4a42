"""A small, fast version of configs/lm_tiny.py for training tests, and run helpers."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

from flax import nnx

from moe_jax import config as config_lib, tasks
from moe_jax.run_log import read_metrics
from moe_jax.train_step import apply_step

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "lm_tiny.py"

SMALL_MODEL = dict(d_model=32, num_layers=2, num_heads=2, d_ff=64, expert_d_ff=64,
                   num_experts=4, moe_every=1, first_dense_layers=1, max_len=32)


def small_config(steps=12, **top):
  """lm_tiny with a 2-layer d_model=32 model, 4 experts, seq_len 32, batch 8."""
  cfg = config_lib.load_file(TINY)
  cfg.model.update(SMALL_MODEL)
  cfg.data.update(seq_len=32, batch_size=8, eval_batch_size=16, eval_max_batches=4)
  cfg.optim.update(warmup_steps=2)
  cfg.checkpoint.update(every=4, keep=3)
  cfg.eval.update(sample_tokens=16)
  cfg.update(dict(steps=steps, log_every=1, eval_every=0, **top))
  return cfg


def make_train_step(*, aux_loss_weights: dict[str, float] | None = None, schedule=None,
                    task_loss=None):
  """A jitted step(model, optimizer, batch, rng) -> metrics that updates both in place (the
  library's step, moe_jax.train_step.apply_step, on NNX objects; task_loss: lm's by default)."""
  weights = dict(aux_loss_weights or {})
  task_loss = task_loss or tasks.get("lm").loss

  @nnx.jit
  def step(model, optimizer, batch, rng):
    return apply_step(model, optimizer, batch, rng, aux_loss_weights=weights, schedule=schedule,
                      task_loss=task_loss)

  return step


def losses(workdir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def cli_command(workdir, *overrides, module="moe_jax.train", config=TINY, cpu_devices=8):
  """The CLI command for `small_config`-equivalent runs (as flags). cpu_devices=1 also sets a
  one-device mesh: for tests of the run layer, where the placement does not matter and one
  device compiles several times faster than the data=2 x expert=4 mesh."""
  flags = [f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items()]
  flags += ["--config.data.seq_len=32", "--config.data.batch_size=8",
            "--config.data.eval_batch_size=16", "--config.data.eval_max_batches=4",
            "--config.optim.warmup_steps=2", "--config.checkpoint.every=4",
            "--config.checkpoint.keep=3", "--config.eval.sample_tokens=16",
            "--config.log_every=1", "--config.eval_every=0"]
  cmd = [sys.executable, "-m", module, f"--config={config}", f"--workdir={workdir}"]
  if cpu_devices:
    cmd.append(f"--cpu_devices={cpu_devices}")
  if cpu_devices == 1:
    flags += ["--config.mesh.data=1", "--config.mesh.expert=1"]
  return cmd + flags + list(overrides)


def eval_command(workdir, *flags, cpu_devices=8):
  return [sys.executable, "-m", "moe_jax.evaluate", f"--workdir={workdir}",
          f"--cpu_devices={cpu_devices}", *flags]


def subprocess_env(**extra) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("MOE_JAX_") and k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      filter(None, [str(REPO), env.get("PYTHONPATH")])), **extra)
  return env


def sigint_as_in_a_terminal() -> None:
  """Popen's preexec_fn for a child that a test Ctrl-Cs: SIGINT at its default, as a command
  typed in a terminal has it. A shell without job control starts background jobs with SIGINT
  ignored, and a Python started that way never installs its KeyboardInterrupt handler, so a
  test suite run with `&` (CI in the background, say) would otherwise send signals its
  children ignore by design."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(cmd, **kw) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                        timeout=300, **kw)


def assert_one_line_error(proc: subprocess.CompletedProcess, pattern: str, *, code: int = 1):
  """The process failed with exit status `code` and a single `error:` line matching
  `pattern` (a regex), and printed no traceback."""
  import re
  output = proc.stdout + proc.stderr
  assert proc.returncode == code, output[-3000:]
  assert "Traceback" not in output, output[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert re.search(pattern, errors[0]), errors[0]
  return errors[0]


def snapshot(directory) -> dict[str, bytes]:
  """Every file under `directory` with its bytes, to check that nothing was changed."""
  root = pathlib.Path(directory)
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
          if p.is_file()}
