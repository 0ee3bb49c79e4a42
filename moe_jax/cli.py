"""Command-line flags shared by `python -m moe_jax.train` and `python -m moe_jax.evaluate`.

    --config configs/X.py [--config.a.b=v ...]   config file + typed overrides of any field
    --workdir DIR                                checkpoints, logs, plots
    --cpu_devices N                              simulate N devices on CPU (0: leave as is)
    --coordinator_address HOST:PORT --num_processes P --process_id I   multi-process runs
                                                 (or MOE_JAX_* env vars, or auto-detection)

`--config.a.b=v` flags are taken out of the command line before absl parses it and applied by
`moe_jax.config` against the full schema (see moe_jax/overrides.py for why not by
ml_collections' config_flags). `init_runtime` must run before anything touches a device: it
sets the CPU device count and starts jax.distributed. `run_reporting_errors` turns every
user-facing failure into one `error:` line and a non-zero exit status.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time

from absl import app, flags

FLAGS = flags.FLAGS
_OVERRIDES: list[str] = []
_ARGV: list[str] = []


def define_flags(*, with_config: bool) -> None:
  if with_config:
    flags.DEFINE_string("config", None, "Path to an ml_collections config file; override any "
                        "of its fields with --config.FIELD=VALUE.")
    flags.mark_flag_as_required("config")
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and plots.")
  flags.mark_flag_as_required("workdir")
  flags.DEFINE_integer("cpu_devices", 0, "Simulate this many devices on the CPU backend.")
  flags.DEFINE_string("coordinator_address", None, "jax.distributed coordinator host:port.")
  flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """(argv without the --config.FIELD flags, those flags as 'FIELD=VALUE')."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      if "=" in arg:
        overrides.append(arg[len("--config."):])
      elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):   # --config.a.b VALUE
        overrides.append(f"{arg[len('--config.'):]}={argv[i + 1]}")
        i += 1
      else:
        overrides.append(arg[len("--config."):])   # reported as malformed by the parser
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _parse(argv: list[str]):
  _ARGV[:] = argv
  rest, overrides = split_overrides(argv)
  _OVERRIDES[:] = overrides
  try:
    return FLAGS(rest)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run(main) -> None:
  """absl's app.run with the --config.FIELD flags taken out first."""
  app.run(main, flags_parser=_parse)


def config_overrides() -> list[str]:
  return list(_OVERRIDES)


def load_config():
  from moe_jax import config as config_lib
  return config_lib.load_file(FLAGS.config)


def init_runtime() -> None:
  import jax
  from absl import logging

  # Orbax logs every save step by step at INFO; keep the terminal to our progress and results.
  logging.set_verbosity(logging.WARNING)
  _quiet_background_threads()

  from moe_jax.parallel import distributed
  if FLAGS.cpu_devices:
    jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


def _quiet_background_threads() -> None:
  """An exception in a background thread (an Orbax writer on a full disk) reaches the main
  thread as the save's error, reported in one line; don't also print the thread's traceback
  (Orbax's commit threads printed 116 lines for one full disk). Likewise the "Event loop is
  closed" errors TensorStore's callbacks raise after a failed restore has closed Orbax's
  event loop (printed through sys.excepthook, one traceback per pending read).
  MOE_JAX_THREAD_TRACEBACKS=1 shows them all."""
  if os.environ.get("MOE_JAX_THREAD_TRACEBACKS"):
    return
  threading.excepthook = lambda args: None
  default = sys.excepthook

  def excepthook(kind, value, tb):
    if not (kind is RuntimeError and str(value) == "Event loop is closed"):
      default(kind, value, tb)
  sys.excepthook = excepthook


def _command_with(extra_flags) -> str:
  """The user's own command with `extra_flags` appended (replacing flags of the same name)."""
  names = {f.split("=", 1)[0] for f in extra_flags}
  argv = [a for a in _ARGV[1:] if a.split("=", 1)[0] not in names]
  module = "moe_jax." + os.path.splitext(os.path.basename(_ARGV[0]))[0]   # train, evaluate
  return shlex.join(["python", "-m", module, *argv, *extra_flags])


def run_reporting_errors(fn, *args, **kwargs):
  """Calls fn; a user-facing failure (bad config or flag, busy or unusable workdir, bad
  checkpoint, diverged training, missing file, OS error, interruption) ends the process with
  its message on one line and a non-zero exit status instead of a traceback."""
  from moe_jax.checkpoint import CheckpointError
  from moe_jax.interrupts import Interrupted, sigint_noted
  from moe_jax.workdir import WorkdirBusy, WorkdirError
  code = 1
  try:
    # A Ctrl-C whose KeyboardInterrupt Python dropped (raised in a gc callback) is raised
    # again at the next safe point, at the latest when fn returns (moe_jax/interrupts.py).
    with sigint_noted():
      return fn(*args, **kwargs)
  except Interrupted as e:
    message, code = str(e), e.exit_code
  except KeyboardInterrupt:
    message, code = "interrupted; rerun the same command to resume", 130
  except CheckpointError as e:
    message = str(e)
    if e.retry_flags:
      message += f": {_command_with(e.retry_flags)}"
  except (ValueError, FloatingPointError, WorkdirBusy, WorkdirError) as e:
    message = str(e)
  except OSError as e:   # FileNotFoundError included: disk full, read-only, missing file
    message = (e.strerror + (f": {e.filename}" if e.filename else "")) if e.strerror else str(e)
  # A failed Orbax restore leaves TensorStore callbacks pending that print an "Event loop is
  # closed" traceback each as they fire, from C++ threads (no Python hook sees them). Keep
  # the terminal to the message: silence file descriptor 2 while they drain, write the
  # message to the real stderr, and exit without running the interpreter's shutdown.
  sys.stdout.flush()
  sys.stderr.flush()
  # The process is ending: a further Ctrl-C / SIGTERM must not cut the message short (its
  # handler would print into the silenced stderr below).
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN)
  real_stderr = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  time.sleep(0.5)
  text = f"error: {message}" if code == 1 else message
  os.write(real_stderr, (text + "\n").encode())
  os._exit(code)
