"""Command-line flags shared by `python -m moe_jax.train` and `python -m moe_jax.evaluate`.

    --config configs/X.py [--config.a.b=v ...]   ml_collections config file + typed overrides
    --workdir DIR                                checkpoints, logs, plots
    --cpu_devices N                              simulate N devices on CPU (0: leave as is)
    --coordinator_address HOST:PORT --num_processes P --process_id I   multi-process runs
                                                 (or MOE_JAX_* env vars, or auto-detection)

`init_runtime` must run before anything touches a device: it sets the CPU device count and
starts jax.distributed.
"""
from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS


def define_flags(*, with_config: bool) -> None:
  if with_config:
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                    lock_config=True)
    flags.mark_flag_as_required("config")
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and plots.")
  flags.mark_flag_as_required("workdir")
  flags.DEFINE_integer("cpu_devices", 0, "Simulate this many devices on the CPU backend.")
  flags.DEFINE_string("coordinator_address", None, "jax.distributed coordinator host:port.")
  flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


def init_runtime() -> None:
  import jax
  from absl import logging

  # Orbax logs every save step by step at INFO; keep the terminal to our progress and results.
  logging.set_verbosity(logging.WARNING)

  from moe_jax.parallel import distributed
  if FLAGS.cpu_devices:
    jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


def run_reporting_errors(fn, *args, **kwargs):
  """Calls fn; a user-facing error (bad config, bad checkpoint, NaN loss, missing file) ends
  the process with its message on one line and exit status 1 instead of a traceback."""
  import os
  import sys
  import time

  from moe_jax.checkpoint import CheckpointError
  try:
    return fn(*args, **kwargs)
  except (ValueError, CheckpointError, FloatingPointError, FileNotFoundError) as e:
    # A failed Orbax restore leaves tensorstore threads that print "Event loop is closed"
    # while the interpreter shuts down; let them finish, then make the error the last line
    # and exit without running that shutdown again.
    time.sleep(0.5)
    sys.stdout.flush()
    print(f"error: {e}", file=sys.stderr, flush=True)
    os._exit(1)
